"""A pod run, compiled but not run: the trainer's own step compiled ahead of time for a TPU topology (or one GPU)
from a CPU host, with the compiler's memory, cost and communication analyses and a roofline bound.

JAX can compile for TPU devices it does not have ("deviceless" AOT, as MaxText's train_compile.py does for LLMs):
`libtpu` describes the topology, `jit(...).lower(ShapeDtypeStructs).compile()` runs the whole XLA TPU pipeline,
and the compiled program answers `memory_analysis()`, `cost_analysis()` and `as_text()`. Nothing here executes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import time
from importlib import metadata
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sgcl_jax import sharding
from sgcl_jax.encoder import embed_fn
from sgcl_jax.model import ModelSpec, guide_architecture, step_flops
from sgcl_jax.pretrained import abstract_params
from sgcl_jax.train_step import create_train_state, jit_train_step, state_shardings

log = logging.getLogger(__name__)
GiB = 2**30


class DoesNotFit(Exception):
    """The compiler refused the program: it needs more HBM than a device has. Carries the compiler's own line."""


# ------------------------------------------------------------------------------------------ chips and topologies


@dataclasses.dataclass(frozen=True)
class Chip:
    """Datasheet figures of one chip: the roofline's ceilings. ICI: the bidirectional total per chip; DCN: per chip."""

    name: str
    device_kind: str  # what jax reports as `device_kind` for it
    peak_bf16_tflops: float
    hbm_gib: float
    hbm_gbps: float
    ici_gbps: float
    dcn_gbps: float | None
    source: str


# One row per chip; each figure from the page named in `source`.
CHIPS = (
    Chip("TPU v4", "TPU v4", 275.0, 32.0, 1200.0, 300.0, None,
         "cloud.google.com/tpu/docs/v4 (compute, HBM); ICI: 6 links x 50 GB/s per direction (glennklockwood.com/"
         "garden/processors/TPUv4, after the TPU v4 paper); DCN not published"),
    Chip("TPU v5e", "TPU v5 lite", 197.0, 16.0, 819.0, 400.0, 2 * 100 / 8 / 8,
         "cloud.google.com/tpu/docs/v5e (DCN: 2 x 100 Gbps NICs per 8-chip host)"),
    Chip("TPU v5p", "TPU v5", 459.0, 95.0, 2765.0, 1200.0, 50 / 8,
         "cloud.google.com/tpu/docs/v5p (DCN: 50 Gbps per chip)"),
    Chip("TPU v6e", "TPU v6 lite", 918.0, 32.0, 1638.0, 800.0, None,
         "cloud.google.com/tpu/docs/v6e; DCN per chip not published"),
    Chip("H200", "H200", 989.0, 141e9 / GiB, 4800.0, 900.0, None,
         "nvidia.com/en-us/data-center/h200 (dense bf16; NVLink 900 GB/s)"),
    Chip("H100", "H100", 989.0, 80e9 / GiB, 3350.0, 900.0, None,
         "nvidia.com/en-us/data-center/h100 (SXM, dense bf16; NVLink 900 GB/s)"),
)


def chip_of(device: Any) -> Chip:
    """The CHIPS row of a device, by its device_kind (the longest name that matches, so 'TPU v5' != 'v5 lite')."""
    kind = getattr(device, "device_kind", "")
    rows = [c for c in CHIPS if kind == c.device_kind or kind.startswith(c.device_kind + " ")
            or c.device_kind in kind]
    if not rows:
        raise ValueError(f"no datasheet row for device kind {kind!r}; known: {[c.device_kind for c in CHIPS]}")
    return max(rows, key=lambda c: len(c.device_kind) if c.device_kind in kind else 0)


@dataclasses.dataclass(frozen=True)
class Target:
    """A topology as libtpu takes it: the JAX name, chip config, chips per host, wraparound links."""

    name: str
    platform: str
    topology: str
    chip_config: str
    chips_per_host_bounds: tuple[int, int, int]
    wrap: tuple[bool, bool, bool]
    chips: int


