"""STS 2017's multilingual tracks (Pearson x100, as the paper reports them) and any folder of STS-format files
(Spearman x100, one correlation over all its scored pairs)."""

from __future__ import annotations

from typing import Any

from sgcl_jax import scoring
from sgcl_jax.encoder import SentenceEncoder
from sgcl_jax.evaluators.base import Evaluator, Scores


class StsFolders(Evaluator):
    """STS17 tracks and STS-format folders."""

    def run(self, encoder: SentenceEncoder) -> tuple[Scores, dict[str, str]]:
        """Every distinct sentence encoded once, then each track or folder scored."""
        loaded, missing = scoring.load_sts_tasks(self.names, self.settings.data_dir, self.settings.download)
        return scoring.score_sts(encoder, loaded, self.settings), missing

    def protocol(self) -> dict[str, Any]:
        """Similarity, metric and scale."""
        metric = self.settings.metric
        return {"similarity": "cosine", "sts_metric": metric if metric != "auto" else
                "spearman (pearson for STS17, as the paper)", "scale": "x100"}
