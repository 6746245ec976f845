"""Evaluation with an explicit protocol: STS (English, STS 2017, any STS-format folder) and SentEval's transfer
tasks, the results record and table, the layer x pooling grid, the embedding picture, and the CLI.

    python -m sgcl_jax.evaluate --model minilm --tasks sts --pooling cls
    python -m sgcl_jax.evaluate --model runs/default --tasks transfer --classifier logreg
    python -m sgcl_jax.evaluate --model minilm --tasks sts17 --metric pearson
    python -m sgcl_jax.evaluate --model minilm --layers                 # every layer x {cls, mean, max}, STS-B test
    python -m sgcl_jax.evaluate --model minilm --model runs/default --plot-pairs pairs.png
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
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

from sgcl_jax import sts, tasks, transfer
from sgcl_jax.encoder import SentenceEncoder, all_layers_fn, run_sorted
from sgcl_jax.files import write_json
from sgcl_jax.pooling import POOLINGS
from sgcl_jax.runs import RunError, is_run, load_encoder, resolve_checkpoint

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


def protocol(encoder: SentenceEncoder, settings: Settings, names: Sequence[str]) -> dict[str, Any]:
    """The evaluation protocol, printed and saved next to every score."""
    kinds = {tasks.kind(t) for t in names}
    out: dict[str, Any] = {"model": encoder.source, "pooling": encoder.pooling, "layer": encoder.layer,
                           "max_length": encoder.max_length, "dtype": encoder.dtype, "text": TEXT}
    if kinds & {"sts", "sts17", "folder"}:
        out.update({"similarity": "cosine", "sts_metric": settings.metric if settings.metric != "auto" else
                    "spearman (pearson for STS17, as the paper)", "scale": "x100",
                    "aggregation_sts12_16": settings.aggregation, "stsb_split": "test (1379 pairs)",
                    "sickr_split": "test (4927 pairs)"})
    if "transfer" in kinds:
        out.update(transfer.transfer_protocol(settings.classifier, settings.kfold, settings.classifier_seeds))
    return out


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


def evaluate(encoder: SentenceEncoder, names: Sequence[str] = tasks.STS_TASKS, settings: Settings | None = None
             ) -> dict[str, Any]:
    """Scores the encoder: {"protocol", "tasks": {name: {"score", "metric", "n", ...}}, "average", "averages",
    "missing", "seconds"}. "average" is the English STS average when STS tasks were asked for, else the first
    other kind's; each average says which tasks it covers and whether that is all that was asked for."""
    settings = settings or Settings()
    names = tasks.expand(names)
    t0 = time.perf_counter()
    sts_names = [t for t in names if tasks.kind(t) != "transfer"]
    loaded, missing = load_sts_tasks(sts_names, settings.data_dir, settings.download)
    results = score_sts(encoder, loaded, settings)
    transfer_names = [t for t in names if tasks.kind(t) == "transfer"]
    if transfer_names:
        scored, gone = transfer.evaluate_tasks(encoder, transfer_names, settings.senteval_dir, settings.classifier,
                                               settings.kfold, settings.classifier_seeds, settings.batch_size,
                                               settings.cache_dir)
        results.update(scored)
        missing.update(gone)
    results = {t: results[t] for t in names if t in results}
    avgs = averages(results, names)
    return {"protocol": protocol(encoder, settings, names), "tasks": results,
            "average": next(iter(avgs.values()), None), "averages": avgs, "missing": missing,
            "seconds": round(time.perf_counter() - t0, 2)}


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


# ------------------------------------------------------------------------------------------ pictures


