"""Measurements behind the benchmarks: the SG-OPT train step in JAX and in a faithful PyTorch eager port, the
input pipeline, evaluation encoding, the transfer classifiers against scikit-learn, and the machine's matmul rate.
`python -m sgcl_jax.bench` runs them (see its --help)."""


from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from sgcl_jax.bert import BertConfig
from sgcl_jax.model import ModelSpec, step_flops
from sgcl_jax.pretrained import ARCHITECTURES
from sgcl_jax.tokenization import bucket_length, buckets_for

# Progress as it happens: on a leased accelerator a run cut off by its time limit still says where the time went.
log = logging.getLogger(__name__)

SHAPES = {
    "tiny": BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "minilm": BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": ARCHITECTURES["bert-base-uncased"],
    "bert-large": ARCHITECTURES["bert-large-uncased"],
}
# Dense peak TFLOP/s per device kind, by datasheet (bf16 / fp32 non-tensor-core).
PEAK_TFLOPS = {"H100": {"bfloat16": 989.0, "float32": 67.0}, "H200": {"bfloat16": 989.0, "float32": 67.0},
               "A100": {"bfloat16": 312.0, "float32": 19.5}, "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
               "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0}}


def peak_tflops(device: Any, dtype: str) -> float | None:
    """The datasheet peak of a device kind, when known."""
    kind = getattr(device, "device_kind", "")
    for name, peaks in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return peaks[dtype]
    return None


def sample_lengths(tokenizer: Any, n: int, max_length: int, seed: int = 0,
                   data_dir: str | None = None) -> np.ndarray:
    """Token lengths of STS-B training sentences (random sample), or 32 for every row when the data is absent."""
    from sgcl_jax import sts

    try:
        sentences = sts.stsb_sentences(data_dir)
    except (sts.MissingData, FileNotFoundError):
        return np.full(n, 32)
    pick = np.random.default_rng(seed).choice(len(sentences), n, replace=True)
    ids = tokenizer([sentences[i] for i in pick], max_length=max_length, truncation=True)["input_ids"]
    return np.array([len(x) for x in ids])


def make_batches(lengths: np.ndarray, batch: int, buckets: Sequence[int], vocab: int, seed: int = 0
                 ) -> list[dict[str, np.ndarray]]:
    """Random-token batches with the given true lengths, padded to the trainer's buckets."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(0, len(lengths) - batch + 1, batch):
        ls = lengths[s : s + batch]
        width = bucket_length(int(ls.max()), buckets)
        ids = rng.integers(1000, vocab, (batch, width)).astype(np.int32)
        mask = (np.arange(width)[None] < ls[:, None]).astype(np.int32)
        out.append({"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return out


def _peak_memory(device: Any) -> float | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30
    return None


def bench_jax(cfg: BertConfig, batches: list[dict[str, np.ndarray]], dtype: str, remat: bool, head_dim: int,
              warmup: int) -> dict[str, Any]:
    """Times the jitted train step; returns sentences/s, tokens/s, TFLOP/s, compile seconds, peak memory."""
    from sgcl_jax.bert import Bert
    from sgcl_jax.train_step import ObjectiveConfig, OptimConfig, create_train_state, jit_train_step

    ids = jax.numpy.zeros((1, 8), jax.numpy.int32)
    guide = jax.jit(lambda k: Bert(cfg).init(k, ids, jax.numpy.ones_like(ids))["params"])(jax.random.key(0))
    spec = ModelSpec(cfg, head_dim=head_dim, dtype=dtype, remat=remat)
    tx, step = jit_train_step(spec, ObjectiveConfig(), OptimConfig(), 1000)
    state = create_train_state(spec, guide, tx, 0)
    device = jax.devices()[0]
    batches = [jax.device_put(b, device) for b in batches]
    t0 = time.perf_counter()
    seen = set()
    for b in batches:  # compile every bucket shape once
        shape = b["input_ids"].shape
        if shape not in seen:
            seen.add(shape)
            t1 = time.perf_counter()
            state, m = step(state, guide, b)
            jax.block_until_ready(m)
            log.info("jax: step for batch shape %s compiled and run in %.1f s", shape, time.perf_counter() - t1)
    compile_s = time.perf_counter() - t0
    for b in batches[:warmup]:
        state, m = step(state, guide, b)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for b in batches:
        state, m = step(state, guide, b)
    jax.block_until_ready((state, m))
    seconds = time.perf_counter() - t0
    log.info("jax: %d timed steps in %.2f s", len(batches), seconds)
    return {"seconds": seconds, "compile_seconds": compile_s, "shapes": sorted(seen),
            "peak_memory_gib": _peak_memory(device), "loss": float(m["loss"])}


def bench_torch(cfg: BertConfig, batches: list[dict[str, np.ndarray]], dtype: str, head_dim: int,
                warmup: int) -> dict[str, Any]:
    """Times `torch_reference.ReleasedStep`, the port of the released step that the oracle test checks (bf16 through
    autocast), on the same batches and schedule as the JAX step."""
    import torch

    from sgcl_jax.torch_reference import ReleasedStep

    ref = ReleasedStep(cfg, head_dim=head_dim, total_steps=1000, dtype=dtype)
    on_device = [ref.to_device(b) for b in batches]
    for b in on_device[: max(warmup, 1)]:
        ref.step(b)
    ref.synchronize()
    log.info("torch: %d warm-up step(s) done; timing %d", max(warmup, 1), len(on_device))
    if ref.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for b in on_device:
        out = ref.step(b)
    ref.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if ref.device.type == "cuda" else None
    return {"seconds": seconds, "peak_memory_gib": peak, "loss": float(out["loss"]), "device": str(ref.device),
            "torch_threads": torch.get_num_threads()}


def bench_pipeline(batch: int, steps: int, max_length: int, tokenizer: str, data_dir: str | None) -> dict[str, Any]:
    """The host side of training alone, pinned to one core: draw, tokenise, bucket-pad, assemble the global batch.

    An accelerator step rate is only reachable if this keeps up with it (sentences/s here >= the step's).
    """
    import os

    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the fast tokenizer's thread pool: one core, one thread
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        return _time_pipeline(batch, steps, max_length, tokenizer, data_dir)
    finally:
        os.sched_setaffinity(0, cores)


def _time_pipeline(batch: int, steps: int, max_length: int, tokenizer: str, data_dir: str | None) -> dict[str, Any]:
    from sgcl_jax import data, sharding, sts
    from sgcl_jax.pretrained import load_tokenizer, resolve

    tok = load_tokenizer(resolve(tokenizer))
    try:
        sentences = sts.stsb_sentences(data_dir)
    except (sts.MissingData, FileNotFoundError):
        sentences = [f"a synthetic sentence number {i} " + "word " * (i % 30) for i in range(20000)]
    batches = data.Batches(sentences, tok, batch, 0, max_length, buckets_for(max_length))
    mesh = sharding.make_mesh()
    target = sharding.batch_sharding(mesh)
    jax.block_until_ready(sharding.global_batch(batches(0), target))  # warm-up (tokenizer, transfer paths)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        out = sharding.global_batch(batches(step), target)
    jax.block_until_ready(out)
    seconds = time.perf_counter() - t0
    return {"batch": batch, "steps": steps, "seconds": seconds, "sentences_per_s": batch * steps / seconds,
            "cores": 1, "sentences": len(sentences)}


def time_train_step(model: str, dtype: str, batch: int, steps: int, lengths: str, with_torch: bool,
                    remat: bool = False, head_dim: int = 4096, max_length: int = 128, warmup: int = 3,
                    data_dir: str | None = None, tokenizer: str = "minilm") -> dict[str, Any]:
    """One benchmark row: JAX (and PyTorch) on the same batches."""
    cfg = SHAPES[model]
    buckets = buckets_for(max_length)
    if lengths == "stsb":
        from sgcl_jax.pretrained import load_tokenizer, resolve

        lens = sample_lengths(load_tokenizer(resolve(tokenizer)), batch * steps, max_length, data_dir=data_dir)
    else:
        lens = np.full(batch * steps, int(lengths))
    batches = make_batches(lens, batch, buckets, cfg.vocab_size)
    views = cfg.num_hidden_layers + 1
    flops = sum(step_flops(cfg, batch, b["input_ids"].shape[1], views, head_dim) for b in batches)
    tokens = int(sum(b["attention_mask"].sum() for b in batches))
    device = jax.devices()[0]
    peak = peak_tflops(device, dtype)
    row: dict[str, Any] = {"model": model, "dtype": dtype, "batch": batch, "steps": len(batches), "lengths": lengths,
                           "remat": remat, "device": getattr(device, "device_kind", str(device)),
                           "mean_padded_length": float(np.mean([b["input_ids"].shape[1] for b in batches]))}
    j = bench_jax(cfg, batches, dtype, remat, head_dim, warmup)
    row["jax"] = {**j, "sentences_per_s": batch * len(batches) / j["seconds"], "tokens_per_s": tokens / j["seconds"],
                  "tflops": flops / j["seconds"] / 1e12}
    if peak:
        row["jax"]["mfu"] = row["jax"]["tflops"] / peak
    if with_torch:
        t = bench_torch(cfg, batches, dtype, head_dim, warmup)
        row["torch"] = {**t, "sentences_per_s": batch * len(batches) / t["seconds"],
                        "tokens_per_s": tokens / t["seconds"], "tflops": flops / t["seconds"] / 1e12}
        row["speedup"] = row["jax"]["sentences_per_s"] / row["torch"]["sentences_per_s"]
    return row


def bench_eval(model: str, dtype: str, data_dir: str | None, tokenizer: str = "minilm",
               batch_size: int = 256) -> dict[str, Any]:
    """Times encoding every distinct sentence of the available STS tasks ([CLS]), after a compiling pass."""
    from sgcl_jax import sts
    from sgcl_jax.bert import Bert
    from sgcl_jax.encoder import embed_fn, run_sorted
    from sgcl_jax.pretrained import load_tokenizer, resolve
    from sgcl_jax.scoring import load_sts_tasks

    cfg = SHAPES[model]
    tok = load_tokenizer(resolve(tokenizer))
    loaded, missing = load_sts_tasks(sts.TASKS, data_dir)
    unique = sts.distinct_sentences([sub for subs in loaded.values() for sub in subs])
    ids = jax.numpy.zeros((1, 8), jax.numpy.int32)
    params = jax.jit(lambda k: Bert(cfg).init(k, ids, jax.numpy.ones_like(ids))["params"])(jax.random.key(0))
    fn = embed_fn(cfg, dtype, "cls", "last")
    t0 = time.perf_counter()
    run_sorted(fn, params, tok, unique, batch_size)
    first = time.perf_counter() - t0
    log.info("eval %s %s: first pass (compiling) over %d sentences in %.1f s", model, dtype, len(unique), first)
    t0 = time.perf_counter()
    run_sorted(fn, params, tok, unique, batch_size)
    return {"model": model, "dtype": dtype, "tasks": sorted(loaded), "missing": sorted(missing),
            "sentences": len(unique), "first_pass_seconds": first, "seconds": time.perf_counter() - t0,
            "device": getattr(jax.devices()[0], "device_kind", "cpu")}


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """The machine's measured fp32 matmul rate in FLOP/s (best of `repeats` n x n products, jitted)."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(f(a, a))
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, a))
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def bench_transfer(encoder_name: str, tasks: Sequence[str], classifier: str, kfold: int, seeds: Sequence[int],
                   senteval_dir: str | None, sklearn_tasks: Sequence[str], pooling: str = "cls",
                   cache_dir: str | None = None, sklearn_sample: int = 0) -> dict[str, Any]:
    """Times the transfer evaluation (encoding included) and its classifier stage against the measured matmul
    rate; with `sklearn_tasks`, also the same logreg penalty-search fits run one after another with scikit-learn."""
    from sgcl_jax.evaluators import evaluate
    from sgcl_jax.runs import load_encoder
    from sgcl_jax.scoring import Settings

    rate = matmul_rate()
    encoder = load_encoder(encoder_name, pooling=pooling)
    t0 = time.perf_counter()
    result = evaluate(encoder, tasks, Settings(senteval_dir=senteval_dir, classifier=classifier, kfold=kfold,
                                               classifier_seeds=tuple(seeds), cache_dir=cache_dir))
    total = time.perf_counter() - t0
    fit_seconds = sum(r["classifier_seconds"] for r in result["tasks"].values())
    gflops = sum(r["classifier_gflops"] for r in result["tasks"].values())
    row = {"encoder": encoder_name, "classifier": classifier, "kfold": kfold, "seeds": list(seeds),
           "tasks": {t: {k: r[k] for k in ("score", "std", "fits", "classifier_seconds", "classifier_gflops")}
                     for t, r in result["tasks"].items()},
           "missing": sorted(result["missing"]), "total_seconds": total, "classifier_seconds": fit_seconds,
           "encode_seconds": total - fit_seconds, "classifier_gflop_per_s": gflops / max(fit_seconds, 1e-9),
           "matmul_gflop_per_s": rate / 1e9}
    row["fraction_of_matmul_rate"] = row["classifier_gflop_per_s"] / row["matmul_gflop_per_s"]
    row["result"] = result  # the scores and protocol, as evaluate writes them
    if sklearn_tasks:
        row["sklearn"] = {t: _sklearn_race(encoder, t, kfold, seeds, senteval_dir, sklearn_sample)
                          for t in sklearn_tasks}
    return row


