"""A tiny randomly initialised BERT (MiniLM's tokenizer) on 320 STS-B sentences: smoke runs and tests.

    python train.py --config configs/tiny.py --workdir /tmp/tiny

Expected: finishes in well under a minute on 2 CPU cores; scores are low (random model) but finite.
"""

from sgcl_jax.config import base_config


def get_config():
    """The tiny smoke-test run."""
    c = base_config()
    c.model.name = "random"
    c.model.max_length = 32
    c.model.head_dim = 64
    c.data.max_sentences = 320
    c.data.batch_size = 8
    c.data.buckets = (16, 32)
    c.train.eval_every = 10
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.train.num_steps = 30
    c.optim.lr = 5e-4
    c.eval.batch_size = 64
    c.eval.final_tasks = ("STSB",)
    return c
