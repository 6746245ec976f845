"""The README's "Planning a pod run" table: runs `python -m sgcl_jax.aot` for each model x topology (replicated with
--max-batch all, then FSDP with --max-batch step), one JSON per run in --out (resumable: a JSON already there is not
compiled again), then prints the Markdown table from those JSONs.

    JAX_PLATFORMS=cpu python benchmarks/pod_table.py --out runs/pod_table            # compile what is missing
    python benchmarks/pod_table.py --out runs/pod_table --table-only                 # the table from the JSONs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MODELS = {"MiniLM": ["--config", "default"], "bert-base": ["--config", "bert_base"],
          "bert-large": ["--config", "bert_base", "--config.model.name=bert-large-uncased"]}
TOPOLOGIES = ("v5e-8", "v5e-256", "v4-32", "v5p-128", "v6e-256")
COMMON = ["--config.model.max_length=128", "--config.data.batch_size=16",
          "--max-batch-resolution", "8"]


def command(model: str, topology: str, fsdp: bool, out: Path) -> list[str]:
    """The aot command line of one cell."""
    extra = ["--config.mesh.fsdp=True", "--max-batch", "step"] if fsdp else ["--max-batch", "all"]
    return [sys.executable, "-m", "sgcl_jax.aot", *MODELS[model], "--topology", topology, *COMMON, *extra,
            "--out", str(out)]


def run_missing(folder: Path, models: list[str], topologies: list[str]) -> None:
    """Compiles every cell whose JSON is missing, logging each command and its wall time."""
    folder.mkdir(parents=True, exist_ok=True)
    for model in models:
        for topology in topologies:
            for fsdp in (False, True):
                out = folder / f"{model}_{topology}_{'fsdp' if fsdp else 'replicated'}.json"
                if out.exists():
                    continue
                cmd = command(model, topology, fsdp, out)
                t0 = time.time()
                r = subprocess.run(cmd, capture_output=True, text=True)
                print(f"{time.time() - t0:7.0f} s  exit {r.returncode}  {' '.join(cmd[1:])}", flush=True)
                if r.returncode not in (0, 2):
                    print(r.stderr[-3000:], file=sys.stderr)


def table(folder: Path) -> str:
    """The Markdown table from the JSONs present."""
    head = ("| model | topology | max batch / device (replicated) | max batch / device (FSDP) | memory / device at "
            "global batch 16 | step bound | limited by | sentences/s bound | MFU ceiling | collective bytes / step "
            "| compiler FLOPs / analytic |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for model in MODELS:
        for topology in TOPOLOGIES:
            rep_file = folder / f"{model}_{topology}_replicated.json"
            fsdp_file = folder / f"{model}_{topology}_fsdp.json"
            if not rep_file.exists():
                continue
            rep = json.loads(rep_file.read_text())
            fsdp = json.loads(fsdp_file.read_text()) if fsdp_file.exists() else {}
            if not rep.get("memory"):
                lines.append(f"| {model} | {topology} | does not fit: {rep.get('compiler', '')} |")
                continue
            mem, roof, mb = rep["memory"], rep["roofline"], rep.get("max_batch", {})
            per = rep["mesh"]["per_device_batch"]
            coll = sum(s["bytes"] for s in rep["collectives"]["by_opcode"].values())
            fs = (fsdp.get("max_batch") or {}).get("step", {}).get("max_per_device_batch", "-")
            lines.append(
                f"| {model} | {topology} | {mb.get('step', {}).get('max_per_device_batch', '-')} | {fs} | "
                f"{mem['total_bytes'] / 2**30:.2f} of {mem['hbm_bytes'] / 2**30:.0f} GiB ({per}/device) | "
                f"{roof['step_s'] * 1e3:.2f} ms | {roof['limited_by']} | {roof['sentences_per_s']:,.0f} | "
                f"{100 * roof['mfu_ceiling']:.1f} % | {coll / 2**20:.0f} MiB | {rep['cost']['ratio']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    """Compile what is missing (unless --table-only), then print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/pod_table", help="the folder of per-cell JSONs")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--topologies", default=",".join(TOPOLOGIES))
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    folder = Path(args.out)
    if not args.table_only:
        run_missing(folder, args.models.split(","), args.topologies.split(","))
    print(table(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
