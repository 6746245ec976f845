"""English STS (STS12-16, STS-B test, SICK-R test): cosine similarity, Spearman x100, STS12-16's subsets
aggregated as configured ("all" by default, as SentEval and the paper); and STS-B dev, the model selection."""

from __future__ import annotations

import logging
from typing import Any

from sgcl_jax import scoring, tasks
from sgcl_jax import sts as readers
from sgcl_jax.encoder import SentenceEncoder
from sgcl_jax.evaluators.base import Evaluator, Scores

log = logging.getLogger(__name__)


class Sts(Evaluator):
    """The paper's seven English STS tasks (any subset of them)."""

    def run(self, encoder: SentenceEncoder) -> tuple[Scores, dict[str, str]]:
        """Every distinct sentence encoded once, then each task scored."""
        loaded, missing = scoring.load_sts_tasks(self.names, self.settings.data_dir, self.settings.download)
        return scoring.score_sts(encoder, loaded, self.settings), missing

    def similarity(self) -> dict[str, Any]:
        """Similarity, metric and scale: the protocol every STS-format task shares."""
        metric = self.settings.metric
        return {"similarity": "cosine", "sts_metric": metric if metric != "auto" else
                "spearman (pearson for STS17, as the paper)", "scale": "x100"}

    def protocol(self) -> dict[str, Any]:
        """Similarity, metric, scale, aggregation and splits."""
        return {**self.similarity(), "aggregation_sts12_16": self.settings.aggregation,
                "stsb_split": "test (1379 pairs)", "sickr_split": "test (4927 pairs)"}


class StsbDev(Evaluator):
    """STS-B dev, Spearman x100: the score that selects the best checkpoint and stops training early. A score
    that is not finite is returned as it is (the selection records it) rather than refused."""

    TASK = "STSB-dev"

    def __init__(self, dev: readers.Subset, settings: scoring.Settings):
        super().__init__((self.TASK,), settings)
        self.dev = dev

    @classmethod
    def from_config(cls, cfg: Any) -> StsbDev | None:
        """A run config's dev evaluator, or None (with a warning) when the data folder has no STS-B dev."""
        try:
            folder = tasks.data_folder("sts", cfg.data.data_dir or None) / readers.FOLDERS["STSB"]
            dev = readers.read_stsb(folder, "dev")
        except readers.MissingData as e:
            log.warning("no STS-B dev set (%s): training runs without model selection or early stopping", e)
            return None
        return cls(dev, scoring.Settings(metric="spearman", batch_size=cfg.eval.batch_size))

    def run(self, encoder: SentenceEncoder) -> tuple[Scores, dict[str, str]]:
        """{"STSB-dev": {...}} and nothing missing."""
        scores = scoring.score_sts(encoder, {self.TASK: [self.dev]}, self.settings, progress=False, finite=False)
        return scores, {}

    def score(self, encoder: SentenceEncoder) -> float:
        """The dev score alone."""
        return self.run(encoder)[0][self.TASK]["score"]

    def protocol(self) -> dict[str, Any]:
        """Split and metric."""
        return {"dev": f"STS-B dev ({len(self.dev)} pairs), cosine, spearman x100"}
