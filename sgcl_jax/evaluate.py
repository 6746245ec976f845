"""STS evaluation: scoring with an explicit protocol, the results table/JSON, the CLI and the layer x pooling grid.

    python -m sgcl_jax.evaluate --model minilm --tasks STS12,STS13,STS14,STS15,STS16,STSB,SICKR --pooling cls
    python -m sgcl_jax.evaluate --model minilm --layers        # every layer x {cls, mean, max} on STS-B test
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from sgcl_jax import sts
from sgcl_jax.encoder import Encoder, all_layers_fn, load_encoder, run_sorted
from sgcl_jax.files import write_json
from sgcl_jax.pooling import POOLINGS

METRICS = ("spearman", "pearson")
AGGREGATIONS = ("all", "mean", "wmean")
TEXT = "as released (no lowercasing or pre-tokenisation; the model's own tokenizer only)"


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=-1)


def correlation(pred: np.ndarray, gold: np.ndarray, metric: str = "spearman") -> float:
    """Spearman or Pearson correlation x100."""
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


def protocol(encoder: Encoder, metric: str, aggregation: str) -> dict[str, Any]:
    """The evaluation protocol, printed and saved next to every score."""
    return {"similarity": "cosine", "metric": metric, "scale": "x100",
            "aggregation_sts12_16": aggregation, "pooling": encoder.pooling, "layer": encoder.layer,
            "max_length": encoder.max_length, "text": TEXT, "sickr_split": "test (4927 pairs)",
            "stsb_split": "test (1379 pairs)", "dtype": encoder.dtype, "model": encoder.source}


def load_tasks(tasks: Sequence[str], data_dir: str | os.PathLike | None,
               download: bool = False) -> tuple[dict[str, list[sts.Subset]], dict[str, str]]:
    """Reads each task; a missing one is reported (or downloaded when asked), malformed files raise."""
    loaded, missing = {}, {}
    for task in tasks:
        try:
            if download and not (sts.default_data_dir(data_dir) / sts.FOLDERS[task]).exists():
                sts.download(task, data_dir)
            loaded[task] = sts.read_task(task, data_dir)
        except (sts.MissingData, urllib.error.URLError, TimeoutError, zipfile.BadZipFile) as e:
            missing[task] = str(e)
    return loaded, missing


def score_tasks(encoder: Encoder, loaded: dict[str, list[sts.Subset]], metric: str = "spearman",
                aggregation: str = "all", batch_size: int = 64, progress: bool | None = None
                ) -> dict[str, dict[str, Any]]:
    """Encodes every distinct sentence once, then scores each task: {name: {"score", "n", "subsets"}}."""
    unique = sts.distinct_sentences([sub for subs in loaded.values() for sub in subs])
    if not unique:
        return {}
    emb = encoder.encode(unique, batch_size=batch_size, progress=progress)
    index = {s: i for i, s in enumerate(unique)}
    results = {}
    for task, subs in loaded.items():
        preds = [cosine(emb[[index[s] for s in sub.sent1]], emb[[index[s] for s in sub.sent2]]) for sub in subs]
        golds = [sub.gold for sub in subs]
        results[task] = {
            "score": aggregate(preds, golds, metric, aggregation if len(subs) > 1 else "all"),
            "n": int(sum(len(g) for g in golds)),
            "subsets": {sub.name: {"score": correlation(p, sub.gold, metric), "n": len(sub)}
                        for sub, p in zip(subs, preds, strict=True)},
        }
    return results


def evaluate(encoder: Encoder, tasks: Sequence[str] = sts.TASKS, data_dir: str | os.PathLike | None = None,
             metric: str = "spearman", aggregation: str = "all", batch_size: int = 64,
             download: bool = False) -> dict[str, Any]:
    """Scores the encoder on the tasks: {"protocol", "tasks": {name: {"score", "n", "subsets"}}, "average", ...}."""
    loaded, missing = load_tasks(tasks, data_dir, download)
    t0 = time.perf_counter()
    results = score_tasks(encoder, loaded, metric, aggregation, batch_size)
    scores = [r["score"] for r in results.values()]
    return {"protocol": protocol(encoder, metric, aggregation), "tasks": results,
            "average": float(np.mean(scores)) if scores else None, "missing": missing,
            "seconds": round(time.perf_counter() - t0, 2)}


def _cell(score: float, std: float | None) -> str:
    return f"{score:.2f}" if std is None else f"{score:.2f} +- {std:.2f}"


def format_table(result: dict[str, Any], title: str = "") -> str:
    """A plain-text table: one row per task plus the average, then the protocol."""
    lines = [title] if title else []
    lines.append(f"{'task':<8} {'score':>7} {'pairs':>6}")
    for task, r in result["tasks"].items():
        lines.append(f"{task:<8} {_cell(r['score'], r.get('std')):>7} {r['n']:>6}")
    if result.get("average") is not None:
        lines.append(f"{'average':<8} {_cell(result['average'], result.get('average_std')):>7}")
    for task, why in result.get("missing", {}).items():
        lines.append(f"{task:<8} {'missing':>7}  ({why})")
    p = result["protocol"]
    lines.append("protocol: " + ", ".join(f"{k}={v}" for k, v in p.items()))
    return "\n".join(lines)


def layer_grid(encoder: Encoder, data_dir: str | os.PathLike | None = None, metric: str = "spearman",
               batch_size: int = 64) -> dict[str, Any]:
    """Spearman on STS-B test for every layer (0 = embeddings) x pooling in {cls, mean, max} (the paper's Fig. 1)."""
    sub = sts.read_task("STSB", data_dir)[0]
    unique = sts.distinct_sentences([sub])
    index = {s: i for i, s in enumerate(unique)}
    fn = all_layers_fn(encoder.config, encoder.dtype)
    emb = run_sorted(fn, encoder.params, encoder.tokenizer, unique, batch_size, encoder.max_length)  # (L+1,P,n,d)
    i1, i2 = [index[s] for s in sub.sent1], [index[s] for s in sub.sent2]
    grid = np.array([[correlation(cosine(emb[layer, p][i1], emb[layer, p][i2]), sub.gold, metric)
                      for p in range(len(POOLINGS))] for layer in range(emb.shape[0])])
    return {"protocol": {**protocol(encoder, metric, "all"), "pooling": list(POOLINGS), "layer": "each",
                         "task": "STSB test"},
            "layers": list(range(emb.shape[0])), "poolings": list(POOLINGS), "scores": grid.tolist()}


def plot_layer_grid(grid: dict[str, Any], path: str | os.PathLike) -> None:
    """Writes the layer x pooling heatmap as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.array(grid["scores"])
    fig, ax = plt.subplots(figsize=(4, 0.45 * len(grid["layers"]) + 1.2))
    im = ax.imshow(scores, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(grid["poolings"])), grid["poolings"])
    ax.set_yticks(range(len(grid["layers"])), [f"layer {i}" for i in grid["layers"]])
    for (r, c), v in np.ndenumerate(scores):
        ax.text(c, r, f"{v:.1f}", ha="center", va="center", color="w" if v < scores.mean() else "k", fontsize=8)
    ax.set_title(f"STS-B test, {grid['protocol']['metric']} x100")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI."""
    ap = argparse.ArgumentParser(prog="python -m sgcl_jax.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm", help="'minilm', a Hugging Face folder or hub id, or a workdir")
    ap.add_argument("--which", default="best", choices=("best", "latest"), help="checkpoint, for a workdir")
    ap.add_argument("--tasks", default=",".join(sts.TASKS))
    ap.add_argument("--pooling", default="cls", choices=POOLINGS)
    ap.add_argument("--layer", default="last", help="'last', 'first_last' or a hidden-state index (0 = embeddings)")
    ap.add_argument("--metric", default="spearman", choices=METRICS)
    ap.add_argument("--aggregation", default="all", choices=AGGREGATIONS)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--data-dir", default=None, help="default: $SGCL_DATA_DIR, else ~/.cache/sgcl_jax/sts")
    ap.add_argument("--download", action="store_true", help="fetch missing tasks into the data folder")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    ap.add_argument("--layers", action="store_true", help="the layer x pooling grid on STS-B test (+ PNG)")
    args = ap.parse_args(argv)

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in sts.TASKS]
    if unknown:
        ap.error(f"unknown task(s) {unknown}; choose from {','.join(sts.TASKS)}")
    layer: int | str = int(args.layer) if args.layer.lstrip("-").isdigit() else args.layer
    try:
        encoder = load_encoder(args.model, which=args.which, pooling=args.pooling, layer=layer,
                               max_length=args.max_length, dtype=args.dtype)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.layers:
        grid = layer_grid(encoder, args.data_dir, args.metric, args.batch_size)
        out = Path(args.out or "layers.json")
        write_json(grid, out)
        plot_layer_grid(grid, out.with_suffix(".png"))
        print(f"{'layer':<6}" + "".join(f"{p:>8}" for p in grid["poolings"]))
        for i, row in zip(grid["layers"], grid["scores"], strict=True):
            print(f"{i:<6}" + "".join(f"{v:8.2f}" for v in row))
        print(f"wrote {out} and {out.with_suffix('.png')}")
        return 0
    result = evaluate(encoder, tasks, args.data_dir, args.metric, args.aggregation, args.batch_size, args.download)
    print(format_table(result))
    print(f"encoding + scoring: {result['seconds']} s")
    if args.out:
        write_json(result, args.out)
    return 0 if result["tasks"] else 1


if __name__ == "__main__":
    sys.exit(main())
