"""Benchmark of the SG-OPT train step: JAX (one jitted step) and, side by side, a faithful PyTorch eager port.

    python -m sgcl_jax.bench --model bert-base --dtype float32 --batch 16 --torch        # the 10x target
    python -m sgcl_jax.bench --model bert-base --dtype bfloat16 --batch 256,1024 --remat
    python -m sgcl_jax.bench --model minilm --batch 16 --torch                           # 2 CPU cores

Timing excludes compilation (reported separately) and starts after a warm-up of every bucket shape; the device
is synchronised (block_until_ready / cuda.synchronize) before the clock stops. Weights are random (shape is
what matters); sentence lengths are drawn from the STS-B training sentences and padded as the trainer pads.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
from collections.abc import Sequence
from typing import Any

from absl import flags

from sgcl_jax import cli, timing


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


FLAGS = flags.FlagValues()
_MODEL = flags.DEFINE_string("model", "minilm", f"Comma-separated: {','.join(timing.SHAPES)}.", flag_values=FLAGS)
_DTYPE = flags.DEFINE_string("dtype", "float32", "Comma-separated: float32,bfloat16.", flag_values=FLAGS)
_BATCH = flags.DEFINE_string("batch", "16", "Comma-separated batch sizes.", flag_values=FLAGS)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per row.", flag_values=FLAGS)
_LENGTHS = flags.DEFINE_string("lengths", "stsb", "'stsb' (sampled STS-B lengths) or a fixed token count.",
                               flag_values=FLAGS)
_TORCH = flags.DEFINE_bool("torch", False, "Also time the PyTorch port of the released step (torch_reference).",
                           flag_values=FLAGS)
_REMAT = flags.DEFINE_bool("remat", False, "Rematerialise BERT_T's layers (large batches).", flag_values=FLAGS)
_HEAD_DIM = flags.DEFINE_integer("head-dim", 4096, "Projection head width.", flag_values=FLAGS)
_DATA_DIR = flags.DEFINE_string("data-dir", None, "STS data folder (default: $SGCL_DATA_DIR).", flag_values=FLAGS)
_TOKENIZER = flags.DEFINE_string("tokenizer", "minilm", "Tokenizer name or folder for the STS-B lengths.",
                                 flag_values=FLAGS)
_EVAL = flags.DEFINE_bool("eval", False, "Time encoding all STS tasks instead of the train step.", flag_values=FLAGS)
_PIPELINE = flags.DEFINE_bool("pipeline", False, "Time the host input pipeline alone (tokenise, pad, assemble) on "
                              "one core.", flag_values=FLAGS)
_TRANSFER = flags.DEFINE_bool("transfer", False, "Time the SentEval transfer evaluation (encoding + every "
                              "classifier fit).", flag_values=FLAGS)
_ENCODER = flags.DEFINE_string("encoder", "minilm", "For --transfer: a model name, folder or run.", flag_values=FLAGS)
_POOLING = flags.DEFINE_string("pooling", "cls", "For --transfer.", flag_values=FLAGS)
_TASKS = flags.DEFINE_string("tasks", "transfer", "For --transfer.", flag_values=FLAGS)
_CLASSIFIER = flags.DEFINE_string("classifier", "logreg", "For --transfer: logreg or mlp.", flag_values=FLAGS)
_KFOLD = flags.DEFINE_integer("kfold", 10, "For --transfer.", flag_values=FLAGS)
_SEEDS = flags.DEFINE_list("seeds", ["1111"], "For --transfer: classifier seeds.", flag_values=FLAGS)
_SENTEVAL_DIR = flags.DEFINE_string("senteval-dir", None, "For --transfer (default: $SGCL_SENTEVAL_DIR).",
                                    flag_values=FLAGS)
_CACHE_DIR = flags.DEFINE_string("cache-dir", None, "For --transfer: reuse cached features from here (the encoding "
                                 "time then is the cache's; default: encode).", flag_values=FLAGS)
_SKLEARN = flags.DEFINE_list("sklearn", [], "For --transfer: inner k-fold tasks whose logreg search is also run fit "
                             "by fit with scikit-learn, e.g. MR.", flag_values=FLAGS)
_SKLEARN_SAMPLE = flags.DEFINE_integer("sklearn-sample", 0, "For --sklearn: time scikit-learn on this many randomly "
                                       "drawn fits and extrapolate (default: all fits).", flag_values=FLAGS)
_JSON = flags.DEFINE_string("json", None, "Write the rows as JSON here.", flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
    """Flags (argv without the program; default sys.argv[1:]) -> the timings -> the exit code."""
    cli.parse(FLAGS, __doc__, "sgcl_jax.bench", argv)
    cli.setup_logging()  # the per-task lines of a long --transfer run, as the other commands print them
    if _TRANSFER.value:
        from sgcl_jax.tasks import expand

        row = timing.bench_transfer(_ENCODER.value, expand(_TASKS.value.split(",")), _CLASSIFIER.value, _KFOLD.value,
                             [int(s) for s in _SEEDS.value], _SENTEVAL_DIR.value,
                             list(_SKLEARN.value), _POOLING.value, _CACHE_DIR.value,
                             _SKLEARN_SAMPLE.value)
        print(json.dumps(row, indent=2))
        return _save(row, _JSON.value)
    if _PIPELINE.value:
        rows = [timing.bench_pipeline(int(b), _STEPS.value, 128, _TOKENIZER.value, _DATA_DIR.value)
                for b in _BATCH.value.split(",")]
        for r in rows:
            print(f"host pipeline, batch {r['batch']}: {r['sentences_per_s']:.0f} sentences/s on 1 core "
                  f"({r['steps']} batches in {r['seconds']:.2f} s)")
        return _save(rows, _JSON.value)
    if _EVAL.value:
        rows = [timing.bench_eval(m, d, _DATA_DIR.value, _TOKENIZER.value) for m in _MODEL.value.split(",")
                for d in _DTYPE.value.split(",")]
        for r in rows:
            print(f"encode {r['sentences']} sentences of {','.join(r['tasks'])} with {r['model']} {r['dtype']} on "
                  f"{r['device']}: {r['seconds']:.2f} s after compilation ({r['first_pass_seconds']:.2f} s first)")
        return _save(rows, _JSON.value)
    rows = []
    for model in _MODEL.value.split(","):
        for dtype in _DTYPE.value.split(","):
            for batch in (int(b) for b in _BATCH.value.split(",")):
                try:
                    rows.append(timing.time_train_step(model, dtype, batch, _STEPS.value, _LENGTHS.value,
                                                       _TORCH.value, _REMAT.value, _HEAD_DIM.value,
                                                       data_dir=_DATA_DIR.value, tokenizer=_TOKENIZER.value))
                except Exception as e:  # an OOM at one size should not lose the other rows
                    rows.append({"model": model, "dtype": dtype, "batch": batch, "error": f"{type(e).__name__}: "
                                 f"{str(e)[:300]}"})
                    print(f"{model} {dtype} {batch}: {rows[-1]['error']}", file=sys.stderr)
                if "error" not in rows[-1]:
                    print(format_rows(rows[-1:]), flush=True)
    ok = [r for r in rows if "error" not in r]
    print(format_rows(ok))
    print(f"host max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if _JSON.value:
        from sgcl_jax.files import write_json

        write_json([{**r, "config": dataclasses.asdict(timing.SHAPES[r["model"]])} for r in rows], _JSON.value)
    return 0 if ok else 1


def run() -> None:
    """The console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
