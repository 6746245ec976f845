"""The classifiers of SentEval's transfer protocols as batched JAX programs: every fit of a task (folds x penalties x
seeds) trained together, vmapped inside one jitted program, and chosen by name from one registry.

`logreg`: L2-regularised logistic regression in scikit-learn's convention (C; binomial for two classes,
multinomial for more, intercept not penalised) solved to convergence by Newton's method with conjugate gradients.
`mlp`: SentEval's PyTorch MLP (sigmoid hidden layer, Adam, L2 as weight decay, early stopping on validation
accuracy), with the paper's Table 9 settings.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

LOGREG_GRID = {"inner_kfold": tuple(2.0**t for t in range(-2, 4)), "split": tuple(2.0**t for t in range(-2, 4)),
               "kfold": tuple(2.0**t for t in range(-1, 6))}
MLP_GRID = tuple(10.0**t for t in range(-5, -1))


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """SentEval's MLP with the paper's Table 9 settings."""

    nhid: int = 50
    lr: float = 1e-3
    batch_size: int = 64
    tenacity: int = 5
    epoch_size: int = 4
    max_epoch: int = 200


def _where(cond: jax.Array, a: Any, b: Any) -> Any:
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


@functools.lru_cache(maxsize=16)
def _logreg_program(nclasses: int, max_iter: int, tol: float, max_cg: int = 50) -> Callable[..., Any]:
    """A jitted (X, y, weights (n, F), C (F,)) -> (W (d+1, k, F), data products per fit, Newton iterations per fit):
    every fit at once.

    Newton's method with preconditioned conjugate gradients on scikit-learn's objective divided by C * n (the
    same minimiser): mean cross-entropy + ||W||^2 / (2 C n), the intercept unpenalised. The fits are the columns
    of one matrix, so each product with the data is one matrix multiplication for all of them (X @ W is (n, F)).
    The preconditioner is each fit's Hessian with every probability at 1/2: X^T X / (4 n) + its penalty, factored
    once. A fit stops when its Newton decrement g.H^-1.g (twice its remaining suboptimality) is below `tol`, or
    when no step decreases its objective (the float32 floor). Written out rather than an optax solver vmapped
    over fits: that nests a line-search loop per fit and runs many small products instead of a few large ones.
    """
    k = 1 if nclasses == 2 else nclasses  # binomial: one logit z, p = sigmoid(z); else softmax over k
    steps = jnp.asarray([1.0, 0.5, 0.25, 0.125, 0.0625, 1 / 32, 1 / 64])

    def fit(x, y, weights, c):
        n_fit = jnp.sum(weights, axis=0)  # (F,)
        xa = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)  # (n, D)
        dim, fits = xa.shape[1], weights.shape[1]
        penalty = jnp.where(jnp.arange(dim)[:, None] < dim - 1, 1.0 / (c * n_fit), 0.0)  # (D, F)
        lam = penalty[:, None, :]  # (D, 1, F)
        # Softmax's logits can all shift together, and the intercepts are not penalised: that direction has no
        # curvature. A tiny damping of the intercepts in the Newton system keeps it solvable; the gradient, and
        # so the solution, are the objective's own.
        damping = lam + jnp.where(jnp.arange(dim)[:, None, None] == dim - 1, 1e-6, 0.0)
        onehot = jax.nn.one_hot(y, nclasses)
        target = onehot[:, 1:] if k == 1 else onehot  # (n, k)
        scale = weights / n_fit  # (n, F): each fit's rows, averaged
        gram = xa.T @ xa / (4.0 * x.shape[0])
        # Inverted once (a tiny ridge keeps the unpenalised intercept's direction invertible), then applied as
        # one batched product per conjugate-gradient step: triangular solves are slow on CPUs.
        inverse = jnp.linalg.inv(gram[None] + jax.vmap(jnp.diag)(penalty.T + 1e-6))  # (F, D, D)

        def precondition(r):  # (D, k, F) -> (D, k, F)
            return jnp.einsum("fde,ekf->dkf", inverse, r)

        def logits(w):  # (D, k, F) -> (n, k, F)
            return jnp.einsum("nd,dkf->nkf", xa, w)

        def probs(z):
            return jax.nn.sigmoid(z) if k == 1 else jax.nn.softmax(z, axis=1)

        def ce(z):  # (n, k, F) -> (n, F)
            if k == 1:
                return jax.nn.softplus(z[:, 0]) - target[:, 0, None] * z[:, 0]
            return jax.nn.logsumexp(z, axis=1) - jnp.einsum("nk,nkf->nf", target, z)

        def change(z, w, dz, dw, t):
            # The objective's change for a step -t, summed row by row and with the penalty written in w.dw:
            # float32 then resolves changes far below the objective's own rounding (about 3e-8 of it).
            data = jnp.sum(scale * (ce(z - t * dz) - ce(z)), axis=0)
            return data + jnp.sum(lam * (0.5 * t * t * dw * dw - t * w * dw), axis=(0, 1))

        def gradient(z, w):
            residual = (probs(z) - target[:, :, None]) * scale[:, None, :]
            return jnp.einsum("nd,nkf->dkf", xa, residual) + lam * w

        def hvp(p, v):  # each fit's Hessian times its column of v
            u = logits(v)
            r = p * (1 - p) * u if k == 1 else p * u - p * jnp.sum(p * u, axis=1, keepdims=True)
            return jnp.einsum("nd,nkf->dkf", xa, r * scale[:, None, :]) + damping * v

        def dot(a, b):
            return jnp.sum(a * b, axis=(0, 1))

        def newton(state):
            w, z, iters, products, done = state
            g = gradient(z, w)
            p = probs(z)
            active = ~done

            def cg(cg_state):  # preconditioned conjugate gradients for H d = g, all fits at once
                d, r, q, rz, it, count = cg_state
                hq = hvp(p, q)
                alpha = rz / jnp.maximum(dot(q, hq), 1e-30)
                going = active & (dot(r, r) > 1e-8 * dot(g, g))
                d = jnp.where(going, d + alpha * q, d)
                r = jnp.where(going, r - alpha * hq, r)
                zr = precondition(r)
                rz_new = dot(r, zr)
                q = jnp.where(going, zr + rz_new / jnp.maximum(rz, 1e-30) * q, q)
                count = count + 2 * going.astype(jnp.int32)  # X v and X^T r
                return d, r, q, jnp.where(going, rz_new, rz), it + 1, count

            zg = precondition(g)
            start = (jnp.zeros_like(w), g, zg, dot(g, zg), 0, products)
            direction, r, *_, products = jax.lax.while_loop(
                lambda s: (s[4] < max_cg) & jnp.any(active & (dot(s[1], s[1]) > 1e-8 * dot(g, g))), cg, start)
            decrement = dot(g, direction)  # ~ g.H^-1.g
            dz = logits(direction)
            tried = jnp.stack([change(z, w, dz, direction, t) for t in steps])  # (steps, F)
            better = jnp.min(tried, axis=0) < 0
            t = jnp.where(active & better, steps[jnp.argmin(tried, axis=0)], 0.0)
            products = products + 2 * active.astype(jnp.int32)  # the gradient and X @ direction
            iters = iters + active.astype(jnp.int32)
            done = done | ~better | (decrement < tol) | (iters >= max_iter)
            return w - t * direction, z - t * dz, iters, products, done

        w0 = jnp.zeros((dim, k, fits), x.dtype)
        zero = jnp.zeros((fits,), jnp.int32)
        state = (w0, logits(w0), zero, zero, jnp.zeros((fits,), bool))
        w, _, iters, products, _ = jax.lax.while_loop(lambda s: ~jnp.all(s[4]), newton, state)
        return w, products, iters

    return jax.jit(fit)


def _mlp_forward(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def _logreg_forward(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    z = x @ params["w"] + params["b"]
    return jnp.concatenate([jnp.zeros_like(z), z], -1) if z.shape[-1] == 1 else z


@functools.lru_cache(maxsize=16)
def _mlp_program(cfg: MLPConfig, nclasses: int, dim: int, train_max: int, val_max: int) -> Callable[..., Any]:
    """A jitted (X, y, train_idx (F, t), n_train (F,), val_idx (F, v), n_val (F,), l2 (F,), seed (F,)) ->
    (best params, best validation accuracy, epochs run): SentEval's MLP fit for every fit, vmapped."""
    n_batches = math.ceil(train_max / cfg.batch_size)

    def init(key: jax.Array) -> dict[str, jax.Array]:
        # torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
        k = jax.random.split(key, 4)
        a, b = 1 / math.sqrt(dim), 1 / math.sqrt(cfg.nhid)
        return {"w1": jax.random.uniform(k[0], (dim, cfg.nhid), minval=-a, maxval=a),
                "b1": jax.random.uniform(k[1], (cfg.nhid,), minval=-a, maxval=a),
                "w2": jax.random.uniform(k[2], (cfg.nhid, nclasses), minval=-b, maxval=b),
                "b2": jax.random.uniform(k[3], (nclasses,), minval=-b, maxval=b)}

    def fit(x, y, train_idx, n_train, val_idx, n_val, l2, seed):
        # torch's Adam with weight_decay: the L2 term added to the gradient (not decoupled), on every parameter.
        tx = optax.chain(optax.add_decayed_weights(l2), optax.adam(cfg.lr))
        key = jax.random.key(seed)  # SentEval seeds every MLP with the same seed: the same start for every fit
        params = init(jax.random.fold_in(key, 0))

        def val_accuracy(p):
            rows = jnp.arange(val_max) < n_val
            pred = jnp.argmax(_mlp_forward(p, x[val_idx]), -1)
            return jnp.sum((pred == y[val_idx]) & rows) / n_val

        def one_batch(carry, b):
            p, opt, order = carry
            pos = jax.lax.dynamic_slice(order, (b * cfg.batch_size,), (cfg.batch_size,))
            valid = b * cfg.batch_size + jnp.arange(cfg.batch_size) < n_train
            idx = train_idx[pos]

            def loss(p):
                ce = optax.softmax_cross_entropy_with_integer_labels(_mlp_forward(p, x[idx]), y[idx])
                return jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(jnp.sum(valid), 1)  # the batch mean

            updates, new_opt = tx.update(jax.grad(loss)(p), opt, p)
            stepped = valid[0]  # a batch past the end of this fit's data does nothing
            return (_where(stepped, optax.apply_updates(p, updates), p), _where(stepped, new_opt, opt), order), None

        def one_pass(carry, pass_key):
            p, opt = carry
            shuffle = jnp.where(jnp.arange(train_max) < n_train, jax.random.uniform(pass_key, (train_max,)), 2.0)
            order = jnp.argsort(shuffle)
            order = jnp.concatenate([order, jnp.zeros(n_batches * cfg.batch_size - train_max, order.dtype)])
            (p, opt, _), _ = jax.lax.scan(one_batch, (p, opt, order), jnp.arange(n_batches))
            return (p, opt), None

        def epoch(state):
            p, opt, best, best_acc, count, stop, nepoch = state
            keys = jax.random.split(jax.random.fold_in(key, nepoch + 1), cfg.epoch_size)
            (p, opt), _ = jax.lax.scan(one_pass, (p, opt), keys)
            acc = val_accuracy(p)
            improved = acc > best_acc
            # SentEval's rule: the counter of non-improving checks is never reset; stop once it reached tenacity.
            stop = ~improved & (count >= cfg.tenacity)
            count = count + (~improved).astype(jnp.int32)
            return (p, opt, _where(improved, p, best), jnp.maximum(acc, best_acc), count, stop,
                    nepoch + cfg.epoch_size)

        state = (params, tx.init(params), params, jnp.float32(-1.0), jnp.int32(0), jnp.bool_(False), jnp.int32(0))
        state = jax.lax.while_loop(lambda s: ~s[5] & (s[6] <= cfg.max_epoch), epoch, state)
        return state[2], state[3], state[6]

    return jax.jit(jax.vmap(fit, in_axes=(None, None, 0, 0, 0, 0, 0, 0)))


