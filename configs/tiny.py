"""A tiny randomly initialised BERT (MiniLM's tokenizer) on 320 STS-B sentences: smoke runs and tests.

    python train.py --config configs/tiny.py --workdir /tmp/tiny

Expected: about half a minute on 2 CPU cores from a warm compile cache. The random model is initialised with a
wide spread (initializer_range 0.2) so that its untrained [CLS] is poor (STS-B dev about 18) and training
visibly helps: dev rises at every evaluation (about 19.8 at step 30), so the best checkpoint is a trained one
and the ablation's variants differ. Test scores stay low (a random 2-layer model), but they are a trained
model's.
"""

from sgcl_jax.config import base_config


def get_config():
    """The tiny smoke-test run."""
    c = base_config()
    c.model.name = "random"
    c.model.random = {**c.model.random, "initializer_range": 0.2}
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
