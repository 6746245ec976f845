"""SentEval's transfer tasks (the paper's Table 4): readers, SentEval's protocols, and every classifier fit of a
task (folds x penalties x seeds) trained together, vmapped inside one jitted program.

Protocols, as in SentEval's `tools/validation.py` (the public facebookresearch/SentEval):
- MR, CR, SUBJ, MPQA (`InnerKFoldClassifier`): stratified k-fold (shuffled, random_state 1111 for the outer and
  the inner split, whatever the seed); in each outer training fold the penalty is chosen by an inner k-fold; the
  score is the mean test accuracy over the outer folds.
- SST2 (`SplitClassifier`): the penalty chosen on dev, accuracy on test.
- TREC, MRPC (`KFoldClassifier`): the penalty by k-fold on train (random_state = the seed), one fit on all of
  train, accuracy on test (and F1 for MRPC, whose pair is `[|u - v|, u * v]`).
Classifiers: `logreg`, L2-regularised logistic regression in scikit-learn's convention (C; binomial for two
classes, multinomial for more, intercept not penalised) solved to convergence by Newton's method with
conjugate gradients; and `mlp`, SentEval's PyTorch MLP (sigmoid hidden layer, Adam, L2 as weight decay, early
stopping on validation accuracy). The SentEval quirks that are kept are listed in the README.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgcl_jax.tasks import TRANSFER_TASKS

log = logging.getLogger(__name__)
TASKS = TRANSFER_TASKS
INNER_SEED = 1111  # InnerKFoldClassifier hard-codes it for both splits
LOGREG_GRID = {"inner_kfold": tuple(2.0**t for t in range(-2, 4)), "split": tuple(2.0**t for t in range(-2, 4)),
               "kfold": tuple(2.0**t for t in range(-1, 6))}
MLP_GRID = tuple(10.0**t for t in range(-5, -1))


class MissingData(FileNotFoundError):
    """A transfer task's files are not in the data folder."""


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """SentEval's MLP with the paper's Table 9 settings."""

    nhid: int = 50
    lr: float = 1e-3
    batch_size: int = 64
    tenacity: int = 5
    epoch_size: int = 4
    max_epoch: int = 200


# ------------------------------------------------------------------------------------------ readers


@dataclasses.dataclass
class TransferTask:
    """A task's examples per split (texts, or text pairs for MRPC) with integer labels, in SentEval's order."""

    name: str
    protocol: str  # inner_kfold | split | kfold
    nclasses: int
    splits: dict[str, tuple[list[Any], np.ndarray]]

    @property
    def sentences(self) -> list[str]:
        """Every distinct sentence of every split."""
        out: set[str] = set()
        for texts, _ in self.splits.values():
            for t in texts:
                out.update(t if isinstance(t, tuple) else (t,))
        return sorted(out)

    def fingerprint(self) -> str:
        """A hash of the examples and labels, for the feature cache."""
        h = hashlib.sha256(self.name.encode())
        for split, (texts, labels) in sorted(self.splits.items()):
            h.update(split.encode() + json.dumps(texts).encode() + labels.tobytes())
        return h.hexdigest()[:16]


