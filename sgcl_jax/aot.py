"""Compiles the trainer's step for a TPU pod from a CPU host, before anyone pays for the pod (compiled, not run).

    python -m sgcl_jax.aot --config bert_base --topology v5e-256 --out report.json
    python -m sgcl_jax.aot --config bert_base --topology v4-32 --batch-per-device 64 --config.model.dtype=bfloat16
    python -m sgcl_jax.aot --config default --topology v5e-8 --max-batch all
    python -m sgcl_jax.aot --config bert_base --topology v5e-256 --num-slices 2 --config.mesh.fsdp=True

Topologies: the user's names (v5e-8, v5e-256, v4-32, v5p-128, v6e-256; v4 and v5p count TensorCores) or JAX's
(v5e:16x16, v4:2x2x4, v5:4x4x4). Needs `libtpu` next to jax (pip install "sgcl_jax[tpu]"); runs with
JAX_PLATFORMS=cpu. Prints memory per device (argument, output, alias, temp, code) against the chip's HBM, the
compiler's FLOPs against the analytic count, every collective with its bytes and group, and a roofline bound.
Exit status: 0 fits, 2 does not fit (the compiler's own "Used A of B hbm" line is printed), 1 any other failure.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from sgcl_jax import cli, pod, topologies
from sgcl_jax.config import Config
from sgcl_jax.files import write_json

log = logging.getLogger(__name__)

FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config: a shipped name (default, tiny, nli, bert_base) or a path to a .py file with "
                    "get_config(). Its fields are overridden with --config.<section>.<field>=value.",
    flag_values=FLAGS, lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "v5e-8, v5e-256, v4-32, v5p-128, v6e-256, ... or v5e:16x16",
                                flag_values=FLAGS)
_SLICES = flags.DEFINE_integer("num-slices", 1, "Slices joined over the data-center network (a hybrid ICI x DCN "
                               "mesh).")
_BATCH = flags.DEFINE_integer("batch-per-device", None, "Sentences per device (default: the config's global "
                              "data.batch_size spread over the devices, at least 1 each).", flag_values=FLAGS)
_MAX_BATCH = flags.DEFINE_enum("max-batch", "none", ["none", "step", "all"], "Also search the largest per-device "
                               "batch that compiles within HBM: for the train step, or for it and the evaluation "
                               "encoder ('all').", flag_values=FLAGS)
_RESOLUTION = flags.DEFINE_integer("max-batch-resolution", 32, "The search stops within 1/N of the answer.",
                                   flag_values=FLAGS)
_SEARCH_LOG = flags.DEFINE_string("search-log", None, "Keep every compile of the --max-batch search in this JSON-lines "
                                  "file, keyed by the program; a rerun compiles only what it lacks (default: <out>"
                                  ".compiles.jsonl when --out is given).", flag_values=FLAGS)
_SEARCH_ONLY = flags.DEFINE_bool("max-batch-only", False, "Compile only the --max-batch search, not the report at "
                                 "the config's batch (it saves 1-3 compiles).", flag_values=FLAGS)
_PRIOR = flags.DEFINE_string("max-batch-prior", None, "The JSON report of a --max-batch search on another target "
                              "(e.g. the same step on v5e-8): its memory aims this search's first compiles.",
                              flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "Write the report as JSON here.", flag_values=FLAGS)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the full traceback of a failure.", flag_values=FLAGS)
flags.mark_flags_as_required(["config", "topology"], flag_values=FLAGS)


def per_device_batch(cfg: Config, devices: int, given: int | None) -> int:
    """The flag, else the config's global batch over the data axis (rounded up, at least 1)."""
    if given is not None:
        if given < 1:
            raise ValueError(f"--batch-per-device {given}: must be >= 1")
        return given
    data = devices // cfg.mesh.model if cfg.mesh.data == -1 else cfg.mesh.data
    per = max(1, math.ceil(cfg.data.batch_size / data))
    if per * data != cfg.data.batch_size:
        log.info("data.batch_size=%d does not spread evenly over %d devices: compiling %d per device (global %d)",
                 cfg.data.batch_size, data, per, per * data)
    return per


