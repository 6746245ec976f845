"""Benchmark of the SG-OPT train step: JAX (one jitted step) and, side by side, a faithful PyTorch eager port.

    python -m sgcl_jax.bench --model bert-base --dtype float32 --batch 16 --torch        # the 10x target
    python -m sgcl_jax.bench --model bert-base --dtype bfloat16 --batch 256,1024 --remat
    python -m sgcl_jax.bench --model minilm --batch 16 --torch                           # 2 CPU cores

Timing excludes compilation (reported separately) and starts after a warm-up of every bucket shape; the device
is synchronised (block_until_ready / cuda.synchronize) before the clock stops. Weights are random (shape is
what matters); sentence lengths are drawn from the STS-B training sentences and padded as the trainer pads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
from collections.abc import Sequence
from typing import Any

from sgcl_jax import timing


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The results as a plain-text table."""
    head = (f"{'model':<10} {'dtype':<8} {'batch':>5} {'impl':<6} {'sent/s':>9} {'tok/s':>10} {'TFLOP/s':>8} "
            f"{'MFU':>6} {'mem GiB':>8} {'compile s':>9} {'speedup':>7}")
    lines = [head]
    for r in rows:
        for impl in ("jax", "torch"):
            if impl not in r:
                continue
            x = r[impl]
            mfu = f"{x['mfu']:.1%}" if x.get("mfu") is not None else "-"
            mem = f"{x['peak_memory_gib']:.2f}" if x.get("peak_memory_gib") is not None else "-"
            comp = f"{x['compile_seconds']:.1f}" if "compile_seconds" in x else "-"
            sp = f"{r['speedup']:.2f}x" if impl == "jax" and "speedup" in r else ""
            lines.append(f"{r['model']:<10} {r['dtype']:<8} {r['batch']:>5} {impl:<6} {x['sentences_per_s']:>9.1f} "
                         f"{x['tokens_per_s']:>10.0f} {x['tflops']:>8.3f} {mfu:>6} {mem:>8} {comp:>9} {sp:>7}")
    return "\n".join(lines)


def _save(rows: Any, path: str | None) -> int:
    if path:
        from sgcl_jax.files import write_json

        write_json(rows, path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI."""
    ap = argparse.ArgumentParser(prog="python -m sgcl_jax.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm",
                    help=f"comma-separated: {','.join(timing.SHAPES)} (default: %(default)s)")
    ap.add_argument("--dtype", default="float32", help="comma-separated: float32,bfloat16 (default: %(default)s)")
    ap.add_argument("--batch", default="16", help="comma-separated batch sizes (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per row (default: %(default)s)")
    ap.add_argument("--lengths", default="stsb",
                    help="'stsb' (sampled STS-B lengths) or a fixed token count (default: %(default)s)")
    ap.add_argument("--torch", action="store_true",
                    help="also time the PyTorch port of the released step (torch_reference)")
    ap.add_argument("--remat", action="store_true", help="rematerialise BERT_T's layers (large batches)")
    ap.add_argument("--head-dim", type=int, default=4096, help="projection head width (default: %(default)s)")
    ap.add_argument("--data-dir", default=None, help="STS data folder (default: $SGCL_DATA_DIR)")
    ap.add_argument("--tokenizer", default="minilm",
                    help="tokenizer name or folder for the STS-B lengths (default: %(default)s)")
    ap.add_argument("--eval", action="store_true", help="time encoding all STS tasks instead of the train step")
    ap.add_argument("--pipeline", action="store_true",
                    help="time the host input pipeline alone (tokenise, pad, assemble) on one core")
    ap.add_argument("--transfer", action="store_true",
                    help="time the SentEval transfer evaluation (encoding + every classifier fit)")
    ap.add_argument("--encoder", default="minilm", help="for --transfer: a model name, folder or run "
                    "(default: %(default)s)")
    ap.add_argument("--pooling", default="cls", help="for --transfer (default: %(default)s)")
    ap.add_argument("--tasks", default="transfer", help="for --transfer (default: %(default)s)")
    ap.add_argument("--classifier", default="logreg", help="for --transfer: logreg or mlp (default: %(default)s)")
    ap.add_argument("--kfold", type=int, default=10, help="for --transfer (default: %(default)s)")
    ap.add_argument("--seeds", default="1111", help="for --transfer: classifier seeds (default: %(default)s)")
    ap.add_argument("--senteval-dir", default=None, help="for --transfer (default: $SGCL_SENTEVAL_DIR)")
    ap.add_argument("--cache-dir", default=None, help="for --transfer: reuse cached features from here (the "
                    "encoding time then is the cache's; default: encode)")
    ap.add_argument("--sklearn", default="", help="for --transfer: inner k-fold tasks whose logreg search is also "
                    "run fit by fit with scikit-learn, e.g. MR (default: none)")
    ap.add_argument("--sklearn-sample", type=int, default=0, help="for --sklearn: time scikit-learn on this many "
                    "randomly drawn fits and extrapolate (default: all fits)")
    ap.add_argument("--json", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.transfer:
        from sgcl_jax.tasks import expand

        row = timing.bench_transfer(args.encoder, expand(args.tasks.split(",")), args.classifier, args.kfold,
                             [int(s) for s in args.seeds.split(",")], args.senteval_dir,
                             [t for t in args.sklearn.split(",") if t], args.pooling, args.cache_dir,
                             args.sklearn_sample)
        print(json.dumps(row, indent=2))
        return _save(row, args.json)
    if args.pipeline:
        rows = [timing.bench_pipeline(int(b), args.steps, 128, args.tokenizer, args.data_dir)
                for b in args.batch.split(",")]
        for r in rows:
            print(f"host pipeline, batch {r['batch']}: {r['sentences_per_s']:.0f} sentences/s on 1 core "
                  f"({r['steps']} batches in {r['seconds']:.2f} s)")
        return _save(rows, args.json)
    if args.eval:
        rows = [timing.bench_eval(m, d, args.data_dir, args.tokenizer) for m in args.model.split(",")
                for d in args.dtype.split(",")]
        for r in rows:
            print(f"encode {r['sentences']} sentences of {','.join(r['tasks'])} with {r['model']} {r['dtype']} on "
                  f"{r['device']}: {r['seconds']:.2f} s after compilation ({r['first_pass_seconds']:.2f} s first)")
        return _save(rows, args.json)
    rows = []
    for model in args.model.split(","):
        for dtype in args.dtype.split(","):
            for batch in (int(b) for b in args.batch.split(",")):
                try:
                    rows.append(timing.run(model, dtype, batch, args.steps, args.lengths, args.torch, args.remat,
                                    args.head_dim, data_dir=args.data_dir, tokenizer=args.tokenizer))
                except Exception as e:  # an OOM at one size should not lose the other rows
                    rows.append({"model": model, "dtype": dtype, "batch": batch, "error": f"{type(e).__name__}: "
                                 f"{str(e)[:300]}"})
                    print(f"{model} {dtype} {batch}: {rows[-1]['error']}", file=sys.stderr)
                if "error" not in rows[-1]:
                    print(format_rows(rows[-1:]), flush=True)
    ok = [r for r in rows if "error" not in r]
    print(format_rows(ok))
    print(f"host max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if args.json:
        from sgcl_jax.files import write_json

        write_json([{**r, "config": dataclasses.asdict(timing.SHAPES[r["model"]])} for r in rows], args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
