"""TPU topologies and the one-GPU targets the pod compilation describes, and the chips' datasheet numbers.

Topology names in both forms: the user's (`v5e-256`, `v4-32`, `v5p-128`) and JAX's (`v5e:16x16`, `v4:2x2x4`), with
the chip config, chips per host and wraparound per name as MaxText's `accelerator_to_spec_map.py` sets them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from importlib import metadata
from typing import Any

import jax

GiB = 2**30


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
