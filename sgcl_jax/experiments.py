"""Runs one of the paper's experiments (or the recipe study) over seeds and prints its table with the paper's numbers.

    python -m sgcl_jax.experiments ablation --config default --workdir results/study --seeds 1,2,3
    python -m sgcl_jax.experiments domain   --config default --workdir results/study --seeds 1,2,3
    python -m sgcl_jax.experiments recipe   --config default --workdir results/study --seeds 1,2,3
    python -m sgcl_jax.experiments transfer --config default --workdir results/study --seeds 1,2,3
    python -m sgcl_jax.experiments ablation ... --only SG-OPT,no-head --variant "tau-0.05:objective.tau=0.05"

The base config takes the same overrides as training (--config.train.num_steps=200), applied to every variant.
Each variant trains in <workdir>/<variant>/seed_<s>; experiments sharing a workdir share their common variants
(SG-OPT). The same command again trains only what is missing (an interrupted study continues where it stopped),
then prints the table and writes <workdir>/<experiment>.json and .md. NLI text: --nli_file, else $SGCL_NLI_TEXT,
else the shared SNLI sentences next to the checkout.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from sgcl_jax import cli, study
from sgcl_jax.config import Config

FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file("config", None, "The base config: a shipped name (default, tiny, nli, "
                                          "bert_base) or a .py file; --config.<section>.<field>=value overrides it.",
                                          flag_values=FLAGS)
_WORKDIR = flags.DEFINE_string("workdir", None, "Each variant trains in <workdir>/<variant>/seed_<s>.",
                               flag_values=FLAGS)
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds, e.g. 1,2,3 (default: the config's seed).", flag_values=FLAGS)
_ONLY = flags.DEFINE_list("only", None, "Variant names to train, in order (default: all); the table still shows "
                          "every variant with a finished seed.", flag_values=FLAGS)
_VARIANT = flags.DEFINE_multi_string("variant", [], "A variant of your own: 'name:key=value[,key=value]', e.g. "
                                     "'tau-0.05:objective.tau=0.05'.", flag_values=FLAGS)
_NLI = flags.DEFINE_string("nli_file", None, "The NLI training text (domain, transfer); default: $SGCL_NLI_TEXT, "
                           "else the shared SNLI sentences next to the checkout.", flag_values=FLAGS)
_REPORT = flags.DEFINE_bool("report", False, "Train nothing: print the table of the seeds already finished (while a "
                            "study runs elsewhere, or to re-make its table).", flag_values=FLAGS)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the full traceback of an error.", flag_values=FLAGS)
flags.mark_flags_as_required(["config", "workdir"], flag_values=FLAGS)
# Spellings of the previous release, answered with their replacement for one release.
RENAMED = {"--nli-file": "--nli_file", "--set": "--config.<section>.<field>=value"}


def main(argv: Sequence[str] | None = None) -> int:
    """Flags (argv without the program; default sys.argv[1:]) -> study.run_experiment -> the exit code."""
    rest = cli.parse(FLAGS, __doc__, "sgcl_jax.experiments", argv, renamed=RENAMED, positional=True)
    if len(rest) != 1 or rest[0] not in study.EXPERIMENTS:
        return cli.fail(ValueError(f"name one experiment: {', '.join(study.EXPERIMENTS)} (got {rest})"), False)
    cli.setup_logging(_VERBOSE.value)

    def body() -> None:
        base = Config.from_dict(_CONFIG.value)
        found = list(study.variants(rest[0], _NLI.value)) + [study.parse_variant(v) for v in _VARIANT.value]
        try:
            seeds = [int(s) for s in _SEEDS.value] if _SEEDS.value else [base.seed]
        except ValueError:
            raise ValueError(f"--seeds {','.join(_SEEDS.value)}: expected integers, e.g. 1,2,3") from None
        train = False if _REPORT.value else _ONLY.value or True
        study.run_experiment(rest[0], base, found, _WORKDIR.value, seeds, train=train)

    return cli.guarded(body, _VERBOSE.value)


def run() -> None:
    """The console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
