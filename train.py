"""Trains an SG-BERT sentence encoder: python train.py --config configs/default.py --workdir runs/default.

The thin top-level entry of a checkout; `python -m sgcl_jax.train` is the same program (see its --help).
"""

from sgcl_jax.train import run

if __name__ == "__main__":
    run()