def search(cfg: Config, target: topologies.Target, slices: int, whats: str) -> dict[str, dict]:
    """The --max-batch searches ('step' or 'all'), going on from the search log's answers for these very programs
    (each logged batch is lowered again and its key checked; nothing is compiled for that)."""
    devices = topologies.topology_devices(target, slices)
    path = _SEARCH_LOG.value or (f"{_OUT.value}.compiles.jsonl" if _OUT.value else None)
    compile_log = pod.CompileLog(path) if path else None
    found = {}
    for what in ("step", "encoder") if whats == "all" else ("step",):
        known = {}
        for b in sorted(compile_log.batches.get(what, ())) if compile_log else ():
            answer = pod.fits(cfg, devices, b, what, compile_log, compile=False)
            if answer is not None:
                known[b] = answer
        if known:
            log.info("%s: going on from %d answers in %s (%s)", what, len(known), path,
                     ", ".join(f"{b}: {'fits' if ok else 'no'}" for b, (ok, _) in sorted(known.items())))
        fits = functools.partial(pod.fits, compile_log=compile_log) if compile_log else pod.fits
        found[what] = pod.max_batch(cfg, devices, what, resolution=_RESOLUTION.value, fits_fn=fits, known=known,
                                    prior=pod.read_prior(_PRIOR.value, what))
        died = sorted(b for k, (b, w, _) in compile_log.died.items()
                      if w == what and compile_log.killed(k) and str(b) in found[what]["tried"]) if compile_log else []
        if died:
            found[what]["process_killed_while_compiling"] = died
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Flags (argv without the program; default sys.argv[1:]) -> the report (text and JSON) -> the exit code:
    2 when the step does not fit, 1 on any other failure."""
    cli.parse(FLAGS, __doc__, "sgcl_jax.aot", argv)
    cli.setup_logging(_VERBOSE.value)
    try:
        cfg = Config.from_dict(_CONFIG.value)
        target = topologies.resolve_topology(_TOPOLOGY.value)
        if _SLICES.value < 1:
            raise ValueError(f"--num-slices {_SLICES.value}: must be >= 1")
        batch = per_device_batch(cfg, target.chips * _SLICES.value, _BATCH.value)
        if _SEARCH_ONLY.value and _MAX_BATCH.value == "none":
            raise ValueError("--max-batch-only needs --max-batch step|all")
        report = ({"label": "compiled, not run", "target": pod.describe_target(target, _SLICES.value)}
                  if _SEARCH_ONLY.value else pod.report(cfg, target, _SLICES.value, batch))
        if _MAX_BATCH.value != "none":
            report["max_batch"] = search(cfg, target, _SLICES.value, _MAX_BATCH.value)
    except pod.DoesNotFit as e:
        print(f"does not fit: {e}", file=sys.stderr)
        if _OUT.value:
            write_json({"label": "compiled, not run", "topology": _TOPOLOGY.value, "fits": False,
                        "compiler": str(e)}, _OUT.value)
        return cli.DOES_NOT_FIT
    except (*cli.USER_ERRORS, Exception) as e:  # a compile failure is an XlaRuntimeError
        return cli.fail(e, _VERBOSE.value)
    if not _SEARCH_ONLY.value:
        print(pod.format_report(report))
    for what, found in report.get("max_batch", {}).items():
        print(f"largest per-device batch for the {what}: {found['max_per_device_batch']} "
              f"({found['first_failing']} does not fit; {found['compiles']} compiles)" +
              "".join(f"; the compile at {b} killed its process (out of host memory?) and counts as not fitting"
                      for b in found.get("process_killed_while_compiling", ())))
    if _OUT.value:
        write_json(report, _OUT.value)
    return cli.OK


def run() -> None:
    """The console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
