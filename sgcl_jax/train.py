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

from absl import flags
from ml_collections import config_flags

from sgcl_jax import cli, sharding
from sgcl_jax.trainer import train_and_evaluate

FLAGS = flags.FlagValues()  # this command's own flags (every command has its own: they share names)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config: a shipped name (default, tiny, nli, bert_base) or a path to a .py file with "
                    "get_config(). Its fields are overridden with --config.<section>.<field>=value.",
    flag_values=FLAGS, lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "The run folder: checkpoints, logs and results go here; "
                               "the same folder again resumes the run.", flag_values=FLAGS)
_DISTRIBUTED = flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (default: when the "
                                 "JAX_COORDINATOR_ADDRESS variables are set).", flag_values=FLAGS)
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout", sharding.HEARTBEAT_TIMEOUT_S, "Seconds without a process's heartbeat before a multi-process "
    "run declares it dead (JAX's default; raise it on oversubscribed hosts).", flag_values=FLAGS, lower_bound=1)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the full traceback of a config, data or run-folder error.",
                             flag_values=FLAGS)
flags.mark_flags_as_required(["config"], flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
    """Flags (argv without the program; default sys.argv[1:]) -> train_and_evaluate -> the exit code."""
    cli.parse(FLAGS, __doc__, "sgcl_jax.train", argv)
    cli.setup_logging(_VERBOSE.value)

    def body() -> None:
        sharding.maybe_initialize_distributed(_DISTRIBUTED.value, _HEARTBEAT.value)
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)

    # Not RuntimeError: inside the trainer that is a failing step or collective, a bug to show with its traceback.
    return cli.guarded(body, _VERBOSE.value, (ValueError, OSError, FloatingPointError, ImportError))


def run() -> None:
    """The console entry point (also used by the top-level train.py)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