# TPU families: user prefix -> (JAX prefix, chip config, dims, whether the user's count is TensorCores (2 per chip)).
_FAMILIES = {"v5e": ("v5e", "default", 2, False), "v6e": ("v6e", "default", 2, False),
             "v4": ("v4", "megacore_dense", 3, True), "v5p": ("v5", "megacore", 3, True)}
_JAX_PREFIX = {jax_prefix: user for user, (jax_prefix, *_) in _FAMILIES.items()}
# The slice shapes of MaxText's accelerator_to_spec_map.py, by chip count.
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
              256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}
GPUS = {"h200-1": "H200", "h100-1": "H100"}


def resolve_topology(name: str) -> Target:
    """'v5e-256' (the user's name) or 'v5e:16x16' (JAX's) -> Target; v4/v5p user names count TensorCores."""
    if name in GPUS:
        return Target(name, "cuda", name, "", (1, 1, 1), (False, False, False), 1)
    if ":" in name:
        prefix, _, shape = name.partition(":")
        if prefix not in _JAX_PREFIX or not re.fullmatch(r"\d+(x\d+)+", shape):
            raise ValueError(f"--topology {name}: expected e.g. v5e:16x16, v4:2x2x4, v5:4x4x4 or v6e:16x16")
        family = _JAX_PREFIX[prefix]
        dims = tuple(int(x) for x in shape.split("x"))
    else:
        family, _, count = name.rpartition("-")
        if family not in _FAMILIES or not count.isdigit():
            raise ValueError(f"--topology {name}: expected e.g. v5e-8, v5e-256, v4-32, v5p-128, v6e-256, h200-1, "
                             "or JAX's form v5e:16x16")
        chips = int(count) // (2 if _FAMILIES[family][3] else 1)
        shapes = _SHAPES_2D if _FAMILIES[family][2] == 2 else _SHAPES_3D
        if chips not in shapes:
            raise ValueError(f"--topology {name}: no {family} slice of {count}; known: "
                             + ", ".join(f"{family}-{c * (2 if _FAMILIES[family][3] else 1)}" for c in shapes))
        dims = shapes[chips]
    jax_prefix, chip_config, ndim, _ = _FAMILIES[family]
    if len(dims) != ndim:
        raise ValueError(f"--topology {name}: {family} slices have {ndim} dimensions")
    chips = math.prod(dims)
    if ndim == 2:  # a full 16-chip ring closes into a torus; v5e-128 is 8x16 with one wrapped axis
        wrap = (dims[0] == 16, dims[1] == 16, False)
    else:  # 3D slices of whole 4x4x4 cubes are tori
        wrap = (min(dims) >= 4,) * 3
    bounds = (2, 2, 1) if chips >= 4 else (1, 1, 1)
    return Target(name, "tpu", f"{jax_prefix}:{'x'.join(map(str, dims))}", chip_config, bounds, wrap, chips)


def topology_devices(target: Target, num_slices: int = 1) -> list[Any]:
    """The devices of a topology, described by libtpu (or the CUDA plugin) without any hardware."""
    from jax.experimental import topologies

    # Another process (a test worker, a training run) may hold libtpu's lock; describing a topology needs no chip.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    if target.platform == "cuda":
        return list(gpu_topology(target).devices)
    topo = topologies.get_topology_desc(platform="tpu", topology_name=target.topology,
                                        chip_config_name=target.chip_config,
                                        chips_per_host_bounds=target.chips_per_host_bounds,
                                        num_slices=num_slices, wrap=target.wrap)
    return list(topo.devices)


# XLA's GPU target description (stream_executor.GpuTargetConfigProto) of the GPUs that `aot` can compile for
# without one attached: the datasheet facts the compiler plans with (SMs, memory, bandwidth, compute capability).
_GPU_SPECS = {"h200-1": {"name": "NVIDIA H200", "memory": 141 * 10**9, "bandwidth": 4_800_000_000_000},
              "h100-1": {"name": "NVIDIA H100 80GB HBM3", "memory": 80 * 10**9, "bandwidth": 3_350_000_000_000}}


