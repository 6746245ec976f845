"""A pod run, compiled but not run: the trainer's own step compiled ahead of time for a TPU topology (or one GPU)
from a CPU host, with the compiler's memory, cost and communication analyses and a roofline bound.

JAX can compile for TPU devices it does not have ("deviceless" AOT, as MaxText's train_compile.py does for LLMs):
`libtpu` describes the topology, `jit(...).lower(ShapeDtypeStructs).compile()` runs the whole XLA TPU pipeline,
and the compiled program answers `memory_analysis()`, `cost_analysis()` and `as_text()`. Nothing here executes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sgcl_jax import sharding
from sgcl_jax.encoder import embed_fn
from sgcl_jax.files import read_json
from sgcl_jax.hlo_analysis import collectives, cost, memory, roofline, summarise_collectives, tree_bytes
from sgcl_jax.interrupts import Interrupts
from sgcl_jax.model import ModelSpec, guide_architecture, step_flops
from sgcl_jax.pretrained import abstract_params
from sgcl_jax.topologies import Target, chip_of, topology_devices, versions
from sgcl_jax.train_step import create_train_state, jit_train_step, state_shardings

log = logging.getLogger(__name__)
GiB = 2**30


class DoesNotFit(Exception):
    """The compiler refused the program: it needs more HBM than a device has. Carries the compiler's own line."""


# ------------------------------------------------------------------------------------------ compiling


@dataclasses.dataclass
class Program:
    """What is compiled: the config's step on a mesh at one per-device batch."""

    cfg: Any
    spec: ModelSpec
    mesh: Mesh
    layout: sharding.Layout
    per_device_batch: int

    @property
    def global_batch(self) -> int:
        """Every data-parallel device's rows together: the negatives of every sentence."""
        return self.per_device_batch * self.mesh.shape[sharding.DATA]

    @property
    def length(self) -> int:
        """The longest bucket the trainer pads to (data.Batches caps the buckets at model.max_length)."""
        return self.cfg.model.max_length


def program(cfg: Any, devices: list[Any], per_device_batch: int) -> Program:
    """The trainer's step for `cfg` on these devices at this per-device batch."""
    spec = ModelSpec.from_config(cfg, guide_architecture(cfg.model))
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.model, devices=devices)  # hybrid ICI x DCN over slices
    return Program(cfg, spec, mesh, sharding.Layout(mesh, cfg.mesh.fsdp), per_device_batch)


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def compile_step(p: Program) -> tuple[Any, dict[str, Any]]:
    """Compiles the trainer's own jitted step (same function, shardings and donation); -> (compiled, abstract args)."""
    lowered, args = lower_step(p)
    return _compile(lowered), args


def lower_step(p: Program) -> tuple[Any, dict[str, Any]]:
    """The trainer's own jitted step lowered for the program's mesh; -> (lowered, abstract args)."""
    cfg = p.cfg
    total = cfg.train.num_steps or 1000  # the schedule's length only changes constants
    tx, step = jit_train_step(p.spec, cfg.objective, cfg.optim, total, p.layout)
    state_sh, guide_sh = state_shardings(p.spec, tx, p.layout)
    guide = abstract_params(p.spec.bert)
    state = jax.eval_shape(lambda g: create_train_state(p.spec, g, tx, 0), guide)
    tokens = jax.ShapeDtypeStruct((p.global_batch, p.length), jnp.int32, sharding=p.layout.batch)
    args = {"state": _abstract(state, state_sh), "guide": _abstract(guide, guide_sh),
            "batch": {"input_ids": tokens, "attention_mask": tokens, "token_type_ids": tokens}}
    return step.lower(args["state"], args["guide"], args["batch"]), args


def compile_encoder(cfg: Any, bert: Any, device: Any, batch: int) -> Any:
    """Compiles the evaluation encoder's own forward (`encoder.embed_fn`) on one device at this batch."""
    return _compile(lower_encoder(cfg, bert, device, batch))


