"""What the compiler says about a compiled program: memory per device, cost, the collectives in its HLO (by
opcode and by role in SG-OPT's step), a roofline bound from a chip's datasheet numbers, and parameter bytes."""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import numpy as np

from sgcl_jax import sharding
from sgcl_jax.topologies import Chip

GiB = 2**30


# ------------------------------------------------------------------------------------------ analyses


def memory(compiled: Any, chip: Chip) -> dict[str, Any]:
    """Per-device bytes from memory_analysis(), their total against the chip's HBM."""
    m = compiled.memory_analysis()
    parts = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp",
                                                                 "generated_code")}
    total = parts["argument"] + parts["output"] - parts["alias"] + parts["temp"] + parts["generated_code"]
    hbm = chip.hbm_gib * GiB
    # The TPU compiler refuses a program it cannot place in HBM (an out-of-memory is a compile error), and it has
    # admitted programs whose sum here exceeds HBM (bert-base, FSDP + remat, 836 a device on v5e: 16.30 GiB of
    # 16): on a TPU, compiled means it fits, and the sum is then an over-count. Other compilers do not refuse.
    over = total > hbm
    return {**{f"{k}_bytes": v for k, v in parts.items()}, "total_bytes": total, "hbm_bytes": hbm,
            "headroom": 1 - total / hbm, "fits": not over or chip.name.startswith("TPU"), "sum_over_hbm": over}


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
                param_shapes: frozenset[tuple[int, ...]] = frozenset(), length: int = 0) -> list[dict[str, Any]]:
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
        row["role"] = _role(row["op"], arrays, global_batch, feature, param_shapes, length)
        out.append(row)
    return out


def _role(op: str, arrays: list[tuple[str, tuple[int, ...]]], global_batch: int, feature: int,
          param_shapes: frozenset[tuple[int, ...]] = frozenset(), length: int = 0) -> str:
    """What a collective is for, from its shapes: the ids or hidden states of every token of the global batch (a
    layout fault), the parameters' gradients or (FSDP) the parameters themselves, the global batch's vectors or
    views, per-sentence loss statistics; anything else counts as weights."""
    def rows(shape: tuple[int, ...]) -> int:
        return math.prod(shape[:-1]) if shape else 0

    def after_batch(shape: tuple[int, ...]) -> int:
        """The axis after a leading global batch (maybe split as devices x per device); 0 when there is none."""
        k = next((k for k in range(1, len(shape)) if math.prod(shape[:k]) >= global_batch), 0)
        return k if k and math.prod(shape[:k]) == global_batch else 0

    def tokens(shape: tuple[int, ...]) -> bool:
        k = after_batch(shape)
        return k > 0 and shape[k] == length

    if length and any(dt[0] in "bfsu" and tokens(s) for dt, s in arrays):
        return "activations: every token of the global batch, ids or hidden states (moving sentences, not weights)"

    def projected(shape: tuple[int, ...]) -> bool:
        return shape[-1:] == (feature,) and rows(shape) > 0 and rows(shape) % global_batch == 0

    gathers = op in ("all-gather", "collective-permute")
    if arrays and any(s in param_shapes for _, s in arrays):  # a weight's shape (the head's 4096 x 4096 too)
        if not gathers and all(s in param_shapes and after_batch(s) for _, s in arrays):
            # e.g. 768 sentences of bert-base against the head's first kernel (768 x 4096): say so, do not guess
            return ("gradients or negatives: a weight's shape that is also the global batch's (the HLO does not "
                    "say which)")
        return "parameters: gathering sharded weights (FSDP)" if gathers else "gradients: reduction over the data axis"
    if arrays and all(projected(s) for _, s in arrays):
        return "negatives: the global batch's projected vectors (or their gradient)"
    if arrays and all(global_batch in s and math.prod(s) <= 64 * global_batch for _, s in arrays):
        return "loss: per-sentence statistics of the global batch (log-sum-exp across devices)"
    if arrays and all(after_batch(s) for _, s in arrays):  # e.g. the guide's B x (L+1) x d views before the head
        return "negatives: the global batch's views or vectors (or their gradient)"
    if gathers:
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
