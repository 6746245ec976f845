"""The paper's setting for bert-base-uncased (needs network, or a local copy: --config.model.name=/path).

    python train.py --config configs/bert_base.py --workdir runs/bert_base

Runs the paper's 8 seeds and reports mean +- std. The paper reports SG-OPT BERT-base [CLS]:
STS12 66.84, STS13 80.13, STS14 71.23, STS15 81.56, STS16 77.17, STS-B 77.23, SICK-R 68.16 (avg 74.62).
Not run here (no network for the hub model, no GPU in CI).
"""

from sgcl_jax.config import base_config


def get_config():
    """bert-base-uncased, 8 seeds."""
    c = base_config()
    c.model.name = "bert-base-uncased"
    c.seeds = (1, 2, 3, 4, 1234, 2345, 3456, 7890)
    return c