def lower_encoder(cfg: Any, bert: Any, device: Any, batch: int) -> Any:
    """The evaluation encoder's own forward lowered for one device at this batch."""
    one = NamedSharding(Mesh(np.asarray([device]), ("d",)), PartitionSpec())
    params = _abstract(abstract_params(bert), jax.tree.map(lambda _: one, abstract_params(bert)))
    tokens = jax.ShapeDtypeStruct((batch, cfg.model.max_length), jnp.int32, sharding=one)
    fn = embed_fn(bert, cfg.eval.dtype, cfg.eval.pooling, "last")
    return fn.lower(params, {"input_ids": tokens, "attention_mask": tokens, "token_type_ids": tokens})


def _compile(lowered: Any) -> Any:
    from jax._src import config as jax_config

    try:
        # A TPU executable compiled without a TPU client cannot be stored in (or read back from) JAX's persistent
        # compilation cache: keep it out, so the cache of the CPU programs in the same process stays clean.
        with jax_config.enable_compilation_cache(False):
            return lowered.compile()
    except Exception as e:  # XlaRuntimeError / JaxRuntimeError: an out-of-memory is a compile error
        text = str(e)
        if "RESOURCE_EXHAUSTED" in text or re.search(r"Used [\d.]+[KMGTP]? of [\d.]+[KMGTP]? hbm", text):
            raise DoesNotFit(hbm_line(text)) from None
        raise


def hbm_line(message: str) -> str:
    """The compiler's own sentence out of its out-of-memory error ("... Used A of B hbm ..." or "Ran out of memory
    on HBM ... exceeds available HBM (B)")."""
    # The sentence ends at "(B)." : libtpu glues the next thing it prints (a traceback's first line) onto it.
    for pattern in (r"[^\n]*Used [\d.]+[KMGTP]? of [\d.]+[KMGTP]? hbm[^\n]*",
                    r"Ran out of memory[^\n]*?available HBM \([^)\n]*\)\.?", r"Ran out of memory[^\n]*"):
        m = re.search(pattern, message)
        if m:
            return m.group(0).strip()
    return message.strip().splitlines()[-1].strip()


# ------------------------------------------------------------------------------------------ the report


def describe_target(target: Target, num_slices: int, devices: list[Any] | None = None) -> dict[str, Any]:
    """The report's "target" section: topology, chips, devices, slices, device kind and the compiler versions."""
    devices = devices or topology_devices(target, num_slices)
    return {"topology": target.name, "jax_topology": target.topology, "platform": target.platform,
            "chips": target.chips * num_slices, "devices": len(devices),
            "devices_per_chip": len(devices) // (target.chips * num_slices), "slices": num_slices,
            "device_kind": devices[0].device_kind, **versions()}