def gpu_target_config(name: str) -> str:
    """The GpuTargetConfigProto text of a Hopper GPU (132 SMs, compute capability 9.0)."""
    spec = _GPU_SPECS[name]
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: {spec["bandwidth"]} l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: {spec["memory"]} shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 minor: 0 }} registers_per_core_limit: 65536 registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 patch: 0 }}
device_description_str: "{spec["name"]}"
"""


def gpu_topology(target: Target) -> Any:
    """One GPU through JAX's CUDA plugin and an XLA GPU target config (as jax's tests/aot_test.py does)."""
    from jax.experimental import topologies

    try:
        import jax_plugins.xla_cuda12  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"--topology {target.name}: needs JAX's CUDA plugin (pip install "
                           "'jax-cuda12-plugin[with-cuda]'), not installed here") from e
    return topologies.get_topology_desc(platform="cuda", topology="1x1x1",
                                        target_config=gpu_target_config(target.name))


def versions() -> dict[str, str]:
    """jax, jaxlib and libtpu versions (what compiled the report)."""
    out = {"jax": jax.__version__}
    for pkg in ("jaxlib", "libtpu"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


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


def make_mesh(devices: list[Any], cfg: Any) -> Mesh:
    """The trainer's mesh over a topology's devices (hybrid ICI x DCN when the devices span slices)."""
    return sharding.make_mesh(cfg.mesh.data, cfg.mesh.model, devices=devices)


def program(cfg: Any, devices: list[Any], per_device_batch: int) -> Program:
    """The trainer's step for `cfg` on these devices at this per-device batch."""
    spec = ModelSpec.from_config(cfg, guide_architecture(cfg.model))
    mesh = make_mesh(devices, cfg)
    return Program(cfg, spec, mesh, sharding.Layout(mesh, cfg.mesh.fsdp), per_device_batch)


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def compile_step(p: Program) -> tuple[Any, dict[str, Any]]:
    """Compiles the trainer's own jitted step (same function, shardings and donation); -> (compiled, abstract args)."""
    cfg = p.cfg
    total = cfg.train.num_steps or 1000  # the schedule's length only changes constants
    tx, step = jit_train_step(p.spec, cfg.objective, cfg.optim, total, p.layout)
    state_sh, guide_sh = state_shardings(p.spec, tx, p.layout)
    guide = abstract_params(p.spec.bert)
    state = jax.eval_shape(lambda g: create_train_state(p.spec, g, tx, 0), guide)
    tokens = jax.ShapeDtypeStruct((p.global_batch, p.length), jnp.int32, sharding=p.layout.batch)
    args = {"state": _abstract(state, state_sh), "guide": _abstract(guide, guide_sh),
            "batch": {"input_ids": tokens, "attention_mask": tokens, "token_type_ids": tokens}}
    return _compile(step.lower(args["state"], args["guide"], args["batch"])), args


def compile_encoder(cfg: Any, bert: Any, device: Any, batch: int) -> Any:
    """Compiles the evaluation encoder's own forward (`encoder.embed_fn`) on one device at this batch."""
    one = NamedSharding(Mesh(np.asarray([device]), ("d",)), PartitionSpec())
    params = _abstract(abstract_params(bert), jax.tree.map(lambda _: one, abstract_params(bert)))
    tokens = jax.ShapeDtypeStruct((batch, cfg.model.max_length), jnp.int32, sharding=one)
    fn = embed_fn(bert, cfg.eval.dtype, cfg.eval.pooling, "last")
    return _compile(fn.lower(params, {"input_ids": tokens, "attention_mask": tokens, "token_type_ids": tokens}))


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
    for pattern in (r"[^\n]*Used [\d.]+[KMGTP]? of [\d.]+[KMGTP]? hbm[^\n]*", r"Ran out of memory[^\n]*"):
        m = re.search(pattern, message)
        if m:
            return m.group(0).strip()
    return message.strip().splitlines()[-1].strip()


# ------------------------------------------------------------------------------------------ analyses


def memory(compiled: Any, chip: Chip) -> dict[str, Any]:
    """Per-device bytes from memory_analysis(), their total against the chip's HBM."""
    m = compiled.memory_analysis()
    parts = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp",
                                                                 "generated_code")}
    total = parts["argument"] + parts["output"] - parts["alias"] + parts["temp"] + parts["generated_code"]
    hbm = chip.hbm_gib * GiB
    return {**{f"{k}_bytes": v for k, v in parts.items()}, "total_bytes": total, "hbm_bytes": hbm,
            "headroom": 1 - total / hbm, "fits": total <= hbm}


