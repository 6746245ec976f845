"""The classifiers of SentEval's transfer protocols as batched JAX programs: the fits of a task (folds x penalties x
seeds) trained together by jitted programs, and chosen by name from one registry.

`logreg`: L2-regularised logistic regression in scikit-learn's convention (C; binomial for two classes,
multinomial for more, intercept not penalised) solved to convergence by Newton's method with conjugate gradients.
`mlp`: SentEval's PyTorch MLP (sigmoid hidden layer, Adam, L2 as weight decay, early stopping on validation
accuracy), with the paper's Table 9 settings; the fits that differ only in their penalty train as one wider
network (a block), each block in a call of its own on the CPU, the blocks vmapped on an accelerator.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
# Where a block's members sit in each MLP parameter: w1 is (dim, members, nhid), so the block's first layer is one
# (dim, members*nhid) matrix without a copy; the others lead with the member.
MEMBER_AXIS = {"w1": 1, "b1": 0, "w2": 0, "b2": 0}


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


def _live(stop: Any, epochs: Any, cfg: MLPConfig) -> Any:
    """Which members still train (NumPy or JAX arrays): not stopped by SentEval's rule, not past max_epoch."""
    return ~stop & (epochs <= cfg.max_epoch)


@functools.lru_cache(maxsize=16)
def _mlp_programs(cfg: MLPConfig, nclasses: int, dim: int, train_max: int, val_max: int, members: int
                  ) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """Three jitted programs of SentEval's MLP fit, vmapped over blocks of `members` fits that share their training
    rows, validation rows and seed and differ in their penalty only (a search's penalties): one gather of each
    batch and one (batch x dim) by (dim x members*nhid) product serve the whole block. `start(seed (F,))` -> the
    blocks' states; `advance(X, y, train_idx (F, t), n_train (F,), val_idx (F, v), n_val (F,), l2 (F, members),
    seed (F,), state)` -> the states after at most SEGMENT_CHECKS more validation checks; `advance_one` is `advance`
    for one block, without the block axis. A state is (params,
    optimiser state, best params, then per member: best count of correct validation rows, non-improving checks, stopped,
    epochs run); a stopped member's best and counters no longer change."""
    n_batches = math.ceil(train_max / cfg.batch_size)
    p_, h_ = members, cfg.nhid

    def init(key: jax.Array) -> dict[str, jax.Array]:
        # torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
        k = jax.random.split(key, 4)
        a, b = 1 / math.sqrt(dim), 1 / math.sqrt(h_)
        one = {"w1": jax.random.uniform(k[0], (dim, h_), minval=-a, maxval=a),
               "b1": jax.random.uniform(k[1], (h_,), minval=-a, maxval=a),
               "w2": jax.random.uniform(k[2], (h_, nclasses), minval=-b, maxval=b),
               "b2": jax.random.uniform(k[3], (nclasses,), minval=-b, maxval=b)}
        # SentEval seeds every MLP with the same seed: every member starts alike.
        return {name: jnp.repeat(jnp.expand_dims(v, MEMBER_AXIS[name]), p_, MEMBER_AXIS[name])
                for name, v in one.items()}

    def forward(p, x):  # (rows, dim) -> (rows, members, classes)
        h = jax.nn.sigmoid(x @ p["w1"].reshape(dim, p_ * h_) + p["b1"].reshape(p_ * h_))
        return jnp.einsum("bph,phc->bpc", h.reshape(x.shape[0], p_, h_), p["w2"]) + p["b2"]

    def per_member(values, params):  # a (members,) array broadcast against each parameter
        return {k: values.reshape([p_ if i == MEMBER_AXIS[k] else 1 for i in range(v.ndim)])
                for k, v in params.items()}

    adam = optax.adam(cfg.lr)

    def start(seed):
        params = init(jax.random.fold_in(jax.random.key(seed), 0))
        zeros = jnp.zeros(p_, jnp.int32)
        return (params, adam.init(params), params, zeros - 1, zeros, zeros.astype(bool), zeros)

    def advance(x, y, train_idx, n_train, val_idx, n_val, l2, seed, state):
        key, decay = jax.random.key(seed), per_member(l2, state[0])

        def val_correct(p):  # counts, not fractions: a division may round differently in a wider program
            rows = (jnp.arange(val_max) < n_val)[:, None]
            pred = jnp.argmax(forward(p, x[val_idx]), -1)
            return jnp.sum((pred == y[val_idx][:, None]) & rows, 0, dtype=jnp.int32)

        def one_batch(carry, b):
            p, opt, order = carry
            pos = jax.lax.dynamic_slice(order, (b * cfg.batch_size,), (cfg.batch_size,))
            valid = b * cfg.batch_size + jnp.arange(cfg.batch_size) < n_train
            idx = train_idx[pos]

            def loss(p):  # each member's batch mean, summed: the members' gradients stay apart
                ce = optax.softmax_cross_entropy_with_integer_labels(forward(p, x[idx]), y[idx][:, None])
                return jnp.sum(jnp.where(valid[:, None], ce, 0.0)) / jnp.maximum(jnp.sum(valid), 1)

            # torch's Adam with weight_decay: the L2 term added to the gradient (not decoupled), on every parameter.
            grads = jax.tree.map(lambda g, w, l2: g + l2 * w, jax.grad(loss)(p), p, decay)
            updates, new_opt = adam.update(grads, opt, p)
            stepped = valid[0]  # a batch past the end of this block's data does nothing
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
            live = _live(stop, nepoch, cfg)
            # The pass keys depend on the epoch count only (the running members' count, the block's largest): a
            # fit continued over several calls, or in a block of any size, is the same fit.
            keys = jax.random.split(jax.random.fold_in(key, jnp.max(nepoch) + 1), cfg.epoch_size)
            (p, opt), _ = jax.lax.scan(one_pass, (p, opt), keys)
            acc = val_correct(p)
            improved = live & (acc > best_acc)
            # SentEval's rule: the counter of non-improving checks is never reset; stop once it reached tenacity.
            new_stop = stop | (live & ~improved & (count >= cfg.tenacity))
            count = count + (live & ~improved).astype(jnp.int32)
            best = jax.tree.map(lambda b, w, m: jnp.where(m, w, b), best, p, per_member(improved, p))
            return (p, opt, best, jnp.where(improved, acc, best_acc), count, new_stop,
                    nepoch + cfg.epoch_size * live.astype(jnp.int32)), checks + 1

        def running(carry):
            (*_, stop, nepoch), checks = carry
            return jnp.any(_live(stop, nepoch, cfg)) & (checks < SEGMENT_CHECKS)

        return jax.lax.while_loop(running, epoch, (state, jnp.int32(0)))[0]

    # One block alone runs unbatched: XLA's CPU backend runs a vmapped batch of small products about 2.5x slower
    # than the same products one block at a time (README, transfer timings).
    return (jax.jit(jax.vmap(start)), jax.jit(jax.vmap(advance, in_axes=(None, None, 0, 0, 0, 0, 0, 0, 0))),
            jax.jit(advance))


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


