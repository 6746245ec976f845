"""Every config field with its default (SG-BERT's settings); configs/*.py start from `base_config()`."""

from __future__ import annotations

import ml_collections

from sgcl_jax.sts import TASKS


def base_config() -> ml_collections.ConfigDict:
    """SG-OPT on the bundled MiniLM with the paper's hyper-parameters (Table 8 + the released code)."""
    c = ml_collections.ConfigDict()
    c.seed = 1
    c.seeds = ()  # non-empty: run each seed in <workdir>/seed_<s> and report mean +- std

    c.model = ml_collections.ConfigDict()
    c.model.name = "minilm"  # 'minilm' (bundled), a Hugging Face folder or hub id, or 'random'
    c.model.tokenizer = "minilm"  # for name='random' only
    c.model.init_seed = 0  # for name='random' only
    c.model.random = ml_collections.ConfigDict({  # for name='random' only: a BertConfig's fields
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "max_position_embeddings": 128, "vocab_size": 30522})
    c.model.max_length = 128
    c.model.dtype = "float32"  # compute dtype of both BERTs and the head; params stay fp32 ('bfloat16')
    c.model.remat = False  # rematerialise BERT_T's layers (large batches)
    c.model.head_dim = 4096

    c.guide = ml_collections.ConfigDict()
    c.guide.pooling = "mean"  # how each guide layer becomes a view: mean (released code), max (paper), cls
    c.guide.layer_min = 0  # hidden-state indices: 0 = embedding output
    c.guide.layer_max = -1  # -1 = last layer
    c.guide.dropout = True  # the released code runs the guide in train mode

    c.objective = ml_collections.ConfigDict({"name": "sg_opt", "tau": 0.01, "lam": 0.1})

    c.optim = ml_collections.ConfigDict({"lr": 5e-5, "b1": 0.9, "b2": 0.9, "eps": 1e-6, "weight_decay": 0.01,
                                         "warmup_ratio": 0.1, "clip_norm": 1.0})

    c.data = ml_collections.ConfigDict()
    c.data.source = "stsb"  # 'stsb' (all STS-B sentences), 'text' (data.files) or 'tfds'
    c.data.files = ()  # text files, one sentence a line, .gz allowed
    c.data.tfds_name = ""
    c.data.tfds_split = "train"
    c.data.tfds_feature = "text"
    c.data.tfds_data_dir = ""
    c.data.max_sentences = 0  # 0: all
    c.data.data_dir = ""  # STS data folder; '' = $SGCL_DATA_DIR or the user cache
    c.data.download = True  # fetch STS-B into the data folder when it is absent
    c.data.batch_size = 16  # global batch: every sentence's negatives come from all of it
    c.data.num_epochs = 1
    c.data.buckets = (16, 32, 64, 128)

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 0  # 0: num_epochs x steps per epoch
    c.train.eval_every = 50  # dev evaluation (STS-B dev, [CLS]) and best-checkpoint selection
    c.train.patience = 10  # early stop once dev fell below the previous evaluation this many times
    c.train.log_every = 10
    c.train.checkpoint_every = 50
    c.train.keep_checkpoints = 2
    c.train.progress = True

    c.eval = ml_collections.ConfigDict()
    c.eval.pooling = "cls"
    c.eval.batch_size = 64
    c.eval.final_tasks = TASKS
    c.eval.download = False  # fetch missing evaluation tasks (STS12-16, SICK-R) before the final evaluation
    c.eval.also_last = True  # also score the last state (what the released training.py reports)

    c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})
    return c
