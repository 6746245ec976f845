"""The JAX train step against `sgcl_jax.torch_reference.ReleasedStep` in float64: the PyTorch port of the
released code's step (two BertModels, mean-pooled guide views, shared head, SG-OPT, regulariser, clipping,
AdamW, schedule) that `bench --torch` also times."""

from __future__ import annotations

import numpy as np

from sgcl_jax.bert import BertConfig
from sgcl_jax.model import ModelSpec
from sgcl_jax.pretrained import random_pretrained, state_dict_from_params
from sgcl_jax.tokenization import tokenize
from sgcl_jax.torch_reference import ReleasedStep
from sgcl_jax.train_step import ObjectiveConfig, OptimConfig, create_train_state, jit_train_step, warmup_steps

STEPS, LR, WARMUP = 5, 1e-3, 0.3  # ceil(0.3 * 5) = 2 warm-up steps, as the release counts them
SENTENCES = ["a man plays a guitar", "the cat sits on the mat", "dogs run fast in the park", "hello world",
             "rain falls on the roof tonight", "I like green tea"]


def test_step_matches_the_released_step_in_float64():
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    pre = random_pretrained(cfg, 0)
    spec = ModelSpec(cfg, head_dim=64, guide_dropout=False)
    optim = OptimConfig(lr=LR, warmup_ratio=WARMUP)
    assert warmup_steps(optim, STEPS) == 2
    tx, step = jit_train_step(spec, ObjectiveConfig(), optim, STEPS)
    state = create_train_state(spec, pre.params, tx, 0)
    head = tuple(np.asarray(state.params["head"][f"dense_{i}"]["kernel"]) for i in range(2))
    batch = tokenize(pre.tokenizer, SENTENCES, 32)
    torch_step = ReleasedStep(cfg, state_dict_from_params(pre.params), head, head_dim=64, lr=LR,
                              warmup_ratio=WARMUP, total_steps=STEPS, dtype="float64", device="cpu")
    ours, theirs = [], []
    for _ in range(STEPS):
        state, metrics = step(state, pre.params, batch)
        ours.append(float(metrics["objective"]))
        theirs.append(float(torch_step.step(batch)["objective"]))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    ours_sd = state_dict_from_params({"embeddings": pre.params["embeddings"], "encoder": state.params["encoder"]})
    torch_sd = torch_step.trained_state()
    assert max(float(np.abs(ours_sd[k] - torch_sd[k]).max()) for k in ours_sd) < 1e-5
    ours_head = [np.asarray(state.params["head"][f"dense_{i}"]["kernel"]) for i in range(2)]
    assert max(float(np.abs(a - b).max()) for a, b in zip(ours_head, torch_step.head_kernels(), strict=True)) < 1e-5
    assert ours[-1] < 0.5 * ours[0]  # the parameters really moved