def report(cfg: Any, target: Target, num_slices: int, per_device_batch: int, encoder: bool = True) -> dict[str, Any]:
    """Compiles the step (and the encoder) and gathers every analysis; raises DoesNotFit for an out-of-memory."""
    devices = topology_devices(target, num_slices)
    p = program(cfg, devices, per_device_batch)
    chip = chip_of(devices[0])
    t0 = time.perf_counter()
    compiled, args = compile_step(p)
    seconds = time.perf_counter() - t0
    views = len(p.spec.layers)
    feature = p.spec.head_dim if p.spec.head else p.spec.bert.hidden_size
    analytic = step_flops(p.spec.bert, per_device_batch, p.length, views, feature, negatives=p.global_batch)
    c = cost(compiled)
    if c["flops"] is None:  # no compiler count (GPU): the roofline runs on the analytic count
        c["flops_source"] = "analytic (the compiler gives no cost analysis for this target)"
    shapes = frozenset(tuple(x.shape) for x in jax.tree.leaves((args["state"].params, args["guide"])))
    rows = collectives(compiled.as_text(), list(p.mesh.devices.flat), p.global_batch, feature, shapes, p.length)
    state = args["state"]
    ratio = c["flops"] / analytic if analytic and c["flops"] is not None else None
    out = {
        "label": "compiled, not run",
        "target": describe_target(target, num_slices, devices),
        "mesh": {"axes": dict(p.mesh.shape), "fsdp": p.layout.fsdp, "per_device_batch": per_device_batch,
                 "global_batch": p.global_batch, "length": p.length, "dtype": cfg.model.dtype,
                 "remat": cfg.model.remat,
                 "sharding": {"batch": str(p.layout.batch.spec),
                              "params, optimizer state, guide": "split over 'data' (FSDP, arrays >= "
                              f"{p.layout.min_size} elements)" if p.layout.fsdp else "replicated"}},
        "params": {"guide": tree_bytes(args["guide"], p.layout), "trainable": tree_bytes(state.params, p.layout),
                   "optimizer_state": tree_bytes(state.opt_state, p.layout)},
        "memory": memory(compiled, chip),
        "cost": {**c, "analytic_flops": analytic, "ratio": ratio,
                 "warning": None if ratio is None or 0.75 <= ratio <= 1.25 else
                 f"the compiler counts {ratio:.2f}x the analytic FLOPs (remat recomputes, a scan is counted once)"},
        "collectives": {"ops": rows, "by_opcode": summarise_collectives(rows)},
        "roofline": roofline(c["flops"] if c["flops"] is not None else analytic, c["bytes_accessed"], rows, chip,
                             analytic, p.global_batch),
        "compile_seconds": seconds,
    }
    if p.layout.fsdp:  # the same step with replicated params, for comparison
        try:
            rep, _ = compile_step(dataclasses.replace(p, layout=sharding.Layout(p.mesh, False)))
            out["replicated_memory"] = memory(rep, chip)
        except DoesNotFit as e:
            out["replicated_memory"] = {"fits": False, "compiler": str(e)}
    if encoder:
        try:
            enc = compile_encoder(cfg, p.spec.bert, devices[0], cfg.eval.batch_size)
            out["encoder"] = {"batch": cfg.eval.batch_size, "memory": memory(enc, chip), "cost": cost(enc)}
        except DoesNotFit as e:
            out["encoder"] = {"batch": cfg.eval.batch_size, "does_not_fit": str(e)}
    return out


