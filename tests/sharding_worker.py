"""Run in a subprocess with 8 fake CPU devices: the same global batch on 8 devices and on 1 must agree.

Prints one JSON line of measured differences for tests/test_sharding.py to assert on.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
from jax.sharding import Mesh

from sgcl_jax import losses, sharding
from sgcl_jax.bert import BertConfig
from sgcl_jax.model import ModelSpec, forward, init_trainable
from sgcl_jax.pretrained import random_pretrained
from sgcl_jax.tokenization import tokenize
from sgcl_jax.train_step import (
    ObjectiveConfig,
    OptimConfig,
    create_train_state,
    jit_train_step,
    loss_fn,
    state_shardings,
    step_rng,
)

TINY = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=128)
SENTENCES = [f"sentence {i} about " + "things " * (i % 7) for i in range(16)]


def run(mesh: Mesh, spec: ModelSpec, pre, batch_np, fsdp: bool = False):
    layout = sharding.Layout(mesh, fsdp, min_size=256)  # tiny arrays: shard nearly all of them
    repl, bsh = layout.replicated, layout.batch
    obj, optim = ObjectiveConfig(), OptimConfig(lr=1e-3, warmup_ratio=0.0)
    tx, step = jit_train_step(spec, obj, optim, 3, layout)
    state_sh, guide_sh = state_shardings(spec, tx, layout)
    guide = sharding.put(pre.params, guide_sh)
    state = jax.jit(lambda g: create_train_state(spec, g, tx, 0), out_shardings=state_sh)(guide)
    if fsdp:  # the layout really splits the trainable tree and its optimizer state
        big = [x for x in jax.tree.leaves(state.params) if x.size >= 256]
        assert big and all(not x.sharding.is_fully_replicated for x in big)
        split = [x for x in jax.tree.leaves(state) if not x.sharding.is_fully_replicated]
        assert len(split) >= 3 * len(big), (len(split), len(big))  # params and both Adam moments
    batch = sharding.global_batch(batch_np, bsh)
    assert len(batch["input_ids"].sharding.device_set) == mesh.size
    grad_fn = jax.jit(lambda s, g, b: jax.grad(lambda p: loss_fn(spec, obj, p, g, b, step_rng(s))[0])(s.params),
                      out_shardings=repl)
    grads = grad_fn(state, guide, batch)
    history = []
    for _ in range(3):
        state, metrics = step(state, guide, batch)
        history.append(float(metrics["loss"]))
    return history, sharding.to_host(grads), sharding.to_host(state.params)


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def main() -> None:
    assert jax.device_count() == 8, "set XLA_FLAGS=--xla_force_host_platform_device_count=8"
    pre = random_pretrained(TINY, seed=0)
    spec = ModelSpec(TINY, head_dim=64)
    batch_np = tokenize(pre.tokenizer, SENTENCES, 32)
    one = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), (sharding.DATA, sharding.MODEL))
    h8, g8, p8 = run(sharding.make_mesh(), spec, pre, batch_np)
    h1, g1, p1 = run(one, spec, pre, batch_np)
    hf, gf, pf = run(sharding.make_mesh(), spec, pre, batch_np, fsdp=True)

    # What a per-device loss (negatives from the device's own 2 sentences only) would give instead.
    trainable = init_trainable(spec, pre.params, jax.random.key(0))
    _, _, fc, fh = forward(spec, trainable, pre.params, batch_np, jax.random.key(0), train=False)
    global_loss = float(losses.sg_opt(fc, fh, 0.01))
    local_loss = float(np.mean([losses.sg_opt(fc[i:i + 2], fh[i:i + 2], 0.01) for i in range(0, 16, 2)]))
    print(json.dumps({
        "loss_8": h8, "loss_1": h1,
        "grad_diff": max_diff(g8, g1), "grad_scale": max_diff(g1, jax.tree.map(np.zeros_like, g1)),
        "param_diff": max_diff(p8, p1), "param_moved": max_diff(p1, trainable),
        "loss_fsdp": hf, "grad_diff_fsdp": max_diff(gf, g1), "param_diff_fsdp": max_diff(pf, p1),
        "global_loss": global_loss, "local_loss": local_loss,
    }))


if __name__ == "__main__":
    sys.exit(main())