def cost(compiled: Any) -> dict[str, float]:
    """Per-device FLOPs and bytes accessed from cost_analysis()."""
    c = compiled.cost_analysis()
    c = (c[0] if isinstance(c, (list, tuple)) else c) or {}  # the GPU compiler gives none
    return {"flops": float(c["flops"]) if "flops" in c else None,
            "bytes_accessed": float(c["bytes accessed"]) if "bytes accessed" in c else None}


_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
_OP = re.compile(r"=\s*(?P<type>.+?)\s+(?P<op>all-gather|all-reduce|reduce-scatter|collective-permute|all-to-all)"
                 r"(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")


def _arrays(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(dt, tuple(int(x) for x in dims.split(",") if x)) for dt, dims in _ARRAY.findall(type_text)
            if dt in _BYTES]


def _groups(line: str, n: int) -> np.ndarray:
    """The replica groups of a collective as a (groups, size) array of device positions."""
    m = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
    if m:
        shape = [int(x) for x in m.group(1).split(",")]
        ids = np.arange(math.prod(int(x) for x in m.group(2).split(","))).reshape(
            [int(x) for x in m.group(2).split(",")])
        if m.group(3):
            ids = ids.transpose([int(x) for x in m.group(3).split(",")])
        return ids.reshape(-1, shape[-1])
    m = re.search(r"replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}", line)
    if m:
        groups = [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([\d,]*)\}", m.group(1))]
        return np.asarray(groups)
    m = re.search(r"source_target_pairs=\{(.*?)\}\}", line)
    if m:
        return np.asarray([[int(x) for x in p.split(",")] for p in re.findall(r"\{([\d,]+)", m.group(1) + "}")])
    return np.arange(n)[None]  # replica_groups={}: every device


_DCN = re.compile(r"=\s*(?P<type>\(.+?\))\s+send\(.*_xla_megascale_transfer_type=\"(?P<kind>\w+)\"")