@dataclasses.dataclass
class Fits:
    """A batch of fits on one feature matrix: each a training set, a validation set (early stopping, MLP), a
    penalty and a seed."""

    train: list[np.ndarray]
    val: list[np.ndarray]
    reg: list[float]
    seed: list[int]

    def __len__(self) -> int:
        return len(self.train)

    def add(self, train: np.ndarray, val: np.ndarray, reg: float, seed: int) -> int:
        """Appends a fit; returns its index."""
        self.train.append(np.asarray(train))
        self.val.append(np.asarray(val))
        self.reg.append(reg)
        self.seed.append(seed)
        return len(self.train) - 1


def _pad(rows: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, np.array([len(r) for r in rows], np.int32)


@dataclasses.dataclass
class Stats:
    """What the fits cost: their count, wall time and FLOPs (useful: each fit's own work; executed: with the
    vmapped loops run to the slowest fit of each program)."""

    fits: int = 0
    seconds: float = 0.0
    flops: float = 0.0
    executed_flops: float = 0.0
    iterations: int = 0  # the most Newton iterations (logreg) or epochs (mlp) any fit took

    def add(self, other: Stats) -> None:
        """Accumulates another batch's numbers."""
        self.fits += other.fits
        self.seconds += other.seconds
        self.flops += other.flops
        self.executed_flops += other.executed_flops
        self.iterations = max(self.iterations, other.iterations)


def _train_logreg(x: jax.Array, y: jax.Array, nclasses: int, fits: Fits, padded: list[int], real: int,
                  sizes: tuple[int, int], cfg: MLPConfig, stats: Stats, tol: float, max_iter: int
                  ) -> tuple[dict[str, np.ndarray], None]:
    """One chunk of logistic-regression fits (the columns of one weight matrix); the first `real` are not padding."""
    n, d = x.shape
    chunk = len(padded)
    weights = np.zeros((n, chunk), np.float32)
    for col, i in enumerate(padded):
        weights[fits.train[i], col] = 1.0
    regs = jnp.asarray([fits.reg[i] for i in padded], jnp.float32)
    w, products, iters = _logreg_program(nclasses, max_iter, tol)(x, y, jnp.asarray(weights), regs)
    w, products = np.asarray(w), np.asarray(products).astype(np.float64)
    stats.iterations = max(stats.iterations, int(np.max(iters)))
    product = 2 * n * (d + 1) * (1 if nclasses == 2 else nclasses)  # the data times one fit's parameters
    stats.flops += float(products[:real].sum()) * product
    stats.executed_flops += float(products.max()) * chunk * product  # all columns run to the slowest
    return {"w": np.moveaxis(w[:d], -1, 0), "b": np.moveaxis(w[d], -1, 0)}, None  # (F, d, k), (F, k)


def _train_mlp(x: jax.Array, y: jax.Array, nclasses: int, fits: Fits, padded: list[int], real: int,
               sizes: tuple[int, int], cfg: MLPConfig, stats: Stats, tol: float, max_iter: int
               ) -> tuple[Any, np.ndarray]:
    """One chunk of SentEval MLP fits, vmapped (the first `real` are not padding); returns the best params and best
    validation accuracy of each."""
    d = x.shape[1]
    train_max, val_max = sizes
    chunk = len(padded)
    train_idx, n_train = _pad([fits.train[i] for i in padded], train_max)
    val_idx, n_val = _pad([fits.val[i] for i in padded], val_max)
    program = _mlp_program(cfg, nclasses, d, train_max, val_max)
    out, best, epochs = program(x, y, train_idx, n_train, val_idx, n_val,
                                jnp.asarray([fits.reg[i] for i in padded], jnp.float32),
                                jnp.asarray([fits.seed[i] for i in padded], jnp.uint32))
    # Counts in float64: FLOP counts overflow int32 (a pass over SST2's 67k sentences already does).
    epochs, best = np.asarray(epochs).astype(np.float64), np.asarray(best)
    rows_train, rows_val = n_train.astype(np.float64), n_val.astype(np.float64)
    stats.iterations = max(stats.iterations, int(epochs.max()))  # passes over the data
    layer = d * cfg.nhid + cfg.nhid * nclasses
    per_pass = np.ceil(rows_train / cfg.batch_size) * 6 * cfg.batch_size * layer
    checks = epochs / cfg.epoch_size
    stats.flops += float(np.sum((epochs * per_pass + checks * 2 * rows_val * layer)[:real]))
    stats.executed_flops += float(epochs.max() * chunk * (train_max // cfg.batch_size * 6 * cfg.batch_size * layer
                                                          + 2 * val_max * layer / cfg.epoch_size))
    return out, best


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A classifier family: its penalty grid for each SentEval protocol, whether the final fit holds out 5% of
    its rows for early stopping (SentEval's MLP), its batched training and its forward."""

    name: str
    grids: dict[str, tuple[float, ...]]
    holdout: bool
    train: Callable[..., tuple[Any, np.ndarray | None]]
    forward: Callable[[dict[str, jax.Array], jax.Array], jax.Array]
    description: str  # saved next to every score



_MLP = MLPConfig()
CLASSIFIERS = {
    "logreg": Classifier(
        "logreg", LOGREG_GRID, holdout=False, train=_train_logreg, forward=_logreg_forward,
        description="logistic regression, scikit-learn's C convention, Newton-CG to a decrement of 1e-12; C in "
                    "2^-2..2^3 (MR, CR, SUBJ, MPQA, SST2), 2^-1..2^5 (TREC, MRPC)"),
    "mlp": Classifier(
        "mlp", dict.fromkeys(LOGREG_GRID, MLP_GRID), holdout=True, train=_train_mlp, forward=_mlp_forward,
        description=f"SentEval MLP (nhid {_MLP.nhid}, sigmoid, Adam lr {_MLP.lr}, batch {_MLP.batch_size}, tenacity "
                    f"{_MLP.tenacity}, epoch size {_MLP.epoch_size}, max epoch {_MLP.max_epoch}; L2 in "
                    f"{list(MLP_GRID)})"),
}


def get(classifier: str | Classifier) -> Classifier:
    """The registered classifier of that name (the config's `eval.classifier`)."""
    if isinstance(classifier, Classifier):
        return classifier
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier {classifier!r}: choose from {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[classifier]


def run_fits(classifier: str | Classifier, x: np.ndarray, y: np.ndarray, nclasses: int, fits: Fits,
             cfg: MLPConfig = MLPConfig(), chunk: int = 512, tol: float = 1e-12, max_iter: int = 100
             ) -> tuple[list[Any], np.ndarray, Stats]:
    """Trains every fit, `chunk` at a time in one vmapped program -> (params per fit, validation accuracy per fit
    (NaN where a fit has no validation rows), stats). Chunks are padded to a fixed shape: one compile per task."""
    clf = get(classifier)
    t0 = time.perf_counter()
    xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
    chunk = min(chunk, len(fits))
    params: list[Any] = []
    val_acc, stats = np.full(len(fits), np.nan), Stats(fits=len(fits))
    size = lambda rows: max(cfg.batch_size, -(-max(len(r) for r in rows) // cfg.batch_size) * cfg.batch_size)  # noqa: E731
    sizes = (size(fits.train), size([v if len(v) else np.zeros(1) for v in fits.val]))
    for start in range(0, len(fits), chunk):
        part = list(range(start, min(start + chunk, len(fits))))
        padded = part + [part[-1]] * (chunk - len(part))  # repeat the last fit: a fixed shape, results dropped
        out, best = clf.train(xj, yj, nclasses, fits, padded, len(part), sizes, cfg, stats, tol, max_iter)
        chunk_params = [jax.tree.map(lambda a, r=row: np.asarray(a[r]), out) for row in range(len(part))]
        for row, i in enumerate(part):
            if best is not None:
                val_acc[i] = best[row]
            elif len(fits.val[i]):
                val_acc[i] = accuracy(clf, chunk_params[row], x, y, fits.val[i])
        params += chunk_params
    stats.seconds = time.perf_counter() - t0
    return params, val_acc, stats


def predict(classifier: str | Classifier, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Class predictions of one fitted classifier."""
    forward = get(classifier).forward
    return np.asarray(jnp.argmax(forward(jax.tree.map(jnp.asarray, params), jnp.asarray(x)), -1))


def accuracy(classifier: str | Classifier, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
             rows: np.ndarray) -> float:
    """Accuracy of one fitted classifier on the given rows."""
    return float(np.mean(predict(classifier, params, x[rows]) == y[rows]))
