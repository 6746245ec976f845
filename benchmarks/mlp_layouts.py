"""The transfer MLP's two layouts timed on one synthetic search with MR's shapes (10,662 sentences, 384 features,
2 classes; 10 outer x 10 inner folds x 4 penalties = 400 fits, 100 blocks of 4), a few epochs: each block a call
of its own, the calls over one thread per core (what the CPU runs), against the blocks vmapped in one call,
narrowing as they finish (what an accelerator runs). Both in one process, each timed on its second run (the first
compiles every width it reaches), and their results compared.

    JAX_PLATFORMS=cpu python -m benchmarks.mlp_layouts --epochs 8
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sgcl_jax import classifiers


def search(n: int, dim: int, outer: int, inner: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                                  classifiers.Fits]:
    """Features, labels and the fits of an inner k-fold penalty search (the protocol's shapes, random data)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    y = (x[:, :8].sum(1) + rng.standard_normal(n) > 0).astype(np.int32)
    fits = classifiers.Fits([], [], [], [])
    for o in range(outer):
        rows = np.sort(rng.permutation(n)[: n * (outer - 1) // outer])
        for i in range(inner):
            val = rows[i::inner]
            for reg in classifiers.MLP_GRID:
                fits.add(np.setdiff1d(rows, val), val, reg, 1111 + o)
    return x, y, fits


def main() -> None:
    """Times both layouts and prints GFLOP/s of useful arithmetic and the speed-up."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=8, help="max_epoch of every fit (the protocol's is 200)")
    ap.add_argument("--outer", type=int, default=10)
    ap.add_argument("--inner", type=int, default=10)
    args = ap.parse_args()
    x, y, fits = search(10_662, 384, args.outer, args.inner)
    cfg = classifiers.MLPConfig(max_epoch=args.epochs)
    per_core = classifiers._threads()
    rows = {}
    for name, threads in (("one block per call, threads", per_core), ("blocks vmapped, one call", 1)):
        classifiers._threads = lambda t=threads: t  # noqa: B023 (bound through the default)
        classifiers.run_fits("mlp", x, y, 2, fits, cfg)  # every width this search reaches compiles, untimed
        t0 = time.perf_counter()
        _, val, stats = classifiers.run_fits("mlp", x, y, 2, fits, cfg)
        rows[name] = (time.perf_counter() - t0, stats, val)
        print(f"{name} ({threads} thread(s)): {rows[name][0]:.1f} s, {stats.flops / rows[name][0] / 1e9:.1f} "
              f"GFLOP/s useful, {stats.executed_flops / stats.flops:.2f}x executed/useful", flush=True)
    (a, _, va), (b, _, vb) = rows.values()
    print(f"speed-up {b / a:.2f}x; validation accuracies equal: {bool(np.array_equal(va, vb))}")


if __name__ == "__main__":
    main()
