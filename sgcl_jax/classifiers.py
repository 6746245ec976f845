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

from sgcl_jax.newton_cg import logreg_program

LOGREG_GRID = {"inner_kfold": tuple(2.0**t for t in range(-2, 4)), "split": tuple(2.0**t for t in range(-2, 4)),
               "kfold": tuple(2.0**t for t in range(-1, 6))}
MLP_GRID = tuple(10.0**t for t in range(-5, -1))
# The MLP fits advance this many validation checks per call, then the finished ones leave; the ones still running
# go on in the narrowest of MLP_WIDTHS widths (chunk, chunk/2, ...), each one compile.
SEGMENT_CHECKS = 4
MLP_WIDTHS = 8


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


def _mlp_forward(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def _logreg_forward(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    z = x @ params["w"] + params["b"]
    return jnp.concatenate([jnp.zeros_like(z), z], -1) if z.shape[-1] == 1 else z


@functools.lru_cache(maxsize=16)
def _mlp_programs(cfg: MLPConfig, nclasses: int, dim: int, train_max: int, val_max: int
                  ) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Two jitted programs of SentEval's MLP fit, vmapped over fits: `start(seed (F,))` -> the fits' states, and
    `advance(X, y, train_idx (F, t), n_train (F,), val_idx (F, v), n_val (F,), l2 (F,), seed (F,), state)` -> the
    states after at most SEGMENT_CHECKS more validation checks (a stopped fit does not change). A state is
    (params, optimiser state, best params, best validation accuracy, non-improving checks, stopped, epochs run)."""
    n_batches = math.ceil(train_max / cfg.batch_size)

    def init(key: jax.Array) -> dict[str, jax.Array]:
        # torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
        k = jax.random.split(key, 4)
        a, b = 1 / math.sqrt(dim), 1 / math.sqrt(cfg.nhid)
        return {"w1": jax.random.uniform(k[0], (dim, cfg.nhid), minval=-a, maxval=a),
                "b1": jax.random.uniform(k[1], (cfg.nhid,), minval=-a, maxval=a),
                "w2": jax.random.uniform(k[2], (cfg.nhid, nclasses), minval=-b, maxval=b),
                "b2": jax.random.uniform(k[3], (nclasses,), minval=-b, maxval=b)}

    def optimizer(l2: jax.Array) -> optax.GradientTransformation:
        # torch's Adam with weight_decay: the L2 term added to the gradient (not decoupled), on every parameter.
        return optax.chain(optax.add_decayed_weights(l2), optax.adam(cfg.lr))

    def start(seed):
        # SentEval seeds every MLP with the same seed: the same start for every fit.
        params = init(jax.random.fold_in(jax.random.key(seed), 0))
        return (params, optimizer(0.0).init(params), params, jnp.float32(-1.0), jnp.int32(0), jnp.bool_(False),
                jnp.int32(0))

    def advance(x, y, train_idx, n_train, val_idx, n_val, l2, seed, state):
        tx, key = optimizer(l2), jax.random.key(seed)

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

        def epoch(carry):
            (p, opt, best, best_acc, count, stop, nepoch), checks = carry
            # The pass keys depend on the epoch count only: a fit continued over several calls is the same fit.
            keys = jax.random.split(jax.random.fold_in(key, nepoch + 1), cfg.epoch_size)
            (p, opt), _ = jax.lax.scan(one_pass, (p, opt), keys)
            acc = val_accuracy(p)
            improved = acc > best_acc
            # SentEval's rule: the counter of non-improving checks is never reset; stop once it reached tenacity.
            stop = ~improved & (count >= cfg.tenacity)
            count = count + (~improved).astype(jnp.int32)
            return (p, opt, _where(improved, p, best), jnp.maximum(acc, best_acc), count, stop,
                    nepoch + cfg.epoch_size), checks + 1

        def running(carry):
            (*_, stop, nepoch), checks = carry
            return ~stop & (nepoch <= cfg.max_epoch) & (checks < SEGMENT_CHECKS)

        return jax.lax.while_loop(running, epoch, (state, jnp.int32(0)))[0]

    return (jax.jit(jax.vmap(start)),
            jax.jit(jax.vmap(advance, in_axes=(None, None, 0, 0, 0, 0, 0, 0, 0))))


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
    w, products, iters = logreg_program(nclasses, max_iter, tol)(x, y, jnp.asarray(weights), regs)
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
    validation accuracy of each. The fits advance SEGMENT_CHECKS validation checks at a time, and only the ones
    still running go on, packed into the narrowest of a few fixed widths: a finished fit costs nothing more (a
    vmapped loop would otherwise run every fit until the slowest stops)."""
    d = x.shape[1]
    train_max, val_max = sizes
    chunk = len(padded)
    train_idx, n_train = _pad([fits.train[i] for i in padded], train_max)
    val_idx, n_val = _pad([fits.val[i] for i in padded], val_max)
    l2 = np.asarray([fits.reg[i] for i in padded], np.float32)
    seeds = np.asarray([fits.seed[i] for i in padded], np.uint32)
    start, advance = _mlp_programs(cfg, nclasses, d, train_max, val_max)
    state = jax.tree.map(np.array, start(jnp.asarray(seeds)))
    layer = d * cfg.nhid + cfg.nhid * nclasses
    per_epoch = train_max // cfg.batch_size * 6 * cfg.batch_size * layer + 2 * val_max * layer / cfg.epoch_size
    active = np.arange(real)  # the padding rows repeat a real fit: they need not run
    while active.size:
        width = chunk
        while width // 2 >= active.size and width > max(1, chunk // MLP_WIDTHS):
            width //= 2  # a few widths only: each is one compile
        rows = np.concatenate([active, np.full(width - active.size, active[-1])])
        before = state[6][active].copy()
        new = advance(x, y, train_idx[rows], n_train[rows], val_idx[rows], n_val[rows], l2[rows], seeds[rows],
                      jax.tree.map(lambda a, r=rows: a[r], state))
        new = jax.tree.map(lambda a, n=active.size: np.asarray(a)[:n], new)
        for leaf, value in zip(jax.tree.leaves(state), jax.tree.leaves(new), strict=True):
            leaf[active] = value
        stats.executed_flops += float(np.max(state[6][active] - before)) * width * per_epoch
        active = active[~state[5][active] & (state[6][active] <= cfg.max_epoch)]
    # Counts in float64: FLOP counts overflow int32 (a pass over SST2's 67k sentences already does).
    epochs, best = state[6].astype(np.float64), state[3]
    rows_train, rows_val = n_train.astype(np.float64), n_val.astype(np.float64)
    stats.iterations = max(stats.iterations, int(epochs.max()))  # passes over the data
    per_pass = np.ceil(rows_train / cfg.batch_size) * 6 * cfg.batch_size * layer
    checks = epochs / cfg.epoch_size
    stats.flops += float(np.sum((epochs * per_pass + checks * 2 * rows_val * layer)[:real]))
    return state[2], best


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
