"""Scores an encoder (the bundled model, a Hugging Face folder or a training run) on STS and transfer tasks and
prints the table with its protocol; or draws the layer x pooling grid, or pairs in 2-D.

    python -m sgcl_jax.evaluate --model minilm --tasks sts --pooling cls
    python -m sgcl_jax.evaluate --model runs/default --tasks transfer --classifier logreg
    python -m sgcl_jax.evaluate --model minilm --tasks sts17 --metric pearson
    python -m sgcl_jax.evaluate --model minilm --layers                 # every layer x {cls, mean, max}, STS-B test
    python -m sgcl_jax.evaluate --model minilm --model runs/default --plot-pairs pairs.png
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sgcl_jax import tasks
from sgcl_jax.config import POOLINGS
from sgcl_jax.files import write_json
from sgcl_jax.pictures import layer_grid, pair_picture, plot_layer_grid
from sgcl_jax.runs import RunError, is_run, load_encoder, resolve_checkpoint
from sgcl_jax.scoring import AGGREGATIONS, METRICS, Settings, evaluate, format_table


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI."""
    ap = argparse.ArgumentParser(prog="python -m sgcl_jax.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=None,
                    help="'minilm', a Hugging Face folder or hub id, or a training run folder; repeat for "
                         "--plot-pairs (default: minilm)")
    ap.add_argument("--which", default="best", choices=("best", "latest"),
                    help="checkpoint of a run folder (default: %(default)s)")
    ap.add_argument("--tasks", default="sts", help="comma-separated task names, aliases (sts, sts17, transfer) or "
                    "folders of STS files (default: %(default)s)")
    ap.add_argument("--pooling", default=None, choices=POOLINGS, help="default: the run's, else cls")
    ap.add_argument("--layer", default="last",
                    help="'last', 'first_last' or a hidden-state index, 0 = embeddings (default: %(default)s)")
    ap.add_argument("--metric", default="auto", choices=METRICS,
                    help="STS correlation; auto = Spearman, Pearson for STS17 (default: %(default)s)")
    ap.add_argument("--aggregation", default="all", choices=AGGREGATIONS,
                    help="how STS12-16 subsets combine (default: %(default)s)")
    ap.add_argument("--max-length", type=int, default=None, help="default: the run's, else 128")
    ap.add_argument("--batch-size", type=int, default=64, help="encoding batch (default: %(default)s)")
    ap.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                    help="compute dtype (default: the run's eval dtype, else float32)")
    ap.add_argument("--data-dir", default=None, help="STS data folder (default: $SGCL_DATA_DIR, else the user cache)")
    ap.add_argument("--senteval-dir", default=None, help="SentEval data folder (default: $SGCL_SENTEVAL_DIR)")
    ap.add_argument("--classifier", default="logreg", choices=("logreg", "mlp"),
                    help="transfer tasks' classifier (default: %(default)s)")
    ap.add_argument("--kfold", type=int, default=10, help="transfer cross-validation folds (default: %(default)s)")
    ap.add_argument("--seeds", default="1111",
                    help="comma-separated classifier seeds; mean +- std over them (default: %(default)s)")
    ap.add_argument("--cache-dir", default=None, help="where transfer features are cached (default: the run folder "
                    "for a run, else no cache)")
    ap.add_argument("--download", action="store_true", help="fetch missing STS tasks into the data folder")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    ap.add_argument("--layers", action="store_true", help="the layer x pooling grid on STS-B test (+ PNG)")
    ap.add_argument("--plot-pairs", default=None, metavar="PNG",
                    help="draw 20 positive and 20 negative STS-B dev pairs for each --model, side by side")
    ap.add_argument("--projection", default="tsne", choices=("tsne", "pca"),
                    help="2-D projection for --plot-pairs (default: %(default)s)")
    ap.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    args = ap.parse_args(argv)
    models = args.model or ["minilm"]
    try:
        return _run_cli(args, models)
    except (OSError, ValueError, RunError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1  # the exit-code convention of every command (README: Command lines)


def _run_cli(args: argparse.Namespace, models: list[str]) -> int:
    layer: int | str = int(args.layer) if args.layer.lstrip("-").isdigit() else args.layer
    overrides = {"pooling": args.pooling, "max_length": args.max_length, "dtype": args.dtype, "layer": layer}
    encoders = [load_encoder(m, which=args.which, **overrides) for m in models]
    if args.plot_pairs:
        rows = pair_picture(encoders, args.plot_pairs, args.data_dir, args.projection)
        for r in rows:
            print(f"{r['model']}: mean cosine of positive pairs {r['positive_cosine']:.3f}, negative pairs "
                  f"{r['negative_cosine']:.3f} (gap {r['gap']:.3f})")
        if args.out:
            write_json(rows, args.out)
        print(f"wrote {args.plot_pairs}")
        return 0
    if len(encoders) > 1:
        raise ValueError("several --model values are for --plot-pairs only")
    encoder = encoders[0]
    if args.layers:
        grid = layer_grid(encoder, args.data_dir, "spearman" if args.metric == "auto" else args.metric,
                          args.batch_size)
        out = Path(args.out or "layers.json")
        write_json(grid, out)
        plot_layer_grid(grid, out.with_suffix(".png"))
        print(f"{'layer':<6}" + "".join(f"{p:>8}" for p in grid["poolings"]))
        for i, row in zip(grid["layers"], grid["scores"], strict=True):
            print(f"{i:<6}" + "".join(f"{v:8.2f}" for v in row))
        print(f"wrote {out} and {out.with_suffix('.png')}")
        return 0
    names = tasks.expand([t.strip() for t in args.tasks.split(",") if t.strip()])
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    run_folder, _, _ = resolve_checkpoint(models[0])
    # A run folder's features are cached outside it (a read-only command writes nothing into a run); the cache key
    # is the weights' fingerprint, so one user cache serves every run and checkpoint.
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sgcl_jax"
    cache = args.cache_dir or (str(user_cache) if is_run(run_folder) else None)
    settings = Settings(metric=args.metric, aggregation=args.aggregation, batch_size=args.batch_size,
                        data_dir=args.data_dir, download=args.download, senteval_dir=args.senteval_dir,
                        classifier=args.classifier, kfold=args.kfold, classifier_seeds=seeds, cache_dir=cache)
    result = evaluate(encoder, names, settings)
    print(format_table(result))
    print(f"encoding + scoring: {result['seconds']} s")
    if args.out:
        write_json(result, args.out)
    return 0 if result["tasks"] else 1


if __name__ == "__main__":
    sys.exit(main())