def layer_grid(encoder: SentenceEncoder, data_dir: str | os.PathLike | None = None, metric: str = "spearman",
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
    return {"protocol": {**protocol(encoder, Settings(metric=metric), ["STSB"]), "pooling": list(POOLINGS),
                         "layer": "each", "task": "STSB test"},
            "layers": list(range(emb.shape[0])), "poolings": list(POOLINGS), "scores": grid.tolist()}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_layer_grid(grid: dict[str, Any], path: str | os.PathLike) -> None:
    """Writes the layer x pooling heatmap as a PNG."""
    plt = _pyplot()
    scores = np.array(grid["scores"])
    fig, ax = plt.subplots(figsize=(4, 0.45 * len(grid["layers"]) + 1.2))
    im = ax.imshow(scores, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(grid["poolings"])), grid["poolings"])
    ax.set_yticks(range(len(grid["layers"])), [f"layer {i}" for i in grid["layers"]])
    for (r, c), v in np.ndenumerate(scores):
        ax.text(c, r, f"{v:.1f}", ha="center", va="center", color="w" if v < np.nanmean(scores) else "k", fontsize=8)
    ax.set_title(f"STS-B test, {grid['protocol']['sts_metric']} x100")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sample_pairs(data_dir: str | os.PathLike | None, n: int = 20, seed: int = 0) -> tuple[list, list]:
    """n positive (gold 5) and n negative (gold 0) STS-B dev pairs, drawn with a fixed seed."""
    dev = sts.read_stsb(tasks.data_folder("sts", data_dir) / sts.FOLDERS["STSB"], "dev")
    rng = np.random.default_rng(seed)
    picked = []
    for gold in (5.0, 0.0):
        idx = np.flatnonzero(dev.gold == gold)
        if len(idx) < n:
            raise ValueError(f"STS-B dev has only {len(idx)} pairs with gold {gold:g}; asked for {n}")
        picked.append([(dev.sent1[i], dev.sent2[i]) for i in sorted(rng.choice(idx, n, replace=False))])
    return picked[0], picked[1]


