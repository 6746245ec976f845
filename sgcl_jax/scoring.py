"""Scoring primitives under an explicit protocol: the settings, cosine, the STS correlations and their aggregation,
reading and scoring STS tasks (every distinct sentence encoded once), the averages and the results table. The
evaluators (`sgcl_jax.evaluators`) are built on these.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import urllib.error
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from sgcl_jax import sts, tasks
from sgcl_jax.encoder import SentenceEncoder

log = logging.getLogger(__name__)
METRICS = ("auto", "spearman", "pearson")
AGGREGATIONS = ("all", "mean", "wmean")
TEXT = "as released (no lowercasing or pre-tokenisation; the model's own tokenizer only)"


@dataclasses.dataclass(frozen=True)
class Settings:
    """How tasks are scored: STS metric and aggregation, data folders, and the transfer classifier."""

    metric: str = "auto"  # auto: Spearman, and Pearson for STS 2017 (as the paper reports it)
    aggregation: str = "all"
    batch_size: int = 64
    data_dir: str | None = None
    download: bool = False
    senteval_dir: str | None = None
    classifier: str = "logreg"
    kfold: int = 10
    classifier_seeds: tuple[int, ...] = (1111,)
    cache_dir: str | None = None  # where transfer features are cached (a run's folder)

    @classmethod
    def from_config(cls, cfg: Any, cache_dir: str | os.PathLike | None = None) -> Settings:
        """The settings of a run config's `eval` and `data` sections."""
        e = cfg.eval
        return cls(batch_size=e.batch_size, data_dir=cfg.data.data_dir or None, download=e.download,
                   senteval_dir=e.senteval_dir or None, classifier=e.classifier, kfold=e.kfold,
                   classifier_seeds=tuple(e.classifier_seeds), cache_dir=None if cache_dir is None else str(cache_dir))

    def sts_metric(self, task: str) -> str:
        """The correlation reported for an STS task."""
        if self.metric != "auto":
            return self.metric
        return "pearson" if tasks.kind(task) == "sts17" else "spearman"


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=-1)


def correlation(pred: np.ndarray, gold: np.ndarray, metric: str = "spearman") -> float:
    """Spearman or Pearson correlation x100; NaN when either side is constant (no correlation is defined)."""
    if np.ptp(pred) == 0 or np.ptp(gold) == 0:
        return math.nan
    if metric == "spearman":
        return 100.0 * float(stats.spearmanr(pred, gold).statistic)
    if metric == "pearson":
        return 100.0 * float(stats.pearsonr(pred, gold).statistic)
    raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")


def aggregate(preds: Sequence[np.ndarray], golds: Sequence[np.ndarray], metric: str, aggregation: str) -> float:
    """One task score from its subsets: `all` (one correlation over the concatenation), `mean` or `wmean`."""
    if aggregation == "all":
        return correlation(np.concatenate(preds), np.concatenate(golds), metric)
    per = np.array([correlation(p, g, metric) for p, g in zip(preds, golds, strict=True)])
    if aggregation == "mean":
        return float(per.mean())
    if aggregation == "wmean":
        return float(np.average(per, weights=[len(g) for g in golds]))
    raise ValueError(f"unknown aggregation {aggregation!r}; choose from {AGGREGATIONS}")


def load_sts_tasks(names: Sequence[str], data_dir: str | os.PathLike | None, download: bool = False
                   ) -> tuple[dict[str, list[sts.Subset]], dict[str, str]]:
    """Reads each STS task; a missing one is reported (or downloaded when asked), malformed files raise."""
    loaded, missing = {}, {}
    for task in names:
        try:
            folder = tasks.data_folder("sts", data_dir)
            if download and task in sts.FOLDERS and not (folder / sts.FOLDERS[task]).exists():
                sts.download(task, data_dir)
            loaded[task] = sts.read_task(task, data_dir)
        except (sts.MissingData, urllib.error.URLError, TimeoutError, zipfile.BadZipFile) as e:
            missing[task] = str(e)
    return loaded, missing


