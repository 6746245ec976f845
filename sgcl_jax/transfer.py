"""SentEval's transfer protocols (the paper's Table 4) on an encoder's features, as SentEval's
`tools/validation.py` (the public facebookresearch/SentEval) runs them, with every fit of a task batched
(`classifiers.py`):
- MR, CR, SUBJ, MPQA (`InnerKFoldClassifier`): stratified k-fold (shuffled, random_state 1111 for the outer and
  the inner split, whatever the seed); in each outer training fold the penalty is chosen by an inner k-fold; the
  score is the mean test accuracy over the outer folds.
- SST2 (`SplitClassifier`): the penalty chosen on dev, accuracy on test.
- TREC, MRPC (`KFoldClassifier`): the penalty by k-fold on train (random_state = the seed), one fit on all of
  train, accuracy on test (and F1 for MRPC, whose pair is `[|u - v|, u * v]`).
The SentEval quirks that are kept are listed in the README.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sgcl_jax import classifiers, senteval
from sgcl_jax.classifiers import Classifier, Fits, MLPConfig, Stats, accuracy, predict, run_fits
from sgcl_jax.tasks import MissingData

log = logging.getLogger(__name__)
INNER_SEED = 1111  # InnerKFoldClassifier hard-codes it for both splits
Rounds = list[dict[str, Any]]  # one {"test", "dev", "penalties"(, "f1")} per classifier seed


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


def _stack(features: dict[str, np.ndarray], task: senteval.TransferTask, names: Sequence[str]
           ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """One feature matrix over several splits, and each split's rows in it."""
    x = np.concatenate([features[n] for n in names])
    y = np.concatenate([task.splits[n][1] for n in names])
    rows, start = {}, 0
    for n in names:
        rows[n] = np.arange(start, start + len(features[n]))
        start += len(features[n])
    return x, y, rows


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