def default_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The explicit folder, else $SGCL_SENTEVAL_DIR."""
    folder = explicit or os.environ.get("SGCL_SENTEVAL_DIR")
    if not folder:
        raise MissingData("no SentEval data folder: pass --senteval-dir (eval.senteval_dir) or set $SGCL_SENTEVAL_DIR")
    return Path(folder).expanduser()


def _lines(path: Path, encoding: str) -> list[str]:
    if not path.exists():
        raise MissingData(f"{path}: not found")
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not {encoding} text ({e.reason})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.splitlines()


def _sorted(examples: list[tuple[Any, ...]], key: Callable[[tuple[Any, ...]], Any]) -> list[tuple[Any, ...]]:
    # SentEval sorts each split (by token count, then label) before encoding, and the k-fold splits that order.
    return sorted(examples, key=key)


def _binary(name: str, folder: Path, pos: str, neg: str) -> TransferTask:
    # SentEval reads these as Latin-1; the files here are ASCII, so UTF-8 gives the same text.
    examples = [(line.split(), 1) for line in _lines(folder / pos, "utf-8")]
    examples += [(line.split(), 0) for line in _lines(folder / neg, "utf-8")]
    examples = _sorted(examples, key=lambda z: (len(z[0]), z[1]))
    return TransferTask(name, "inner_kfold", 2, {"all": ([" ".join(t) for t, _ in examples],
                                                         np.array([y for _, y in examples], np.int32))})


def _sst2(folder: Path) -> TransferTask:
    splits = {}
    for split, fname in (("train", "sentiment-train"), ("dev", "sentiment-dev"), ("test", "sentiment-test")):
        path = folder / "SST" / "binary" / fname
        examples = []
        for i, line in enumerate(_lines(path, "utf-8"), start=1):
            cols = line.strip().split("\t")
            if len(cols) != 2 or cols[1] not in ("0", "1"):
                raise ValueError(f"{path}:{i}: expected 'sentence<TAB>0|1', got {line[:80]!r}")
            examples.append((cols[0].split(), int(cols[1])))
        examples = _sorted(examples, key=lambda z: (len(z[0]), z[1]))
        splits[split] = ([" ".join(t) for t, _ in examples], np.array([y for _, y in examples], np.int32))
    return TransferTask("SST2", "split", 2, splits)


TREC_CLASSES = {"ABBR": 0, "DESC": 1, "ENTY": 2, "HUM": 3, "LOC": 4, "NUM": 5}


def _trec(folder: Path) -> TransferTask:
    splits = {}
    for split, fname in (("train", "train_5500.label"), ("test", "TREC_10.label")):
        path = folder / "TREC" / fname
        examples = []
        for i, line in enumerate(_lines(path, "latin-1"), start=1):  # train_5500.label holds Latin-1 bytes
            target, _, rest = line.strip().partition(":")
            words = rest.split(" ", 1)
            if target not in TREC_CLASSES or len(words) != 2:
                raise ValueError(f"{path}:{i}: expected 'COARSE:fine question' with COARSE in "
                                 f"{sorted(TREC_CLASSES)}, got {line[:80]!r}")
            examples.append((words[1].split(), TREC_CLASSES[target]))  # the coarse label; the fine one dropped
        examples = _sorted(examples, key=lambda z: (len(z[0]), z[1]))
        splits[split] = ([" ".join(t) for t, _ in examples], np.array([y for _, y in examples], np.int32))
    return TransferTask("TREC", "kfold", 6, splits)


def _mrpc(folder: Path) -> TransferTask:
    splits = {}
    for split in ("train", "test"):
        path = folder / "MRPC" / f"msr_paraphrase_{split}.txt"
        lines = _lines(path, "utf-8")  # a UTF-8 BOM, then a header line
        if not lines or not lines[0].startswith("Quality"):
            raise ValueError(f"{path}:1: expected the header 'Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String'")
        examples = []
        for i, line in enumerate(lines[1:], start=2):
            cols = line.strip().split("\t")
            if len(cols) < 5 or cols[0] not in ("0", "1"):
                raise ValueError(f"{path}:{i}: expected 'label<TAB>id<TAB>id<TAB>sentence<TAB>sentence'")
            examples.append((cols[3].split(), cols[4].split(), int(cols[0])))
        examples = _sorted(examples, key=lambda z: (len(z[0]), len(z[1]), z[2]))
        splits[split] = ([(" ".join(a), " ".join(b)) for a, b, _ in examples],
                         np.array([y for _, _, y in examples], np.int32))
    return TransferTask("MRPC", "kfold", 2, splits)


def load_task(name: str, data_dir: str | os.PathLike | None = None) -> TransferTask:
    """Reads one of the seven tasks from a folder in SentEval's `data/downstream` layout."""
    folder = default_dir(data_dir)
    readers = {"MR": lambda: _binary("MR", folder / "MR", "rt-polarity.pos", "rt-polarity.neg"),
               "CR": lambda: _binary("CR", folder / "CR", "custrev.pos", "custrev.neg"),
               "SUBJ": lambda: _binary("SUBJ", folder / "SUBJ", "subj.objective", "subj.subjective"),
               "MPQA": lambda: _binary("MPQA", folder / "MPQA", "mpqa.pos", "mpqa.neg"),
               "SST2": lambda: _sst2(folder), "TREC": lambda: _trec(folder), "MRPC": lambda: _mrpc(folder)}
    if name not in readers:
        raise ValueError(f"unknown transfer task {name!r}; choose from {', '.join(TASKS)}")
    return readers[name]()