def _blocks(fits: Fits, rows: list[int]) -> list[list[int]]:
    """The fits that share training rows, validation rows and seed (a search's penalties), in order of appearance."""
    groups: dict[tuple[int, bytes, bytes], list[int]] = {}
    for i in rows:
        key = (fits.seed[i], fits.train[i].astype(np.int64).tobytes(), fits.val[i].astype(np.int64).tobytes())
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _threads() -> int:
    """How many groups of MLP blocks run at once: one per core on the CPU (each XLA call of small products keeps
    one core busy), one on an accelerator."""
    if jax.default_backend() != "cpu":
        return 1
    # macOS has no sched_getaffinity; more than 8 is not measured.
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _train_mlp(x: jax.Array, y: jax.Array, nclasses: int, fits: Fits, padded: list[int], real: int,
               sizes: tuple[int, int], cfg: MLPConfig, stats: Stats, tol: float, max_iter: int
               ) -> tuple[Any, np.ndarray]:
    """One chunk of SentEval MLP fits (the first `real` are not padding) -> the best params and best validation
    accuracy of each. Fits that differ in their penalty only train as one block (one wider network). On the CPU
    each block runs alone (unbatched calls of SEGMENT_CHECKS validation checks, until its members stopped), the
    blocks spread over one thread per core; on an accelerator the blocks are vmapped and advance SEGMENT_CHECKS
    validation checks at a time, only the blocks still running going on, packed into the narrowest of a few fixed
    widths. Either way a finished block costs nothing more (a vmapped loop would otherwise run every block until the
    slowest stops)."""
    d = x.shape[1]
    train_max, val_max = sizes
    blocks = _blocks(fits, padded[:real])
    members = max(len(b) for b in blocks)
    blocks_padded = [b + [b[-1]] * (members - len(b)) for b in blocks]  # repeats run, their results are dropped
    first = [b[0] for b in blocks]
    chunk = len(blocks)
    train_idx, n_train = _pad([fits.train[i] for i in first], train_max)
    val_idx, n_val = _pad([fits.val[i] for i in first], val_max)
    l2 = np.asarray([[fits.reg[i] for i in b] for b in blocks_padded], np.float32)
    seeds = np.asarray([fits.seed[i] for i in first], np.uint32)
    start, advance, advance_one = _mlp_programs(cfg, nclasses, d, train_max, val_max, members)
    state = jax.tree.map(np.array, start(jnp.asarray(seeds)))
    layer = d * cfg.nhid + cfg.nhid * nclasses
    per_epoch = train_max // cfg.batch_size * 6 * cfg.batch_size * layer + 2 * val_max * layer / cfg.epoch_size

    def run(group: np.ndarray) -> float:
        """Advances a group of blocks until all their members stopped -> the FLOPs executed."""
        active, executed = group, 0.0
        args = (train_idx, n_train, val_idx, n_val, l2, seeds, state)  # per block; `state` is updated in place
        while active.size:
            width = group.size
            while width // 2 >= active.size and width > max(1, group.size // MLP_WIDTHS):
                width //= 2  # a few widths only: each is one compile
            rows = np.concatenate([active, np.full(width - active.size, active[-1])])
            before = state[6][active].max(1)
            if width == 1:  # one block: the unbatched program, its block axis put back
                one = jax.tree.map(lambda a, b=rows[0]: a[b], args)
                new = jax.tree.map(lambda a: np.asarray(a)[None], advance_one(x, y, *one))
            else:
                new = advance(x, y, *jax.tree.map(lambda a, r=rows: a[r], args))
                new = jax.tree.map(lambda a, n=active.size: np.asarray(a)[:n], new)
            for leaf, value in zip(jax.tree.leaves(state), jax.tree.leaves(new), strict=True):
                leaf[active] = value  # groups hold disjoint blocks: threads never write the same row
            executed += float(np.max(state[6][active].max(1) - before)) * width * members * per_epoch
            active = active[np.any(_live(state[5][active], state[6][active], cfg), axis=1)]
        return executed

    # On the CPU each block is a group of its own, the groups spread over one thread per core; on an accelerator
    # the blocks are one vmapped group, narrower as blocks finish.
    threads = _threads()
    groups = np.arange(chunk)[:, None] if threads > 1 else [np.arange(chunk)]
    with ThreadPoolExecutor(threads) as pool:
        stats.executed_flops += sum(pool.map(run, groups))
    # Back to one row per fit, in the order of `padded` (its padding rows repeat the last real fit).
    where = {i: (b, m) for b, block in enumerate(blocks) for m, i in enumerate(block)}
    blk, mem = np.array([where[i][0] for i in padded]), np.array([where[i][1] for i in padded])
    params = {k: np.moveaxis(v, MEMBER_AXIS[k] + 1, 1)[blk, mem] for k, v in state[2].items()}  # after the block axis
    epochs = state[6][blk, mem].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # no validation rows: NaN
        best = state[3][blk, mem] / n_val[blk].astype(np.float64)
    # Counts in float64: FLOP counts overflow int32 (a pass over SST2's 67k sentences already does).
    rows_train, rows_val = n_train[blk].astype(np.float64), n_val[blk].astype(np.float64)
    stats.iterations = max(stats.iterations, int(epochs.max()))  # passes over the data
    per_pass = np.ceil(rows_train / cfg.batch_size) * 6 * cfg.batch_size * layer
    checks = epochs / cfg.epoch_size
    stats.flops += float(np.sum((epochs * per_pass + checks * 2 * rows_val * layer)[:real]))
    return params, best


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
