"""STS 2017's multilingual tracks (Pearson x100, as the paper reports them) and any folder of STS-format files
(Spearman x100, one correlation over all its scored pairs): read and scored as English STS is, without its
aggregation and fixed splits."""

from __future__ import annotations

from typing import Any

from sgcl_jax.evaluators.sts import Sts


class StsFolders(Sts):
    """STS17 tracks and STS-format folders."""

    def protocol(self) -> dict[str, Any]:
        """Similarity, metric and scale."""
        return self.similarity()