def _sklearn_race(encoder: Any, name: str, kfold: int, seeds: Sequence[int],
                  senteval_dir: str | None, sample: int = 0) -> dict[str, Any]:
    """The logreg penalty search of one inner-k-fold task: our program (all fits at once) against scikit-learn, fit
    by fit. With `sample` > 0, scikit-learn runs a fixed random sample of that many fits and its total is
    extrapolated (a 600-fit search takes scikit-learn over half an hour on 2 cores)."""
    from sklearn.linear_model import LogisticRegression

    from sgcl_jax import classifiers, senteval, transfer

    task = senteval.load_task(name, senteval_dir)
    if task.protocol != "inner_kfold":
        raise ValueError(f"--sklearn {name}: pick an inner k-fold task (MR, CR, SUBJ, MPQA)")
    x = encoder.encode(task.splits["all"][0], batch_size=64)
    y = task.splits["all"][1]
    _, fits, _ = transfer.inner_search(y, kfold, seeds, classifiers.LOGREG_GRID["inner_kfold"])
    _, ours, stats = classifiers.run_fits("logreg", x, y, task.nclasses, fits)
    chosen = np.arange(len(fits)) if not 0 < sample < len(fits) else \
        np.sort(np.random.RandomState(0).choice(len(fits), sample, replace=False))
    t0 = time.perf_counter()
    theirs = [LogisticRegression(C=fits.reg[i], tol=1e-5, max_iter=1000).fit(x[fits.train[i]], y[fits.train[i]])
              .score(x[fits.val[i]], y[fits.val[i]]) for i in chosen]
    measured = time.perf_counter() - t0
    estimated = measured * len(fits) / len(chosen)
    return {"fits": len(fits), "sklearn_fits_timed": len(chosen), "jax_seconds": stats.seconds,
            "sklearn_seconds_measured": measured, "sklearn_seconds": estimated, "speedup": estimated / stats.seconds,
            "max_accuracy_difference": float(np.max(np.abs(ours[chosen] - np.asarray(theirs))))}
