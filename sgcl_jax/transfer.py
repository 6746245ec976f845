"""SentEval's transfer tasks (placeholder while being written)."""

from __future__ import annotations

from typing import Any

from sgcl_jax.tasks import TRANSFER_TASKS

TASKS = TRANSFER_TASKS


def protocol(classifier: str, kfold: int, seeds: tuple[int, ...]) -> dict[str, Any]:
    """The transfer protocol."""
    return {"classifier": classifier, "kfold": kfold, "classifier_seeds": list(seeds)}


def evaluate_tasks(encoder: Any, names: Any, data_dir: Any, classifier: str, kfold: int, seeds: Any,
                   batch_size: int, cache_dir: Any) -> tuple[dict, dict]:
    """Not yet."""
    raise NotImplementedError
