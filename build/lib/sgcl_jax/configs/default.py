"""SG-OPT on the bundled all-MiniLM-L6-v2, trained on the 17,256 unlabeled STS-B sentences.

    python train.py --config configs/default.py --workdir runs/default
    python train.py --config configs/default.py --workdir runs/default3 --config.seeds=1,2,3

Expected (README "Results", 5 seeds, 2 CPU cores, 10-17 min a seed): [CLS] Spearman average of STS12-15 and
STS-B 78.93 +- 0.34 for the best-on-dev checkpoint (79.01 +- 0.05 for the last one), up from 74.36 untrained;
the PyTorch port of the released code gives 79.10 over 8 seeds.
"""

from sgcl_jax.config import base_config


def get_config():
    """The default run."""
    return base_config()
