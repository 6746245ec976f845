"""NumPy re-derivations of the objectives, loop by loop from the paper's formulas (not a test module: the
independent oracles that test_losses and test_train_step compare against)."""

from __future__ import annotations

import numpy as np


def phi(u: np.ndarray, v: np.ndarray, tau: float) -> float:
    """exp(cos(u, v) / tau)."""
    return float(np.exp(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v) / tau))


def np_sg(c: np.ndarray, h: np.ndarray, tau: float) -> float:
    """NT-Xent over X = {c, h}: every one of the 2b vectors an anchor, its partner the positive."""
    b = len(c)
    x = np.concatenate([c, h])
    n = len(x)
    out = []
    for m in range(n):
        partner = (m + b) % n
        den = sum(phi(x[m], x[j], tau) for j in range(n) if j != m)
        out.append(-np.log(phi(x[m], x[partner], tau) / den))
    return float(np.mean(out))


def np_opt1(c: np.ndarray, h: np.ndarray, tau: float) -> float:
    """c_i the only anchors; the other c_j and every h_j in the denominator."""
    b = len(c)
    out = []
    for i in range(b):
        den = sum(phi(c[i], c[j], tau) for j in range(b) if j != i) + sum(phi(c[i], h[j], tau) for j in range(b))
        out.append(-np.log(phi(c[i], h[i], tau) / den))
    return float(np.mean(out))


def np_opt2(c: np.ndarray, h: np.ndarray, tau: float) -> float:
    """c_i the only anchors; every h_j (h_i included) in the denominator."""
    b = len(c)
    return float(np.mean([-np.log(phi(c[i], h[i], tau) / sum(phi(c[i], h[j], tau) for j in range(b)))
                          for i in range(b)]))


def np_sg_opt(c: np.ndarray, h_all: np.ndarray, tau: float) -> float:
    """SG-OPT: each view h_ik a positive of c_i; the views of every other sentence the negatives."""
    b, k = h_all.shape[:2]
    out = []
    for i in range(b):
        neg = sum(phi(c[i], h_all[m, n], tau) for m in range(b) if m != i for n in range(k))
        for j in range(k):
            pos = phi(c[i], h_all[i, j], tau)
            out.append(-np.log(pos / (pos + neg)))
    return float(np.mean(out))
