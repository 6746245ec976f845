"""Evaluators, one module per protocol, all with one interface (`base.Evaluator`): English STS and STS-B dev
(`sts`), STS 2017 and STS-format folders (`sts_folders`), SentEval transfer (`transfer`). `build` makes the
evaluators of a list of task names, `evaluate` runs them on an encoder and returns one record with the protocol.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sgcl_jax import scoring, tasks
from sgcl_jax.encoder import SentenceEncoder
from sgcl_jax.evaluators.base import Evaluator
from sgcl_jax.evaluators.sts import Sts, StsbDev
from sgcl_jax.evaluators.sts_folders import StsFolders
from sgcl_jax.evaluators.transfer import Transfer

# The kind of a task (tasks.kind) -> the evaluator that scores it.
BY_KIND: dict[str, type[Evaluator]] = {"sts": Sts, "sts17": StsFolders, "folder": StsFolders, "transfer": Transfer}

__all__ = ["BY_KIND", "Evaluator", "Sts", "StsFolders", "StsbDev", "Transfer", "build", "encoder_protocol",
           "evaluate", "from_config"]


def build(names: Sequence[str], settings: scoring.Settings | None = None) -> list[Evaluator]:
    """The evaluators of these task names (aliases expanded), one per protocol, in the order first named."""
    settings = settings or scoring.Settings()
    grouped: dict[type[Evaluator], list[str]] = {}
    for task in tasks.expand(names):
        grouped.setdefault(BY_KIND[tasks.kind(task)], []).append(task)
    return [cls(group, settings) for cls, group in grouped.items()]


def from_config(cfg: Any, cache_dir: Any = None) -> list[Evaluator]:
    """A run config's final evaluators (`eval.final_tasks` under its `eval` settings)."""
    return build(cfg.eval.final_tasks, scoring.Settings.from_config(cfg, cache_dir))


def encoder_protocol(encoder: SentenceEncoder) -> dict[str, Any]:
    """The encoder's side of the protocol: model, pooling, layer, length, dtype, text handling."""
    return {"model": encoder.source, "pooling": encoder.pooling, "layer": encoder.layer,
            "max_length": encoder.max_length, "dtype": encoder.dtype, "text": scoring.TEXT}


def evaluate(encoder: SentenceEncoder, names: Sequence[str] | Sequence[Evaluator] = tasks.STS_TASKS,
             settings: scoring.Settings | None = None) -> dict[str, Any]:
    """Runs the evaluators (given, or built from task names) on the encoder: {"protocol", "tasks": {name: {"score",
    "metric", "n", ...}}, "average", "averages", "missing", "seconds"}. "average" is the English STS average when
    STS tasks were asked for, else the first other kind's; each average names the tasks it covers and whether that
    is all that was asked for."""
    t0 = time.perf_counter()
    evaluators = [e for e in names if isinstance(e, Evaluator)] or build(names, settings)  # type: ignore[arg-type]
    requested = [t for e in evaluators for t in e.names]
    results: dict[str, dict[str, Any]] = {}
    missing: dict[str, str] = {}
    protocol = encoder_protocol(encoder)
    for evaluator in evaluators:
        scored, gone = evaluator.run(encoder)
        results.update(scored)
        missing.update(gone)
        protocol.update(evaluator.protocol())
    results = {t: results[t] for t in requested if t in results}
    avgs = scoring.averages(results, requested)
    return {"protocol": protocol, "tasks": results, "average": next(iter(avgs.values()), None), "averages": avgs,
            "missing": missing, "seconds": round(time.perf_counter() - t0, 2)}
