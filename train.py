"""Trains an SG-BERT sentence encoder: python train.py --config configs/default.py --workdir runs/default."""

import logging

from absl import app, flags
from ml_collections import config_flags

from sgcl_jax import sharding
from sgcl_jax.trainer import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Checkpoints, logs and results go here.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (default: auto).")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sharding.maybe_initialize_distributed(_DISTRIBUTED.value)
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