class CompileLog:
    """What earlier compiles answered (fits, bytes per device), as JSON lines keyed by the program itself: a hash
    of the lowered module's text, the target's devices and the jax / jaxlib / libtpu versions. A max-batch
    search killed after hours resumes with what it had compiled, and a changed step, config, target or compiler
    is compiled again. Each compile is logged as started first: one that never answered was killed, either
    with its search (a session's end) or by its own size (the host ran out of memory: bert-large near its HBM
    limit takes over 21 GB to compile). The two look alike, so a compile is tried once more after one death
    and counted as not fitting after two. A compile stopped by SIGTERM or Ctrl-C logs itself as interrupted,
    which is no death: only SIGKILL and the out-of-memory killer count. A line torn by a kill is skipped."""

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self.answers: dict[str, tuple[bool, float | None]] = {}
        self.batches: dict[str, set[int]] = {}  # what -> the batches logged, to seed a resumed search
        started: dict[str, tuple[int, str, int]] = {}  # key -> (batch, what, times its compile was started)
        text = ""
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                text = f.read()
        self._torn = bool(text) and not text.endswith("\n")  # the next line must not be glued to a torn one
        for line in text.splitlines():
            try:
                row = json.loads(line)
                key, batch, what = str(row["key"]), int(row["batch"]), str(row.get("what", "step"))
                self.batches.setdefault(what, set()).add(batch)
                # A start counts toward a death until it answers; a stop on purpose (interrupted) takes it back.
                delta = 1 if row.get("started") else -1 if row.get("interrupted") else 0
                if delta:
                    started[key] = batch, what, started.get(key, (0, "", 0))[2] + delta
                else:
                    self.answers[key] = (bool(row["fits"]), row["bytes"])
            except (ValueError, KeyError, TypeError):
                continue
        # key -> (batch, what, deaths): compiles started that never answered
        self.died = {k: v for k, v in started.items() if k not in self.answers and v[2] > 0}

    def killed(self, key: str) -> bool:
        """Whether this program's compile died twice: counted as not fitting, and not tried again."""
        return self.died.get(key, (0, "", 0))[2] >= 2

    @staticmethod
    def key(lowered: Any, devices: list[Any]) -> str:
        """The program's identity: its lowered text (no source locations) and where and with what it compiles."""
        target = [(d.id, d.device_kind, getattr(d, "coords", None), getattr(d, "slice_index", 0)) for d in devices]
        text = lowered.as_text() + json.dumps([target, versions()], default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def start(self, key: str, batch: int, what: str) -> None:
        """Logs a compile as started (a process killed while compiling leaves this line alone)."""
        self._append({"key": key, "batch": batch, "what": what, "started": True})

    def interrupted(self, key: str, batch: int, what: str, signame: str) -> None:
        """Logs a started compile as stopped on purpose (SIGTERM, Ctrl-C): compiled again on resume, no death."""
        self._append({"key": key, "batch": batch, "what": what, "interrupted": signame})

    def add(self, key: str, batch: int, what: str, ok: bool, mem: float | None, seconds: float | None = None,
            detail: dict[str, Any] | None = None) -> None:
        """Logs one answer, how long its compile took and what the compiler said (memory_analysis()'s parts, or
        its out-of-memory line), flushed to disk before the search goes on."""
        self.answers[key] = (ok, mem)
        self._append({"key": key, "batch": batch, "what": what, "fits": ok, "bytes": mem, "seconds": seconds,
                      **(detail or {})})

    def _append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(("\n" if self._torn else "") + json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._torn = False


def fits(cfg: Any, devices: list[Any], per_device_batch: int, what: str = "step",
         compile_log: CompileLog | None = None, compile: bool = True) -> tuple[bool, float | None] | None:
    """(whether it compiles within HBM, total bytes per device when it does). A program found in `compile_log`
    is not compiled again (one whose compile killed its process counts as not fitting); with compile=False an
    unknown program answers None."""
    if what == "step":
        lowered, _ = lower_step(program(cfg, devices, per_device_batch))
    else:
        lowered = lower_encoder(cfg, guide_architecture(cfg.model), devices[0], per_device_batch)
    if compile_log is None:
        return _fits_hbm(lowered, devices)[:2] if compile else None
    key = CompileLog.key(lowered, devices)
    if key in compile_log.answers:
        return compile_log.answers[key]
    if compile_log.killed(key):
        log.warning("%s at per-device batch %d: its compile was killed twice before (out of host memory?); "
                    "counted as not fitting", what, per_device_batch)
        return False, None
    if not compile:
        return None
    compile_log.start(key, per_device_batch, what)
    t0 = time.monotonic()
    ok, mem, detail = _compile_or_interrupt(lambda: _fits_hbm(lowered, devices),
                                            lambda sig: compile_log.interrupted(key, per_device_batch, what, sig))
    # The seconds plan the next search: a compile near HBM takes tens of minutes on a 2-core host.
    compile_log.add(key, per_device_batch, what, ok, mem, round(time.monotonic() - t0, 1), detail)
    return ok, mem


def _compile_or_interrupt(compile_fn: Callable[[], Any], on_signal: Callable[[str], None]) -> Any:
    """compile_fn's answer; on SIGTERM or Ctrl-C, on_signal(name) and exit at once (status 128 + signal). The
    compile runs in a thread because a Python signal handler waits for a C++ compile to return (tens of minutes);
    a stopped compile has nothing to save, so the process leaves without waiting for it."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["answer"] = compile_fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    worker = threading.Thread(target=run, name="compile", daemon=True)
    with Interrupts("the compile is stopped and logged as interrupted (compiled again on resume)") as signals:
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
            if signals.received:
                on_signal(signals.received)
                logging.shutdown()
                os._exit(128 + signal.Signals[signals.received].value)
    if "error" in box:
        raise box["error"]
    return box["answer"]


def _fits_hbm(lowered: Any, devices: list[Any]) -> tuple[bool, float | None, dict[str, Any]]:
    """(fits, total bytes per device, memory_analysis()'s parts or the compiler's out-of-memory line)."""
    try:
        mem = memory(_compile(lowered), chip_of(devices[0]))
    except DoesNotFit as e:
        return False, None, {"compiler": str(e)}
    # On a TPU, compiled means it fits; a GPU compiler does not refuse, so there the sum decides (hlo_analysis).
    return bool(mem["fits"]), float(mem["total_bytes"]), {"memory": {k: v for k, v in mem.items()
                                                                    if k.endswith("_bytes")}}


def read_prior(path: str | Path | None, what: str = "step") -> dict[int, float] | None:
    """batch -> bytes per device of the fitting compiles in an earlier --max-batch search's JSON report."""
    if not path:
        return None
    try:
        found = read_json(path)["max_batch"][what]
        return {int(b): float(m) for b, m in found["bytes"].items() if m}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--max-batch-prior {path}: not a --max-batch report with a {what!r} search ({e})") from e


def can_aim(points: Collection[Any] | None) -> bool:
    """Whether fitting compiles' bytes (a prior's, or a search's own) can aim the next compile: a line needs two."""
    return len(points or ()) >= 2


def _slopes(points: list[tuple[int, float]]) -> list[float]:
    """Bytes per device a sentence between consecutive (batch, bytes) points."""
    return [(m2 - m1) / (b2 - b1) for (b1, m1), (b2, m2) in zip(points, points[1:], strict=False)]


def max_batch(cfg: Any, devices: list[Any], what: str = "step", start: int = 8, limit: int = 1 << 17,
              resolution: int = 32, fits_fn: Any = fits,
              known: dict[int, tuple[bool, float | None]] | None = None,
              prior: dict[int, float] | None = None) -> dict:
    """The largest per-device batch that compiles within HBM, to 1/resolution of the answer. Each next compile
    is the batch where a line through the two largest fitting compiles' memory meets HBM (aimed 1/(2 x
    resolution) below it, so the compile just above usually ends the search), then bisection once bracketed:
    4-6 compiles when memory grows linearly. `known` (batch -> answer, e.g. from a CompileLog) is where a
    killed search stopped: the search goes on from there. `prior` (batch -> bytes per device of another target's
    fitting compiles, e.g. the same step on v5e-8 for v5e-256) only aims the first compiles, until this target
    has two of its own: a search that starts near its answer takes 2-4 compiles instead of 6-8."""
    tried: dict[int, tuple[bool, float | None]] = dict(known or {})
    hbm = chip_of(devices[0]).hbm_gib * GiB

    def check(b: int) -> bool:
        if b not in tried:
            ok, mem = tried[b] = fits_fn(cfg, devices, b, what)
            log.info("%s at per-device batch %d: %s", what, b,
                     f"fits ({mem / GiB:.2f} GiB)" if ok and mem else "fits" if ok else "does not fit")
        return tried[b][0]

    def bounds() -> tuple[int, int | None]:
        good = [b for b, (ok, _) in tried.items() if ok]
        bad = [b for b, (ok, _) in tried.items() if not ok]
        return max(good, default=0), min(bad, default=None)

    def done(lo: int, hi: int | None) -> bool:
        return hi is not None and hi - lo <= max(1, lo // resolution)

    def aim(lo: int) -> int | None:
        """Where the line through the two largest fitting compiles meets HBM, a little below (the prior's line,
        through this target's one compile if it has one, while it has fewer than two or its own does not rise)."""
        measured = sorted((b, m) for b, (ok, m) in tried.items() if ok and m is not None)
        prior_line = sorted((prior or {}).items())
        line = measured if can_aim(measured) else prior_line
        if not can_aim(line):
            return None
        slopes = _slopes(line)
        b2, m2 = (measured or line)[-1]
        if max(slopes) <= 0:
            # Memory fell from one fitting compile to the next (the compiler laid the larger batch out tighter:
            # bert-large on v6e-256 with FSDP, 28.97 GiB at 307 a device, 28.72 at 345), so this line does not
            # point at the limit: the prior's line does, else the mean bytes a sentence (over the marginal cost
            # while the weights are a fixed part, so it aims short of the limit, never past it).
            slopes = [s for s in _slopes(prior_line) if s > 0] or [m2 / b2]
        # Near HBM the compiler rematerialises and memory flattens (bert-large on v5e: 14.33 GiB at 72 a device,
        # 14.34 at 81): a flat last slope would aim far past the limit, so it is held to an eighth of the steepest
        # (memory that merely grows sublinearly, as for MiniLM, stays above that).
        slope = max(slopes[-1], max(slopes) / 8, 1.0)
        # The first compile aimed by another target's memory alone stays an eighth below (a step compiled for more
        # chips, or for another chip, needs a little more or less): it fits, and the next aims from it.
        b = int((b2 + (hbm - m2) / slope) * (1 - (0.5 / resolution if measured else 1 / 8)))
        return max(b, lo + max(1, lo // resolution))  # within the resolution of lo: probe just above it

    if not any(ok for ok, _ in tried.values()):
        check(min(limit, aim(0) or start) if not tried else start)
    lo, hi = bounds()
    bisect = False
    while not done(lo, hi) and lo < limit:
        b = aim(lo)
        if hi is None:  # extrapolate until a compile fails
            b = 2 * lo if b is None else b
        elif b is None or b >= hi or bisect:  # bracketed: the line, alternating with halving (convex memory)
            b = (lo + hi) // 2
        bisect = hi is not None and not bisect
        check(min(limit, max(lo + 1, b)))
        lo, hi = bounds()
    hi = limit + 1 if hi is None else hi
    return {"what": what, "max_per_device_batch": lo, "first_failing": hi, "resolution": f"1/{resolution}",
            "compiles": len(tried),
            "tried": {str(k): ok for k, (ok, _) in sorted(tried.items())},
            "bytes": {str(k): m for k, (ok, m) in sorted(tried.items()) if ok}}


# ------------------------------------------------------------------------------------------ text


def _gib(x: float) -> str:
    return f"{x / GiB:.2f} GiB"


def format_report(r: dict[str, Any]) -> str:
    """The report as text, every section labelled "compiled, not run"."""
    t, m, mem, cst, roof = r["target"], r["mesh"], r["memory"], r["cost"], r["roofline"]
    lines = [f"sgcl_jax AOT report (compiled, not run): {t['topology']} ({t['jax_topology']}), {t['chips']} chips x "
             f"{t['devices_per_chip']} device(s), {t['slices']} slice(s), {t['device_kind']}; jax {t['jax']}, "
             f"jaxlib {t['jaxlib']}, libtpu {t['libtpu']}",
             f"mesh {m['axes']}; batch {m['per_device_batch']} per device, global {m['global_batch']}; length "
             f"{m['length']}; {m['dtype']}; batch {m['sharding']['batch']}; params, optimizer state, guide: "
             f"{m['sharding']['params, optimizer state, guide']}"]
    for k, v in r["params"].items():
        lines.append(f"  {k:<16} {v['count']:>13,} params  {_gib(v['bytes'])} global, {_gib(v['bytes_per_device'])}"
                     " per device")
    lines.append("memory per device: " + ", ".join(f"{k} {_gib(mem[k + '_bytes'])}" for k in
                                                   ("argument", "output", "alias", "temp", "generated_code")))
    lines.append(f"  total {_gib(mem['total_bytes'])} of {_gib(mem['hbm_bytes'])} HBM "
                 f"({100 * mem['headroom']:.1f} % headroom): {'fits' if mem['fits'] else 'does not fit'}" +
                 (" (the TPU compiler, which refuses what it cannot place, admitted it: memory_analysis()'s sum "
                  "over-counts here; treat it as at the limit)" if mem['fits'] and mem.get('sum_over_hbm') else ""))
    rep = r.get("replicated_memory")
    if rep:
        lines.append("  the same step with replicated params: " + (
            f"{_gib(rep['total_bytes'])} ({'fits' if rep['fits'] else 'does not fit'})" if "total_bytes" in rep
            else f"does not fit ({rep['compiler']})"))
        if rep.get("total_bytes", float("inf")) < mem["total_bytes"] and not r["mesh"].get("remat"):
            lines.append("  FSDP needs more than the replicated layout here: without rematerialisation the compiler "
                         "keeps more activations a sentence under FSDP; try --config.model.remat=True")
    if cst["flops"] is None:
        lines.append(f"per device: analytic {cst['analytic_flops'] / 1e12:.3f} TFLOP; {cst['flops_source']}")
    else:
        lines.append(f"per device: {cst['flops'] / 1e12:.3f} TFLOP (analytic {cst['analytic_flops'] / 1e12:.3f}, "
                     f"ratio {cst['ratio']:.2f}), {cst['bytes_accessed'] / GiB:.2f} GiB accessed")
    if cst["warning"]:
        lines.append(f"  warning: {cst['warning']}")
    lines.append("collectives per step (bytes per device):")
    for op, s in r["collectives"]["by_opcode"].items():
        lines.append(f"  {op:<19} x{s['count']:<3} {s['bytes'] / 2**20:10.2f} MiB  groups of {s['group_sizes']}"
                     + (f"; {s['bytes_crossing_slices'] / 2**20:.2f} MiB cross slices" if t["slices"] > 1 else ""))
    roles: dict[str, list[int]] = {}
    for op in r["collectives"]["ops"]:
        roles.setdefault(op["role"], []).append(op["bytes"])
    for role, sizes in roles.items():
        lines.append(f"  {role}: {len(sizes)} op(s), {sum(sizes) / 2**20:.2f} MiB" + (
            f" ({sum(sizes) / m['global_batch']:.0f} bytes a sentence)" if role.startswith("negatives") else ""))
    if not r["collectives"]["ops"]:
        lines.append("  none")
    dcn = "" if roof["dcn_s"] is None else f", DCN {roof['dcn_s'] * 1e3:.3f} ms"
    lines.append(f"roofline ({roof['chip']}: {roof['source']}): compute {roof['compute_s'] * 1e3:.3f} ms, HBM "
                 f"{roof['hbm_s'] * 1e3:.3f} ms, ICI {roof['ici_s'] * 1e3:.3f} ms{dcn} -> step >= "
                 f"{roof['step_s'] * 1e3:.3f} ms ({roof['limited_by']}-bound): <= {roof['sentences_per_s']:,.0f} "
                 f"sentences/s, MFU <= {100 * roof['mfu_ceiling']:.1f} %")
    enc = r.get("encoder")
    if enc:
        lines.append(f"evaluation encoder, batch {enc['batch']}: " + (
            f"{_gib(enc['memory']['total_bytes'])} per device" + (
                f", {enc['cost']['flops'] / 1e9:.1f} GFLOP" if enc["cost"]["flops"] is not None else "")
            if "memory" in enc else f"does not fit ({enc['does_not_fit']})"))
    lines.append(f"compiled in {r['compile_seconds']:.1f} s on this host; compiled, not run: a bound, not a "
                 "measurement")
    return "\n".join(lines)