# ------------------------------------------------------------------------------------------ the fits


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


def run_fits(classifier: str, x: np.ndarray, y: np.ndarray, nclasses: int, fits: Fits, cfg: MLPConfig = MLPConfig(),
             chunk: int = 512, tol: float = 1e-12, max_iter: int = 100) -> tuple[list[Any], np.ndarray, Stats]:
    """Trains every fit, `chunk` at a time in one vmapped program -> (params per fit, validation accuracy per fit
    (NaN where a fit has no validation rows), stats). Chunks are padded to a fixed shape: one compile per task."""
    if classifier not in ("logreg", "mlp"):
        raise ValueError(f"classifier {classifier!r}: choose 'logreg' or 'mlp'")
    t0 = time.perf_counter()
    xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
    n, d = x.shape
    chunk = min(chunk, len(fits))
    params: list[Any] = []
    val_acc, stats = np.full(len(fits), np.nan), Stats(fits=len(fits))
    size = lambda rows: max(cfg.batch_size, -(-max(len(r) for r in rows) // cfg.batch_size) * cfg.batch_size)  # noqa: E731
    train_max, val_max = size(fits.train), size([v if len(v) else np.zeros(1) for v in fits.val])
    for start in range(0, len(fits), chunk):
        part = list(range(start, min(start + chunk, len(fits))))
        padded = part + [part[-1]] * (chunk - len(part))  # repeat the last fit: a fixed shape, results dropped
        regs = jnp.asarray([fits.reg[i] for i in padded], jnp.float32)
        if classifier == "logreg":
            weights = np.zeros((n, chunk), np.float32)
            for col, i in enumerate(padded):
                weights[fits.train[i], col] = 1.0
            w, products, iters = _logreg_program(nclasses, max_iter, tol)(xj, yj, jnp.asarray(weights), regs)
            w, products = np.asarray(w), np.asarray(products).astype(np.float64)
            stats.iterations = max(stats.iterations, int(np.max(iters)))
            product = 2 * n * (d + 1) * (1 if nclasses == 2 else nclasses)  # the data times one fit's parameters
            stats.flops += float(products[: len(part)].sum()) * product
            stats.executed_flops += float(products.max()) * chunk * product  # all columns run to the slowest
            out = {"w": np.moveaxis(w[:d], -1, 0), "b": np.moveaxis(w[d], -1, 0)}  # (F, d, k), (F, k)
        else:
            train_idx, n_train = _pad([fits.train[i] for i in padded], train_max)
            val_idx, n_val = _pad([fits.val[i] for i in padded], val_max)
            program = _mlp_program(cfg, nclasses, d, train_max, val_max)
            out, best, epochs = program(xj, yj, train_idx, n_train, val_idx, n_val, regs,
                                        jnp.asarray([fits.seed[i] for i in padded], jnp.uint32))
            # Counts in float64: FLOP counts overflow int32 (a pass over SST2's 67k sentences already does).
            epochs, best = np.asarray(epochs).astype(np.float64), np.asarray(best)
            rows_train, rows_val = n_train.astype(np.float64), n_val.astype(np.float64)
            stats.iterations = max(stats.iterations, int(epochs.max()))  # passes over the data
            layer = d * cfg.nhid + cfg.nhid * nclasses
            per_pass = np.ceil(rows_train / cfg.batch_size) * 6 * cfg.batch_size * layer
            checks = epochs / cfg.epoch_size
            stats.flops += float(np.sum((epochs * per_pass + checks * 2 * rows_val * layer)[: len(part)]))
            stats.executed_flops += float(epochs.max() * chunk * (train_max // cfg.batch_size * 6 * cfg.batch_size
                                                                  * layer + 2 * val_max * layer / cfg.epoch_size))
            val_acc[part] = best[: len(part)]
        chunk_params = [jax.tree.map(lambda a, r=row: np.asarray(a[r]), out) for row in range(len(part))]
        if classifier == "logreg":
            for row, i in enumerate(part):
                if len(fits.val[i]):
                    val_acc[i] = accuracy("logreg", chunk_params[row], x, y, fits.val[i])
        params += chunk_params
    stats.seconds = time.perf_counter() - t0
    return params, val_acc, stats


def predict(classifier: str, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Class predictions of one fitted classifier."""
    forward = _logreg_forward if classifier == "logreg" else _mlp_forward
    return np.asarray(jnp.argmax(forward(jax.tree.map(jnp.asarray, params), jnp.asarray(x)), -1))


def accuracy(classifier: str, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
             rows: np.ndarray) -> float:
    """Accuracy of one fitted classifier on the given rows."""
    return float(np.mean(predict(classifier, params, x[rows]) == y[rows]))


# ------------------------------------------------------------------------------------------ protocols


def _stratified(k: int, seed: int, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def _holdout(rows: np.ndarray, seed: int, fraction: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """SentEval's validation_split: np.random.seed(seed), then one permutation; the first 5% validate."""
    perm = np.random.RandomState(seed).permutation(len(rows))
    cut = int(fraction * len(rows))
    return rows[perm[cut:]], rows[perm[:cut]]


def _pick(scores: list[float], regs: Sequence[float]) -> tuple[float, float]:
    """SentEval's choice: the first penalty with the highest (rounded) score."""
    best = int(np.argmax(scores))
    return regs[best], scores[best]


def cross_validate(task: TransferTask, features: dict[str, np.ndarray], classifier: str, kfold: int,
                   seeds: Sequence[int], cfg: MLPConfig = MLPConfig()) -> tuple[dict[str, Any], Stats]:
    """SentEval's protocol for the task, for every classifier seed -> per-seed dev/test scores and their mean."""
    regs = MLP_GRID if classifier == "mlp" else LOGREG_GRID[task.protocol]
    stats = Stats()
    if task.protocol == "inner_kfold":
        x, y = features["all"], task.splits["all"][1]
        rounds = _inner_kfold(classifier, x, y, task.nclasses, kfold, seeds, regs, cfg, stats)
    elif task.protocol == "split":
        rounds = _split(classifier, features, task, seeds, regs, cfg, stats)
    else:
        rounds = _kfold(classifier, features, task, kfold, seeds, regs, cfg, stats)
    test = [r["test"] for r in rounds]
    out = {"score": float(np.mean(test)), "std": float(np.std(test, ddof=1)) if len(test) > 1 else 0.0,
           "metric": "accuracy", "dev": float(np.mean([r["dev"] for r in rounds])),
           "per_seed": {str(s): r["test"] for s, r in zip(seeds, rounds, strict=True)},
           "penalties": {str(s): r["penalties"] for s, r in zip(seeds, rounds, strict=True)},
           "n": int(sum(len(v[1]) for v in task.splits.values())), "fits": stats.fits}
    if "f1" in rounds[0]:
        out["f1"] = float(np.mean([r["f1"] for r in rounds]))
    return out, stats


def inner_search(y: np.ndarray, kfold: int, seeds: Sequence[int], regs: Sequence[float]
                 ) -> tuple[list[tuple[np.ndarray, np.ndarray]], Fits, dict[tuple[int, ...], int]]:
    """InnerKFoldClassifier's outer folds and its penalty search: a fit per (seed, outer fold, penalty, inner fold)."""
    outer = _stratified(kfold, INNER_SEED, y)
    search, index = Fits([], [], [], []), {}
    for o, (tr, _) in enumerate(outer):
        inner = [(tr[a], tr[b]) for a, b in _stratified(kfold, INNER_SEED, y[tr])]
        for s in seeds:
            for r, reg in enumerate(regs):
                for i, (a, b) in enumerate(inner):
                    index[s, o, r, i] = search.add(a, b, reg, s)
    return outer, search, index


def _inner_kfold(classifier, x, y, nclasses, kfold, seeds, regs, cfg, stats) -> list[dict[str, Any]]:
    outer, search, index = inner_search(y, kfold, seeds, regs)
    _, val, st = run_fits(classifier, x, y, nclasses, search, cfg)
    stats.add(st)
    final, chosen = Fits([], [], [], []), {}
    for s in seeds:
        for o, (tr, _) in enumerate(outer):
            scores = [round(100 * float(np.mean([val[index[s, o, r, i]] for i in range(kfold)])), 2)
                      for r in range(len(regs))]
            reg, dev = _pick(scores, regs)
            train, hold = _holdout(tr, s) if classifier == "mlp" else (tr, np.zeros(0, np.int64))
            chosen[s, o] = (final.add(train, hold, reg, s), dev, reg)
    params, _, st = run_fits(classifier, x, y, nclasses, final, cfg)
    stats.add(st)
    out = []
    for s in seeds:
        test = [round(100 * accuracy(classifier, params[chosen[s, o][0]], x, y, te), 2)
                for o, (_, te) in enumerate(outer)]
        out.append({"test": float(np.mean(test)), "dev": float(np.mean([chosen[s, o][1] for o in range(kfold)])),
                    "penalties": [chosen[s, o][2] for o in range(kfold)]})
    return out


def _stack(features: dict[str, np.ndarray], task: TransferTask, names: Sequence[str]
           ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """One feature matrix over several splits, and each split's rows in it."""
    x = np.concatenate([features[n] for n in names])
    y = np.concatenate([task.splits[n][1] for n in names])
    rows, start = {}, 0
    for n in names:
        rows[n] = np.arange(start, start + len(features[n]))
        start += len(features[n])
    return x, y, rows


def _split(classifier, features, task, seeds, regs, cfg, stats) -> list[dict[str, Any]]:
    x, y, rows = _stack(features, task, ("train", "dev", "test"))
    fits = Fits([], [], [], [])
    index = {(s, r): fits.add(rows["train"], rows["dev"], reg, s) for s in seeds for r, reg in enumerate(regs)}
    params, _, st = run_fits(classifier, x, y, task.nclasses, fits, cfg)
    stats.add(st)
    out = []
    for s in seeds:
        scores = [round(100 * accuracy(classifier, params[index[s, r]], x, y, rows["dev"]), 2)
                  for r in range(len(regs))]
        reg, dev = _pick(scores, regs)
        # SentEval refits with the chosen penalty and the same seed: the same model as the search's.
        best = params[index[s, regs.index(reg)]]
        out.append({"test": round(100 * accuracy(classifier, best, x, y, rows["test"]), 2), "dev": dev,
                    "penalties": reg})
    return out


def _kfold(classifier, features, task, kfold, seeds, regs, cfg, stats) -> list[dict[str, Any]]:
    from sklearn.metrics import f1_score

    x, y, rows = _stack(features, task, ("train", "test"))
    train = rows["train"]
    search, index = Fits([], [], [], []), {}
    for s in seeds:
        for f, (a, b) in enumerate(_stratified(kfold, s, y[train])):
            for r, reg in enumerate(regs):
                index[s, r, f] = search.add(train[a], train[b], reg, s)
    _, val, st = run_fits(classifier, x, y, task.nclasses, search, cfg)
    stats.add(st)
    final, chosen = Fits([], [], [], []), {}
    for s in seeds:
        scores = [round(100 * float(np.mean([val[index[s, r, f]] for f in range(kfold)])), 2)
                  for r in range(len(regs))]
        reg, dev = _pick(scores, regs)
        fit_rows, hold = _holdout(train, s) if classifier == "mlp" else (train, np.zeros(0, np.int64))
        chosen[s] = (final.add(fit_rows, hold, reg, s), dev, reg)
    params, _, st = run_fits(classifier, x, y, task.nclasses, final, cfg)
    stats.add(st)
    out = []
    for s in seeds:
        best = params[chosen[s][0]]
        pred = predict(classifier, best, x[rows["test"]])
        result = {"test": round(100 * float(np.mean(pred == y[rows["test"]])), 2), "dev": chosen[s][1],
                  "penalties": chosen[s][2]}
        if task.nclasses == 2:
            result["f1"] = round(100 * float(f1_score(y[rows["test"]], pred)), 2)
        out.append(result)
    return out


# ------------------------------------------------------------------------------------------ features and CLI glue


def task_features(task: TransferTask, embed: Callable[[list[str]], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Each split's feature matrix from a sentence -> vector lookup; MRPC pairs as [|u - v|, u * v]."""
    vectors = embed(task.sentences)
    out = {}
    for split, (texts, _) in task.splits.items():
        if texts and isinstance(texts[0], tuple):
            u = np.stack([vectors[a] for a, _ in texts])
            v = np.stack([vectors[b] for _, b in texts])
            out[split] = np.concatenate([np.abs(u - v), u * v], axis=1)
        else:
            out[split] = np.stack([vectors[t] for t in texts])
    return out


def protocol(classifier: str, kfold: int, seeds: Sequence[int]) -> dict[str, Any]:
    """The transfer protocol, saved next to every transfer score."""
    if classifier == "mlp":
        c = MLPConfig()
        model = (f"SentEval MLP (nhid {c.nhid}, sigmoid, Adam lr {c.lr}, batch {c.batch_size}, tenacity "
                 f"{c.tenacity}, epoch size {c.epoch_size}, max epoch {c.max_epoch}; L2 in {list(MLP_GRID)})")
    else:
        model = ("logistic regression, scikit-learn's C convention, Newton-CG to a decrement of 1e-12; C in 2^-2..2^3 "
                 "(MR, CR, SUBJ, MPQA, SST2), 2^-1..2^5 (TREC, MRPC)")
    return {"transfer_classifier": model, "transfer_kfold": kfold, "transfer_seeds": list(seeds),
            "transfer_protocol": "SentEval: inner k-fold (MR, CR, SUBJ, MPQA; folds seeded 1111), dev split (SST2), "
                                 "k-fold then test (TREC, MRPC); accuracy x100 (MRPC also F1)",
            "transfer_text": "tokens as distributed, joined by single spaces"}


def evaluate_tasks(encoder: Any, names: Sequence[str], data_dir: str | os.PathLike | None, classifier: str,
                   kfold: int, seeds: Sequence[int], batch_size: int = 64, cache_dir: str | os.PathLike | None = None,
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Scores an encoder on transfer tasks: every distinct sentence encoded once (cached), then each protocol."""
    loaded, missing = {}, {}
    for name in names:
        try:
            loaded[name] = load_task(name, data_dir)
        except MissingData as e:
            missing[name] = str(e)
    if not loaded:
        return {}, missing
    vectors = _encode_cached(encoder, loaded, batch_size, cache_dir)
    results = {}
    for name, task in loaded.items():
        feats = task_features(task, lambda sents: vectors)
        results[name], stats = cross_validate(task, feats, classifier, kfold, seeds)
        results[name]["classifier_seconds"] = round(stats.seconds, 2)
        results[name]["classifier_gflops"] = round(stats.flops / 1e9, 1)
        log.info("%s: %.2f (%s, %d fits in %.1f s)", name, results[name]["score"], classifier, stats.fits,
                 stats.seconds)
    return results, missing


def _digest(sentences: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sentences).encode()).hexdigest()


def _encode_cached(encoder: Any, loaded: dict[str, TransferTask], batch_size: int,
                   cache_dir: str | os.PathLike | None) -> dict[str, np.ndarray]:
    """sentence -> vector for every sentence of the tasks, from `<cache_dir>/features/<key>.npz` when present."""
    sentences = sorted({s for task in loaded.values() for s in task.sentences})
    path = None
    if cache_dir is not None:
        from sgcl_jax.pretrained import params_fingerprint

        key = hashlib.sha256(json.dumps([params_fingerprint(encoder.config, encoder.params), encoder.max_length,
                                         encoder.dtype, encoder.pooling, str(encoder.layer),
                                         sorted(t.fingerprint() for t in loaded.values())]).encode()).hexdigest()[:16]
        path = Path(cache_dir) / "features" / f"transfer-{key}.npz"
        if path.exists():
            cached = np.load(path, allow_pickle=False)
            # A cache written before the digest was stored holds "sentences" instead: a miss, encoded again.
            if "sentences_sha256" in cached.files and str(cached["sentences_sha256"]) == _digest(sentences):
                log.info("transfer features from %s", path)
                return dict(zip(sentences, cached["vectors"], strict=True))
    t0 = time.perf_counter()
    vectors = encoder.encode(sentences, batch_size=batch_size)
    log.info("encoded %d transfer sentences in %.1f s", len(sentences), time.perf_counter() - t0)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        # The sentences' digest, not the sentences: NumPy stores strings padded to the longest (x3 the vectors).
        np.savez(tmp, sentences_sha256=np.array(_digest(sentences)), vectors=vectors)
        os.replace(tmp, path)
    return dict(zip(sentences, vectors, strict=True))
