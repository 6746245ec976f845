"""The README's "Planning a pod run" table from `python -m sgcl_jax.aot`'s own JSON: first one report per model x
topology at the paper's global batch (16, spread over the devices), then the largest per-device batch (replicated
and FSDP) for the cells given to --max-batch. One JSON per command in --out; a JSON already there is not compiled
again, and a search killed midway resumes from its compiles (<cell>.json.compiles.jsonl); the table is printed
from the JSONs present.

    JAX_PLATFORMS=cpu python benchmarks/pod_table.py --out results/pod_table --max-batch bert-base:v5e-256
    python benchmarks/pod_table.py --out results/pod_table --table-only
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

MODELS = {"MiniLM": ["--config", "default"], "bert-base": ["--config", "bert_base"],
          "bert-large": ["--config", "bert_base", "--config.model.name=bert-large-uncased"]}
TOPOLOGIES = ("v5e-8", "v5e-256", "v4-32", "v5p-128", "v6e-256")
# The max-batch searches and their flags: FSDP keeps more activations per sentence than the replicated layout
# unless BERT_T's layers are rematerialised (README), so FSDP is searched with and without model.remat.
LAYOUTS = {"replicated": [], "fsdp": ["--config.mesh.fsdp=True"],
           "fsdp_remat": ["--config.mesh.fsdp=True", "--config.model.remat=True"]}
COMMON = ["--config.model.max_length=128", "--config.data.batch_size=16",
          "--max-batch-resolution", "8"]


def command(model: str, topology: str, out: Path, search: str | None = None, prior: Path | None = None) -> list[str]:
    """The aot command line of one cell: the report, or (search one of LAYOUTS) its largest batch, aimed
    by an earlier search's JSON (`prior`) when there is one."""
    aimed = ["--max-batch-prior", str(prior)] if prior else []
    extra = [] if search is None else ["--max-batch", "step", "--max-batch-only", *LAYOUTS[search], *aimed]
    return [sys.executable, "-m", "sgcl_jax.aot", *MODELS[model], "--topology", topology, *COMMON, *extra,
            "--out", str(out)]


def _run(cmd: list[str], out: Path) -> None:
    if out.exists():
        return
    t0 = time.time()
    print(f"started {' '.join(cmd[1:])}", flush=True)
    # The command's own log (each compile of a max-batch search, "fits" or not) goes through: a search runs for
    # tens of minutes.
    child = subprocess.Popen(cmd)
    # SIGTERM to this parent stops the search too (it logs its compile as interrupted), not only the parent.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        returncode = child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"{time.time() - t0:7.0f} s  exit {returncode}  {' '.join(cmd[1:])}", flush=True)
    if returncode in (128 + signal.SIGTERM, 128 + signal.SIGINT):  # the search was stopped: so is the table
        sys.exit(returncode)


def _aims(prior: Path, out: Path) -> bool:
    # pod.can_aim's rule, restated so that this parent does not import JAX (its children's compiles need the
    # host's memory): a line needs two fitting compiles' bytes (searches before 2026-12-04 kept none; one aimed
    # from a prior may keep one); with fewer the search starts at batch 8, tens of minutes a compile on a pod.
    return prior != out and prior.exists() and len(json.loads(prior.read_text()).get(
        "max_batch", {}).get("step", {}).get("bytes", {})) >= 2


def run_missing(folder: Path, models: list[str], topologies: list[str], searches: list[str],
                layouts: tuple[str, ...] = tuple(LAYOUTS), prior_dir: Path | None = None) -> None:
    """Compiles every report whose JSON is missing, then the max-batch searches asked for (model:topology), each
    aimed by the same cell's search in prior_dir (an earlier program's table), else by the same model and
    layout on v5e-8, else by this cell's search in another layout."""
    folder.mkdir(parents=True, exist_ok=True)
    for model in models:
        for topology in topologies:
            out = folder / f"{model}_{topology}.json"
            _run(command(model, topology, out), out)
    for cell in searches:
        model, topology = cell.split(":")
        for layout in layouts:
            out = folder / f"{model}_{topology}_max_{layout}.json"
            # An earlier search's memory aims the first compiles: 2-4 instead of 6-8, tens of minutes each.
            candidates = [prior_dir / out.name] if prior_dir else []
            candidates.append(folder / f"{model}_{TOPOLOGIES[0]}_max_{layout}.json")
            # Else this cell's other layouts: another layout's memory line, re-anchored on this search's first fit.
            candidates += [folder / f"{model}_{topology}_max_{other}.json" for other in layouts if other != layout]
            prior = next((p for p in candidates if _aims(p, out)), None)
            _run(command(model, topology, out, layout, prior), out)


def table(folder: Path) -> str:
    """The Markdown table from the JSONs present."""
    head = ("| model | topology | max batch / device (replicated) | max batch / device (FSDP) | max batch / device "
            "(FSDP + remat) | memory / device at "
            "global batch 16 | step bound | limited by | sentences/s bound | MFU ceiling | collective bytes / step "
            "| compiler FLOPs / analytic |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for model in MODELS:
        for topology in TOPOLOGIES:
            rep_file = folder / f"{model}_{topology}.json"
            if not rep_file.exists():
                continue
            rep = json.loads(rep_file.read_text())
            found = {}
            for layout in LAYOUTS:
                f = folder / f"{model}_{topology}_max_{layout}.json"
                mb = json.loads(f.read_text()).get("max_batch", {}).get("step", {}) if f.exists() else {}
                found[layout] = mb.get("max_per_device_batch", "-")
                for b in mb.get("process_killed_while_compiling", ()):  # counted as not fitting; say so
                    found[layout] = f"{found[layout]} ({b}: compile ran out of host memory)"
            if not rep.get("memory"):
                lines.append(f"| {model} | {topology} | does not fit: {rep.get('compiler', '')} |")
                continue
            mem, roof = rep["memory"], rep["roofline"]
            per = rep["mesh"]["per_device_batch"]
            coll = sum(s["bytes"] for s in rep["collectives"]["by_opcode"].values())
            lines.append(
                f"| {model} | {topology} | {found['replicated']} | {found['fsdp']} | {found['fsdp_remat']} | "
                f"{mem['total_bytes'] / 2**30:.2f} of {mem['hbm_bytes'] / 2**30:.0f} GiB ({per}/device) | "
                f"{roof['step_s'] * 1e3:.2f} ms | {roof['limited_by']} | {roof['sentences_per_s']:,.0f} | "
                f"{100 * roof['mfu_ceiling']:.1f} % | {coll / 2**20:.0f} MiB | {rep['cost']['ratio']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    """Compile what is missing (unless --table-only), then print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/pod_table", help="the folder of per-cell JSONs")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--topologies", default=",".join(TOPOLOGIES))
    ap.add_argument("--max-batch", default="", help="comma-separated model:topology cells to search")
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help=f"which max-batch searches, of {', '.join(LAYOUTS)}")
    ap.add_argument("--prior-dir", type=Path, help="an earlier program's table: its search of the same cell aims "
                    "the first compiles")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    folder = Path(args.out)
    if not args.table_only:
        run_missing(folder, args.models.split(","), args.topologies.split(","),
                    [c for c in args.max_batch.split(",") if c], tuple(args.layouts.split(",")), args.prior_dir)
    print(table(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
