"""Trains an SG-BERT sentence encoder.

    python -m sgcl_jax.train --config default --workdir runs/default      # a shipped config, by name
    python -m sgcl_jax.train --config my_config.py --workdir runs/mine     # or any config file
    python train.py --config configs/default.py --workdir runs/default     # the same, from a checkout

Every config field can be overridden: --config.optim.lr=3e-5, --config.seeds=1,2,3,
--config.eval.final_tasks=STSB,SICKR (tuple fields take comma lists).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from sgcl_jax import cli, sharding
from sgcl_jax.interrupts import Stopped
from sgcl_jax.trainer import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config: a shipped name (default, tiny, nli, bert_base) or a path to a .py file with "
                    "get_config(). Its fields are overridden with --config.<section>.<field>=value.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "The run folder: checkpoints, logs and results go here; "
                               "the same folder again resumes the run.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (default: when the "
                                 "JAX_COORDINATOR_ADDRESS variables are set).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the full traceback of a config, data or run-folder error.")
flags.mark_flags_as_required(["config"])


def main(argv: Sequence[str]) -> None:
    """Flags -> train_and_evaluate; a config, data or run-folder error exits with one line (--verbose: traceback)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.setup_logging(_VERBOSE.value)
    try:
        sharding.maybe_initialize_distributed(_DISTRIBUTED.value)
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except Stopped as e:  # SIGTERM (preemption) or Ctrl-C: a checkpoint was saved at a step boundary
        sys.exit(cli.stopped(e))
    except (ValueError, OSError, FloatingPointError, ImportError) as e:
        sys.exit(cli.fail(e, _VERBOSE.value))


def run() -> None:
    """The console entry point (also used by the top-level train.py)."""
    cli.run_app(main, __doc__, sys.argv)


if __name__ == "__main__":
    run()
