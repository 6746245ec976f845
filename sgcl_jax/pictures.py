"""Pictures of an encoder: the layer x pooling grid on STS-B test (the paper's Figure 1) and its heatmap, and
positive and negative STS-B dev pairs in 2-D (the paper's Figures 5-6)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sgcl_jax import sts, tasks
from sgcl_jax.config import POOLINGS
from sgcl_jax.encoder import SentenceEncoder, all_layers_fn, run_sorted
from sgcl_jax.evaluators import Sts, encoder_protocol
from sgcl_jax.scoring import Settings, correlation, cosine


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
    sts_protocol = Sts(["STSB"], Settings(metric=metric)).protocol()
    return {"protocol": {**encoder_protocol(encoder), **sts_protocol, "pooling": list(POOLINGS),
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