def score_sts(encoder: SentenceEncoder, loaded: dict[str, list[sts.Subset]], settings: Settings | None = None,
              batch_size: int | None = None, progress: bool | None = None, finite: bool = True
              ) -> dict[str, dict[str, Any]]:
    """Encodes every distinct sentence once, then scores each task: {name: {"score", "metric", "n", "subsets"}}.

    A score that is not finite is refused (finite=True) or returned as it is (dev selection records it).
    """
    settings = settings or Settings()
    unique = sts.distinct_sentences([sub for subs in loaded.values() for sub in subs])
    if not unique:
        return {}
    emb = encoder.encode(unique, batch_size=batch_size or settings.batch_size, show_progress_bar=progress)
    index = {s: i for i, s in enumerate(unique)}
    results = {}
    for task, subs in loaded.items():
        metric = settings.sts_metric(task)
        preds = [cosine(emb[[index[s] for s in sub.sent1]], emb[[index[s] for s in sub.sent2]]) for sub in subs]
        golds = [sub.gold for sub in subs]
        score = aggregate(preds, golds, metric, settings.aggregation if len(subs) > 1 else "all")
        if finite and not np.isfinite(score):
            raise ValueError(f"{task}: the {metric} correlation is {score}: the embeddings are constant or not "
                             "finite, so no score is defined (a diverged or broken model?)")
        results[task] = {
            "score": score, "metric": metric, "n": int(sum(len(g) for g in golds)),
            "subsets": {sub.name: {"score": correlation(p, sub.gold, metric), "n": len(sub)}
                        for sub, p in zip(subs, preds, strict=True)},
        }
    return results


def averages(results: dict[str, dict[str, Any]], requested: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One average per kind of task (sts, sts17, transfer, folder), each naming the tasks it covers."""
    out = {}
    for group in ("sts", "transfer", "sts17", "folder"):
        wanted = [t for t in requested if tasks.kind(t) == group]
        got = [t for t in wanted if t in results]
        if got:
            out[group] = {"score": float(np.mean([results[t]["score"] for t in got])), "tasks": got,
                          "complete": len(got) == len(wanted), "of": len(wanted)}
    return out


def _cell(score: float, std: float | None) -> str:
    return f"{score:.2f}" if std is None else f"{score:.2f} +- {std:.2f}"


def format_average(avg: dict[str, Any] | None, label: str = "average") -> str:
    """'average 78.93' or 'average of 5 of 7 78.93 (STS12, ...)' when tasks are missing."""
    if not avg:
        return f"{label}: none (no task scored)"
    name = label if avg.get("complete", True) else f"{label} of {len(avg['tasks'])} of {avg['of']}"
    return f"{name} {_cell(avg['score'], avg.get('std'))} ({', '.join(avg['tasks'])})"


def format_table(result: dict[str, Any], title: str = "") -> str:
    """A plain-text table: one row per task, the averages, the missing tasks, then the protocol."""
    lines = [title] if title else []
    lines.append(f"{'task':<16} {'score':>15} {'metric':<9} {'n':>6}")
    for task, r in result["tasks"].items():
        extra = f"  F1 {r['f1']:.2f}" if "f1" in r else ""
        lines.append(f"{Path(task).name:<16} {_cell(r['score'], r.get('std')):>15} {r.get('metric', ''):<9} "
                     f"{r['n']:>6}{extra}")
    groups = result.get("averages") or ({"sts": result["average"]} if result.get("average") else {})
    for group, avg in groups.items():
        lines.append(format_average(avg, f"average ({group})"))
    for task, why in result.get("missing", {}).items():
        lines.append(f"{task:<16} {'missing':>15}  ({why})")
    lines.append("protocol: " + ", ".join(f"{k}={v}" for k, v in result["protocol"].items()))
    return "\n".join(lines)