def pair_picture(encoders: Sequence[SentenceEncoder], path: str | os.PathLike, data_dir: str | os.PathLike | None,
                 method: str = "tsne", n: int = 20, seed: int = 0) -> list[dict[str, Any]]:
    """The paper's Figures 5-6: each model's vectors of n positive and n negative STS-B dev pairs in 2-D
    (t-SNE or PCA), each pair joined by a line, one panel per model; returns the mean cosines behind it."""
    positives, negatives = sample_pairs(data_dir, n, seed)
    pairs = positives + negatives
    sentences = [s for pair in pairs for s in pair]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(encoders), figsize=(5 * len(encoders), 5), squeeze=False)
    rows = []
    for ax, encoder in zip(axes[0], encoders, strict=True):
        emb = encoder.encode(sentences, normalize_embeddings=True, show_progress_bar=False)
        a, b = emb[0::2], emb[1::2]
        cos = np.sum(a * b, axis=1)
        rows.append({"model": encoder.source, "positive_cosine": float(cos[:n].mean()),
                     "negative_cosine": float(cos[n:].mean()), "gap": float(cos[:n].mean() - cos[n:].mean())})
        xy = _project(emb, method, seed)
        for k in range(len(pairs)):
            color = "tab:blue" if k < n else "tab:red"
            ax.plot(xy[[2 * k, 2 * k + 1], 0], xy[[2 * k, 2 * k + 1], 1], "-", color=color, alpha=0.6, lw=1)
            ax.scatter(xy[[2 * k, 2 * k + 1], 0], xy[[2 * k, 2 * k + 1], 1], s=14, color=color)
        name, _, checkpoint = encoder.source.partition(" (")
        short = "/".join(Path(name).parts[-2:]) + (f" ({checkpoint}" if checkpoint else "")
        ax.set_title(f"{short}, {encoder.pooling} pooling\ncos: positive {rows[-1]['positive_cosine']:.2f}, "
                     f"negative {rows[-1]['negative_cosine']:.2f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], color="tab:blue", label=f"{n} positive pairs (gold 5)"),
               plt.Line2D([], [], color="tab:red", label=f"{n} negative pairs (gold 0)")]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False)
    fig.suptitle(f"STS-B dev pairs, {method.upper()} of each model's sentence vectors", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return rows


def _project(emb: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(2, random_state=seed).fit_transform(emb)
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(2, perplexity=min(15, len(emb) - 1), init="pca", random_state=seed).fit_transform(emb)
    raise ValueError(f"projection {method!r}: choose 'tsne' or 'pca'")


# ------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI."""
    ap = argparse.ArgumentParser(prog="python -m sgcl_jax.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=None,
                    help="'minilm', a Hugging Face folder or hub id, or a training run folder; repeat for "
                         "--plot-pairs (default: minilm)")
    ap.add_argument("--which", default="best", choices=("best", "latest"),
                    help="checkpoint of a run folder (default: %(default)s)")
    ap.add_argument("--tasks", default="sts", help="comma-separated task names, aliases (sts, sts17, transfer) or "
                    "folders of STS files (default: %(default)s)")
    ap.add_argument("--pooling", default=None, choices=POOLINGS, help="default: the run's, else cls")
    ap.add_argument("--layer", default="last",
                    help="'last', 'first_last' or a hidden-state index, 0 = embeddings (default: %(default)s)")
    ap.add_argument("--metric", default="auto", choices=METRICS,
                    help="STS correlation; auto = Spearman, Pearson for STS17 (default: %(default)s)")
    ap.add_argument("--aggregation", default="all", choices=AGGREGATIONS,
                    help="how STS12-16 subsets combine (default: %(default)s)")
    ap.add_argument("--max-length", type=int, default=None, help="default: the run's, else 128")
    ap.add_argument("--batch-size", type=int, default=64, help="encoding batch (default: %(default)s)")
    ap.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                    help="compute dtype (default: the run's eval dtype, else float32)")
    ap.add_argument("--data-dir", default=None, help="STS data folder (default: $SGCL_DATA_DIR, else the user cache)")
    ap.add_argument("--senteval-dir", default=None, help="SentEval data folder (default: $SGCL_SENTEVAL_DIR)")
    ap.add_argument("--classifier", default="logreg", choices=("logreg", "mlp"),
                    help="transfer tasks' classifier (default: %(default)s)")
    ap.add_argument("--kfold", type=int, default=10, help="transfer cross-validation folds (default: %(default)s)")
    ap.add_argument("--seeds", default="1111",
                    help="comma-separated classifier seeds; mean +- std over them (default: %(default)s)")
    ap.add_argument("--cache-dir", default=None, help="where transfer features are cached (default: the run folder "
                    "for a run, else no cache)")
    ap.add_argument("--download", action="store_true", help="fetch missing STS tasks into the data folder")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    ap.add_argument("--layers", action="store_true", help="the layer x pooling grid on STS-B test (+ PNG)")
    ap.add_argument("--plot-pairs", default=None, metavar="PNG",
                    help="draw 20 positive and 20 negative STS-B dev pairs for each --model, side by side")
    ap.add_argument("--projection", default="tsne", choices=("tsne", "pca"),
                    help="2-D projection for --plot-pairs (default: %(default)s)")
    ap.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    args = ap.parse_args(argv)
    models = args.model or ["minilm"]
    try:
        return _run_cli(args, models)
    except (OSError, ValueError, RunError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1  # the exit-code convention of every command (README: Command lines)


def _run_cli(args: argparse.Namespace, models: list[str]) -> int:
    layer: int | str = int(args.layer) if args.layer.lstrip("-").isdigit() else args.layer
    overrides = {"pooling": args.pooling, "max_length": args.max_length, "dtype": args.dtype, "layer": layer}
    encoders = [load_encoder(m, which=args.which, **overrides) for m in models]
    if args.plot_pairs:
        rows = pair_picture(encoders, args.plot_pairs, args.data_dir, args.projection)
        for r in rows:
            print(f"{r['model']}: mean cosine of positive pairs {r['positive_cosine']:.3f}, negative pairs "
                  f"{r['negative_cosine']:.3f} (gap {r['gap']:.3f})")
        if args.out:
            write_json(rows, args.out)
        print(f"wrote {args.plot_pairs}")
        return 0
    if len(encoders) > 1:
        raise ValueError("several --model values are for --plot-pairs only")
    encoder = encoders[0]
    if args.layers:
        grid = layer_grid(encoder, args.data_dir, "spearman" if args.metric == "auto" else args.metric,
                          args.batch_size)
        out = Path(args.out or "layers.json")
        write_json(grid, out)
        plot_layer_grid(grid, out.with_suffix(".png"))
        print(f"{'layer':<6}" + "".join(f"{p:>8}" for p in grid["poolings"]))
        for i, row in zip(grid["layers"], grid["scores"], strict=True):
            print(f"{i:<6}" + "".join(f"{v:8.2f}" for v in row))
        print(f"wrote {out} and {out.with_suffix('.png')}")
        return 0
    names = tasks.expand([t.strip() for t in args.tasks.split(",") if t.strip()])
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    run_folder, _, _ = resolve_checkpoint(models[0])
    # A run folder's features are cached outside it (a read-only command writes nothing into a run); the cache key
    # is the weights' fingerprint, so one user cache serves every run and checkpoint.
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sgcl_jax"
    cache = args.cache_dir or (str(user_cache) if is_run(run_folder) else None)
    settings = Settings(metric=args.metric, aggregation=args.aggregation, batch_size=args.batch_size,
                        data_dir=args.data_dir, download=args.download, senteval_dir=args.senteval_dir,
                        classifier=args.classifier, kfold=args.kfold, classifier_seeds=seeds, cache_dir=cache)
    result = evaluate(encoder, names, settings)
    print(format_table(result))
    print(f"encoding + scoring: {result['seconds']} s")
    if args.out:
        write_json(result, args.out)
    return 0 if result["tasks"] else 1


if __name__ == "__main__":
    sys.exit(main())