def collectives(hlo: str, devices: list[Any], global_batch: int, feature: int,
                param_shapes: frozenset[tuple[int, ...]] = frozenset()) -> list[dict[str, Any]]:
    """Every collective of the compiled program (async start/done counted once): opcode, bytes per step (the
    result's size per device), group size, and whether it crosses slices. Between slices the compiler splits a
    collective into ICI collectives inside each slice and host transfers over the data-center network (Megascale
    `send`s): those are the rows with `crosses_slices`, their bytes what a device sends across.

    The all-gather (or, as the TPU compiler often writes it, all-reduce) of `feature`-wide vectors of the whole
    global batch is the one that makes the negatives global: the compiler may gather the B x H projected [CLS]
    vectors and reduce the log-sum-exp across devices rather than gather the B x K x H views (same loss, less
    traffic)."""
    slices = len({getattr(d, "slice_index", 0) or 0 for d in devices})
    out = []
    for line in hlo.splitlines():
        name = re.search(r"%?([\w.-]+)\s*=", line)
        dcn = _DCN.search(line)
        if dcn:
            arrays = [a for a in _arrays(dcn.group("type")) if a[1]][:1]  # (data, context, token)
            op, groups = dcn.group("kind").lower().replace("_", "-"), np.arange(slices)[None]
        else:
            m = _OP.search(line)
            if not m or "-done(" in line:
                continue
            op, arrays = m.group("op"), _arrays(m.group("type"))
            if m.group("start") and op in ("all-gather", "collective-permute"):
                arrays = [a for a in arrays if a[1]]  # drop the u32[] context scalars
                arrays = arrays[len(arrays) // 2:]  # (operands..., results...)
            groups = _groups(line, len(devices))
        row = {"op": op, "name": name.group(1) if name else "",
               "bytes": int(sum(_BYTES[dt] * math.prod(shape) for dt, shape in arrays)),
               "shapes": [f"{dt}[{','.join(map(str, s))}]" for dt, s in arrays],
               "group_size": int(groups.shape[1]) if groups.ndim == 2 else 1, "groups": int(groups.shape[0]),
               "crosses_slices": bool(dcn)}
        row["role"] = _role(row["op"], arrays, global_batch, feature, param_shapes)
        out.append(row)
    return out


def _role(op: str, arrays: list[tuple[str, tuple[int, ...]]], global_batch: int, feature: int,
          param_shapes: frozenset[tuple[int, ...]] = frozenset()) -> str:
    """What a collective is for, from its shapes: the global batch's vectors, per-sentence loss statistics, or
    (everything else) the parameters' gradients or, under FSDP, the parameters themselves."""
    def rows(shape: tuple[int, ...]) -> int:
        return math.prod(shape[:-1]) if shape else 0

    if arrays and any(s in param_shapes for _, s in arrays):  # a weight's shape (the head's 4096 x 4096 too)
        return "parameters: gathering sharded weights (FSDP)" if op in ("all-gather", "collective-permute") \
            else "gradients: reduction over the data axis"
    if arrays and all(s[-1:] == (feature,) and rows(s) and rows(s) % global_batch == 0 for _, s in arrays):
        return "negatives: the global batch's projected vectors (or their gradient)"
    if arrays and all(global_batch in s and math.prod(s) <= 64 * global_batch for _, s in arrays):
        return "loss: per-sentence statistics of the global batch (log-sum-exp across devices)"
    if op in ("all-gather", "collective-permute"):
        return "parameters: gathering sharded weights (FSDP)"
    return "gradients: reduction over the data axis"


def summarise_collectives(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per opcode: count, bytes per step, group sizes, and the bytes whose groups cross slices."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = out.setdefault(r["op"], {"count": 0, "bytes": 0, "group_sizes": [], "bytes_crossing_slices": 0})
        s["count"] += 1
        s["bytes"] += r["bytes"]
        s["bytes_crossing_slices"] += r["bytes"] if r["crosses_slices"] else 0
        if r["group_size"] not in s["group_sizes"]:
            s["group_sizes"].append(r["group_size"])
    return out


def _ring_bytes(r: dict[str, Any]) -> float:
    """Bytes a device sends for one collective in a bandwidth-optimal (ring) schedule."""
    n = max(r["group_size"], 1)
    if r["op"] == "all-reduce":
        return 2 * (n - 1) / n * r["bytes"]
    if r["op"] == "reduce-scatter":  # the result is 1/n of the input
        return (n - 1) * r["bytes"]
    if r["op"] == "collective-permute":
        return r["bytes"]
    return (n - 1) / n * r["bytes"]  # all-gather (result = the whole), all-to-all


def roofline(flops: float, bytes_accessed: float, rows: list[dict[str, Any]], chip: Chip, analytic_flops: float,
             global_batch: int) -> dict[str, Any]:
    """Lower bounds on the step time (compute at peak bf16, HBM at its bandwidth, collectives at the ICI/DCN
    bandwidth, all optimistic), their maximum, and the sentences/s and MFU ceilings it implies."""
    compute = flops / (chip.peak_bf16_tflops * 1e12)
    hbm = bytes_accessed / (chip.hbm_gbps * 1e9) if bytes_accessed is not None else 0.0
    ici = sum(_ring_bytes(r) for r in rows if not r["crosses_slices"]) / (chip.ici_gbps * 1e9)
    across = sum(_ring_bytes(r) for r in rows if r["crosses_slices"])
    dcn = across / (chip.dcn_gbps * 1e9) if across and chip.dcn_gbps else None
    bound = max(compute, hbm, ici, dcn or 0.0)
    return {"chip": chip.name, "source": chip.source, "compute_s": compute, "hbm_s": hbm, "ici_s": ici,
            "dcn_s": dcn, "step_s": bound, "limited_by": max((("compute", compute), ("HBM", hbm), ("ICI", ici),
                                                                ("DCN", dcn or 0.0)), key=lambda x: x[1])[0],
            "sentences_per_s": global_batch / bound if bound else None,
            "mfu_ceiling": analytic_flops / (chip.peak_bf16_tflops * 1e12) / bound if bound else None}


def tree_bytes(tree: Any, layout: sharding.Layout | None = None) -> dict[str, float]:
    """Parameter count, global bytes and bytes per device of an abstract tree (under a layout's shardings)."""
    leaves = jax.tree.leaves(tree)
    total = sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)
    per_device = total
    if layout is not None:
        n = layout.mesh.shape[sharding.DATA]
        per_device = sum(math.prod(x.shape) * x.dtype.itemsize / (n if layout.spec(tuple(x.shape)) else 1)
                         for x in leaves)
    return {"count": int(sum(math.prod(x.shape) for x in leaves)), "bytes": int(total),
            "bytes_per_device": int(per_device)}


# ------------------------------------------------------------------------------------------ the report


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
    rows = collectives(compiled.as_text(), list(p.mesh.devices.flat), p.global_batch, feature, shapes)
    state = args["state"]
    ratio = c["flops"] / analytic if analytic and c["flops"] is not None else None
    out = {
        "label": "compiled, not run",
        "target": {"topology": target.name, "jax_topology": target.topology, "platform": target.platform,
                   "chips": target.chips * num_slices, "devices": len(devices),
                   "devices_per_chip": len(devices) // (target.chips * num_slices), "slices": num_slices,
                   "device_kind": devices[0].device_kind, **versions()},
        "mesh": {"axes": dict(p.mesh.shape), "fsdp": p.layout.fsdp, "per_device_batch": per_device_batch,
                 "global_batch": p.global_batch, "length": p.length, "dtype": cfg.model.dtype,
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


def fits(cfg: Any, devices: list[Any], per_device_batch: int, what: str = "step") -> tuple[bool, float | None]:
    """(whether it compiles within HBM, total bytes per device when it does)."""
    try:
        if what == "step":
            compiled, _ = compile_step(program(cfg, devices, per_device_batch))
        else:
            compiled = compile_encoder(cfg, guide_architecture(cfg.model), devices[0], per_device_batch)
    except DoesNotFit:
        return False, None
    return True, float(memory(compiled, chip_of(devices[0]))["total_bytes"])


def max_batch(cfg: Any, devices: list[Any], what: str = "step", start: int = 8, limit: int = 1 << 17,
              resolution: int = 32, fits_fn: Any = fits) -> dict:
    """The largest per-device batch that compiles within HBM: two compiles fit memory = a + b x batch, the
    prediction is bracketed by compiles, then bisected to 1/resolution of the answer (6-8 compiles)."""
    tried: dict[int, bool] = {}

    def check(b: int) -> tuple[bool, float | None]:
        ok, mem = fits_fn(cfg, devices, b, what)
        tried[b] = ok
        log.info("%s at per-device batch %d: %s", what, b, "fits" if ok else "does not fit")
        return ok, mem

    ok1, m1 = check(start)
    if not ok1:
        lo, hi = 0, start
    else:
        ok2, m2 = check(2 * start)
        if not ok2:
            lo, hi = start, 2 * start
        else:
            hbm = chip_of(devices[0]).hbm_gib * GiB
            slope = max((m2 - m1) / start, 1.0)
            guess = int(min(limit, max(2 * start, (hbm - m1) / slope + start)))
            lo, hi = 2 * start, None
            b = guess
            while hi is None:  # bracket the prediction: step up until a compile fails
                ok, _ = check(b)
                if ok:
                    lo, b = b, min(limit, max(b + 1, int(b * (1 + 2 / resolution))))
                    if lo >= limit:
                        hi = limit + 1
                else:
                    hi = b
    while hi - lo > max(1, lo // resolution):
        mid = (lo + hi) // 2
        if check(mid)[0]:
            lo = mid
        else:
            hi = mid
    return {"what": what, "max_per_device_batch": lo, "first_failing": hi, "resolution": f"1/{resolution}",
            "compiles": len(tried),
            "tried": {str(k): v for k, v in sorted(tried.items())}}


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
                 f"({100 * mem['headroom']:.1f} % headroom): {'fits' if mem['fits'] else 'does not fit'}")
    rep = r.get("replicated_memory")
    if rep:
        lines.append("  the same step with replicated params: " + (
            f"{_gib(rep['total_bytes'])} ({'fits' if rep['fits'] else 'does not fit'})" if "total_bytes" in rep
            else f"does not fit ({rep['compiler']})"))
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
