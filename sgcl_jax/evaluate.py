"""Scores an encoder (the bundled model, a Hugging Face folder or a training run) on STS and transfer tasks and
prints the table with its protocol; or draws the layer x pooling grid, or pairs in 2-D.

    python -m sgcl_jax.evaluate --model minilm --tasks sts --pooling cls
    python -m sgcl_jax.evaluate --model runs/default --tasks transfer --classifier logreg
    python -m sgcl_jax.evaluate --model minilm --tasks sts17 --metric pearson
    python -m sgcl_jax.evaluate --model minilm --layers                 # every layer x {cls, mean, max}, STS-B test
    python -m sgcl_jax.evaluate --model minilm --model runs/default --plot-pairs pairs.png
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from sgcl_jax import cli, tasks
from sgcl_jax.config import CLASSIFIERS, DTYPES, POOLINGS
from sgcl_jax.evaluators import evaluate
from sgcl_jax.files import write_json
from sgcl_jax.pictures import layer_grid, pair_picture, plot_layer_grid
from sgcl_jax.runs import RunError, is_run, load_encoder, resolve_checkpoint
from sgcl_jax.scoring import AGGREGATIONS, METRICS, Settings, format_table

FLAGS = flags.FlagValues()
_MODEL = flags.DEFINE_multi_string("model", [], "'minilm', a Hugging Face folder or hub id, or a training run folder; "
                                   "repeat for --plot-pairs (default: minilm)", flag_values=FLAGS)
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint of a run folder.", flag_values=FLAGS)
_TASKS = flags.DEFINE_string("tasks", "sts", "Comma-separated task names, aliases (sts, sts17, transfer) or folders "
                             "of STS files.", flag_values=FLAGS)
_POOLING = flags.DEFINE_enum("pooling", None, list(POOLINGS), "Default: the run's, else cls.", flag_values=FLAGS)
_LAYER = flags.DEFINE_string("layer", "last", "'last', 'first_last' or a hidden-state index, 0 = embeddings.",
                             flag_values=FLAGS)
_METRIC = flags.DEFINE_enum("metric", "auto", list(METRICS), "STS correlation; auto = Spearman, Pearson for STS17.",
                            flag_values=FLAGS)
_AGGREGATION = flags.DEFINE_enum("aggregation", "all", list(AGGREGATIONS), "How STS12-16 subsets combine.",
                                 flag_values=FLAGS)
_MAX_LENGTH = flags.DEFINE_integer("max-length", None, "Default: the run's, else 128.", flag_values=FLAGS)
_BATCH_SIZE = flags.DEFINE_integer("batch-size", 64, "Encoding batch.", flag_values=FLAGS)
_DTYPE = flags.DEFINE_enum("dtype", None, list(DTYPES), "Compute dtype (default: the run's eval dtype, else "
                           "float32).", flag_values=FLAGS)
_DATA_DIR = flags.DEFINE_string("data-dir", None, "STS data folder (default: $SGCL_DATA_DIR, else the user cache).",
                                flag_values=FLAGS)
_SENTEVAL_DIR = flags.DEFINE_string("senteval-dir", None, "SentEval data folder (default: $SGCL_SENTEVAL_DIR).",
                                    flag_values=FLAGS)
_CLASSIFIER = flags.DEFINE_enum("classifier", "logreg", list(CLASSIFIERS), "Transfer tasks' classifier.",
                                flag_values=FLAGS)
_KFOLD = flags.DEFINE_integer("kfold", 10, "Transfer cross-validation folds.", flag_values=FLAGS)
_SEEDS = flags.DEFINE_list("seeds", ["1111"], "Classifier seeds; mean +- std over them.", flag_values=FLAGS)
_CACHE_DIR = flags.DEFINE_string("cache-dir", None, "Where transfer features are cached (default: the user cache "
                                 "for a run folder, else no cache).", flag_values=FLAGS)
_DOWNLOAD = flags.DEFINE_bool("download", False, "Fetch missing STS tasks into the data folder.", flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "Write the results JSON here.", flag_values=FLAGS)
_LAYERS = flags.DEFINE_bool("layers", False, "The layer x pooling grid on STS-B test (+ PNG).", flag_values=FLAGS)
_PLOT_PAIRS = flags.DEFINE_string("plot-pairs", None, "Draw 20 positive and 20 negative STS-B dev pairs for each "
                                  "--model, side by side, into this PNG.", flag_values=FLAGS)
_PROJECTION = flags.DEFINE_enum("projection", "tsne", ["tsne", "pca"], "2-D projection for --plot-pairs.",
                                flag_values=FLAGS)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Full tracebacks on errors.", flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
    """Flags (argv without the program; default sys.argv[1:]) -> scores, grid or picture -> the exit code."""
    cli.parse(FLAGS, __doc__, "sgcl_jax.evaluate", argv)
    cli.setup_logging(_VERBOSE.value)
    try:
        return _run_cli(_MODEL.value or ["minilm"])
    except (OSError, ValueError, RunError) as e:
        return cli.fail(e, _VERBOSE.value)


def _run_cli(models: list[str]) -> int:
    layer: int | str = int(_LAYER.value) if _LAYER.value.lstrip("-").isdigit() else _LAYER.value
    overrides = {"pooling": _POOLING.value, "max_length": _MAX_LENGTH.value, "dtype": _DTYPE.value, "layer": layer}
    encoders = [load_encoder(m, which=_WHICH.value, **overrides) for m in models]
    if _PLOT_PAIRS.value:
        rows = pair_picture(encoders, _PLOT_PAIRS.value, _DATA_DIR.value, _PROJECTION.value)
        for r in rows:
            print(f"{r['model']}: mean cosine of positive pairs {r['positive_cosine']:.3f}, negative pairs "
                  f"{r['negative_cosine']:.3f} (gap {r['gap']:.3f})")
        if _OUT.value:
            write_json(rows, _OUT.value)
        print(f"wrote {_PLOT_PAIRS.value}")
        return 0
    if len(encoders) > 1:
        raise ValueError("several --model values are for --plot-pairs only")
    encoder = encoders[0]
    if _LAYERS.value:
        grid = layer_grid(encoder, _DATA_DIR.value, "spearman" if _METRIC.value == "auto" else _METRIC.value,
                          _BATCH_SIZE.value)
        out = Path(_OUT.value or "layers.json")
        write_json(grid, out)
        plot_layer_grid(grid, out.with_suffix(".png"))
        print(f"{'layer':<6}" + "".join(f"{p:>8}" for p in grid["poolings"]))
        for i, row in zip(grid["layers"], grid["scores"], strict=True):
            print(f"{i:<6}" + "".join(f"{v:8.2f}" for v in row))
        print(f"wrote {out} and {out.with_suffix('.png')}")
        return 0
    names = tasks.expand([t.strip() for t in _TASKS.value.split(",") if t.strip()])
    try:
        seeds = tuple(int(s) for s in _SEEDS.value)
    except ValueError:
        raise ValueError(f"--seeds {','.join(_SEEDS.value)}: expected integers, e.g. 1111,2222") from None
    run_folder, _, _ = resolve_checkpoint(models[0])
    # A run folder's features are cached outside it (a read-only command writes nothing into a run); the cache key
    # is the weights' fingerprint, so one user cache serves every run and checkpoint.
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sgcl_jax"
    cache = _CACHE_DIR.value or (str(user_cache) if is_run(run_folder) else None)
    settings = Settings(metric=_METRIC.value, aggregation=_AGGREGATION.value, batch_size=_BATCH_SIZE.value,
                        data_dir=_DATA_DIR.value, download=_DOWNLOAD.value, senteval_dir=_SENTEVAL_DIR.value,
                        classifier=_CLASSIFIER.value, kfold=_KFOLD.value, classifier_seeds=seeds, cache_dir=cache)
    result = evaluate(encoder, names, settings)
    print(format_table(result))
    print(f"encoding + scoring: {result['seconds']} s")
    if _OUT.value:
        write_json(result, _OUT.value)
    return 0 if result["tasks"] else 1


def run() -> None:
    """The console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