@dataclasses.dataclass
class Protocol:
    """One task's SentEval protocol with one classifier: the search over penalties, the final fits, the scores;
    what the fits cost accumulates in `stats`."""

    clf: Classifier
    kfold: int
    seeds: Sequence[int]
    regs: Sequence[float]
    cfg: MLPConfig = MLPConfig()
    stats: Stats = dataclasses.field(default_factory=Stats)

    def fit(self, x: np.ndarray, y: np.ndarray, nclasses: int, fits: Fits) -> tuple[list[Any], np.ndarray]:
        """Trains a batch of fits -> (params per fit, validation accuracy per fit)."""
        params, val, st = run_fits(self.clf, x, y, nclasses, fits, self.cfg)
        self.stats.add(st)
        return params, val

    def final_rows(self, rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The final fit's training rows and its early-stopping rows (none unless the classifier holds out)."""
        return _holdout(rows, seed) if self.clf.holdout else (rows, np.zeros(0, np.int64))

    def inner_kfold(self, x: np.ndarray, y: np.ndarray, nclasses: int) -> Rounds:
        """MR, CR, SUBJ, MPQA: the mean test accuracy over outer folds, each fold's penalty by inner k-fold."""
        kfold, regs = self.kfold, self.regs
        outer, search, index = inner_search(y, kfold, self.seeds, regs)
        _, val = self.fit(x, y, nclasses, search)
        final, chosen = Fits([], [], [], []), {}
        for s in self.seeds:
            for o, (tr, _) in enumerate(outer):
                scores = [round(100 * float(np.mean([val[index[s, o, r, i]] for i in range(kfold)])), 2)
                          for r in range(len(regs))]
                reg, dev = _pick(scores, regs)
                chosen[s, o] = (final.add(*self.final_rows(tr, s), reg, s), dev, reg)
        params, _ = self.fit(x, y, nclasses, final)
        out = []
        for s in self.seeds:
            test = [round(100 * accuracy(self.clf, params[chosen[s, o][0]], x, y, te), 2)
                    for o, (_, te) in enumerate(outer)]
            out.append({"test": float(np.mean(test)),
                        "dev": float(np.mean([chosen[s, o][1] for o in range(kfold)])),
                        "penalties": [chosen[s, o][2] for o in range(kfold)]})
        return out

    def split(self, features: dict[str, np.ndarray], task: senteval.TransferTask) -> Rounds:
        """SST2: the penalty chosen on dev, accuracy on test."""
        regs = self.regs
        x, y, rows = _stack(features, task, ("train", "dev", "test"))
        fits = Fits([], [], [], [])
        index = {(s, r): fits.add(rows["train"], rows["dev"], reg, s) for s in self.seeds for r, reg in enumerate(regs)}
        params, _ = self.fit(x, y, task.nclasses, fits)
        out = []
        for s in self.seeds:
            scores = [round(100 * accuracy(self.clf, params[index[s, r]], x, y, rows["dev"]), 2)
                      for r in range(len(regs))]
            reg, dev = _pick(scores, regs)
            # SentEval refits with the chosen penalty and the same seed: the same model as the search's.
            best = params[index[s, list(regs).index(reg)]]
            out.append({"test": round(100 * accuracy(self.clf, best, x, y, rows["test"]), 2), "dev": dev,
                        "penalties": reg})
        return out

    def kfold_then_test(self, features: dict[str, np.ndarray], task: senteval.TransferTask) -> Rounds:
        """TREC, MRPC: the penalty by k-fold on train, one fit on all of train, accuracy (and F1) on test."""
        from sklearn.metrics import f1_score

        kfold, regs = self.kfold, self.regs
        x, y, rows = _stack(features, task, ("train", "test"))
        train = rows["train"]
        search, index = Fits([], [], [], []), {}
        for s in self.seeds:
            for f, (a, b) in enumerate(_stratified(kfold, s, y[train])):
                for r, reg in enumerate(regs):
                    index[s, r, f] = search.add(train[a], train[b], reg, s)
        _, val = self.fit(x, y, task.nclasses, search)
        final, chosen = Fits([], [], [], []), {}
        for s in self.seeds:
            scores = [round(100 * float(np.mean([val[index[s, r, f]] for f in range(kfold)])), 2)
                      for r in range(len(regs))]
            reg, dev = _pick(scores, regs)
            chosen[s] = (final.add(*self.final_rows(train, s), reg, s), dev, reg)
        params, _ = self.fit(x, y, task.nclasses, final)
        out = []
        for s in self.seeds:
            pred = predict(self.clf, params[chosen[s][0]], x[rows["test"]])
            result = {"test": round(100 * float(np.mean(pred == y[rows["test"]])), 2), "dev": chosen[s][1],
                      "penalties": chosen[s][2]}
            if task.nclasses == 2:
                result["f1"] = round(100 * float(f1_score(y[rows["test"]], pred)), 2)
            out.append(result)
        return out


def cross_validate(task: senteval.TransferTask, features: dict[str, np.ndarray], classifier: str | Classifier,
                   kfold: int, seeds: Sequence[int], cfg: MLPConfig | None = None) -> tuple[dict[str, Any], Stats]:
    """SentEval's protocol for the task, for every classifier seed -> per-seed dev/test scores and their mean."""
    clf = classifiers.get(classifier)
    run = Protocol(clf, kfold, seeds, clf.grids[task.protocol], cfg or MLPConfig())
    if task.protocol == "inner_kfold":
        rounds = run.inner_kfold(features["all"], task.splits["all"][1], task.nclasses)
    elif task.protocol == "split":
        rounds = run.split(features, task)
    else:
        rounds = run.kfold_then_test(features, task)
    test = [r["test"] for r in rounds]
    out = {"score": float(np.mean(test)), "std": float(np.std(test, ddof=1)) if len(test) > 1 else 0.0,
           "metric": "accuracy", "dev": float(np.mean([r["dev"] for r in rounds])),
           "per_seed": {str(s): r["test"] for s, r in zip(seeds, rounds, strict=True)},
           "penalties": {str(s): r["penalties"] for s, r in zip(seeds, rounds, strict=True)},
           "n": int(sum(len(v[1]) for v in task.splits.values())), "fits": run.stats.fits}
    if "f1" in rounds[0]:
        out["f1"] = float(np.mean([r["f1"] for r in rounds]))
    return out, run.stats


# ------------------------------------------------------------------------------------------ features


def task_features(task: senteval.TransferTask, embed: Callable[[list[str]], dict[str, np.ndarray]]
                  ) -> dict[str, np.ndarray]:
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


def transfer_protocol(classifier: str, kfold: int, seeds: Sequence[int]) -> dict[str, Any]:
    """The transfer protocol, saved next to every transfer score."""
    return {"transfer_classifier": classifiers.get(classifier).description, "transfer_kfold": kfold,
            "transfer_seeds": list(seeds),
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
            loaded[name] = senteval.load_task(name, data_dir)
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


def _encode_cached(encoder: Any, loaded: dict[str, senteval.TransferTask], batch_size: int,
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
