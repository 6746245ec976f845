"""The one interface of every evaluator: built from the task names and the scoring settings (or a run config),
run on an encoder, returning its task scores, the tasks it could not score, and its protocol."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from sgcl_jax.encoder import SentenceEncoder
from sgcl_jax.scoring import Settings

Scores = dict[str, dict[str, Any]]  # task -> {"score", "metric", "n", ...}


class Evaluator(abc.ABC):
    """Scores an encoder on its tasks under one protocol."""

    def __init__(self, names: Sequence[str], settings: Settings):
        self.names, self.settings = tuple(names), settings

    @abc.abstractmethod
    def run(self, encoder: SentenceEncoder) -> tuple[Scores, dict[str, str]]:
        """(scores by task, {missing task: why})."""

    @abc.abstractmethod
    def protocol(self) -> dict[str, Any]:
        """What a reader needs to compare these scores with another's: metric, splits, aggregation, classifier."""
