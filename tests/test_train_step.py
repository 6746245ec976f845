"""The train step on a tiny BERT: what is frozen stays bitwise, the regulariser's gradient, loss falls, determinism."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgcl_jax.model import ModelSpec, regulariser
from sgcl_jax.tokenization import tokenize
from sgcl_jax.train_step import ObjectiveConfig, OptimConfig, create_train_state, jit_train_step

SENTENCES = ["a man plays a guitar", "the cat sits on the mat", "dogs run fast in the park", "hello world",
             "rain falls on the roof tonight", "I like green tea", "stocks fell sharply", "she reads a book"]


# One optimizer setting and schedule length for every test here, so that tests of one model share one compiled step.
OPTIM, TOTAL_STEPS = OptimConfig(lr=1e-3, warmup_ratio=0.0), 50


@pytest.fixture(scope="module")
def spec(tiny):
    return ModelSpec(tiny.config, head_dim=64)


def _run(spec, tiny, objective="sg_opt", steps=3, seed=0):
    tx, step = jit_train_step(spec, ObjectiveConfig(objective), OPTIM, TOTAL_STEPS)
    state = create_train_state(spec, tiny.params, tx, seed)
    batch = tokenize(tiny.tokenizer, SENTENCES, 32)
    history = []
    for _ in range(steps):
        state, metrics = step(state, tiny.params, batch)
        history.append(jax.device_get(metrics))
    return state, history


def test_frozen_parts_unchanged_and_others_trained(spec, tiny):
    guide_before = jax.tree.map(np.array, tiny.params)
    state, _ = _run(spec, tiny, steps=4)
    same = jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b)), guide_before, tiny.params)
    assert all(jax.tree.leaves(same)), "the guide changed"
    # BERT_T's embeddings are the guide's (frozen): they are not in the trainable tree nor the optimizer state.
    assert set(state.params) == {"encoder", "head"}
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
    n_trainable = sum(x.size for x in jax.tree.leaves(state.params))
    assert n_opt < 3 * n_trainable, "optimizer state holds more than the trainable tree"
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), state.params["encoder"], tiny.params["encoder"])
    assert all(jax.tree.leaves(changed)), "some BERT_T encoder param did not move"


def test_regulariser_gradient(tiny):
    rng = np.random.default_rng(0)
    trainable = {"encoder": jax.tree.map(lambda x: x + rng.standard_normal(x.shape).astype(np.float32) * 0.01,
                                         tiny.params["encoder"])}
    lam = 0.1
    grads = jax.grad(lambda t: lam * regulariser(t, tiny.params))(trainable)
    want = jax.tree.map(lambda t, f: 2 * lam * (t - f), trainable["encoder"], tiny.params["encoder"])
    for g, w in zip(jax.tree.leaves(grads["encoder"]), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-8)
    manual = sum(float(np.sum((t - f) ** 2)) for t, f in zip(jax.tree.leaves(trainable["encoder"]),
                                                             jax.tree.leaves(tiny.params["encoder"]), strict=True))
    np.testing.assert_allclose(float(regulariser(trainable, tiny.params)), manual, rtol=1e-5)


@pytest.mark.parametrize("objective", ["sg_opt", "sg", "opt1", "opt2"])
def test_loss_falls(spec, tiny, objective):
    _, history = _run(spec, tiny, objective, steps=TOTAL_STEPS)
    first = np.mean([h["objective"] for h in history[:5]])
    last = np.mean([h["objective"] for h in history[-5:]])
    assert last < 0.5 * first, (objective, first, last)
    assert all(np.isfinite(h["loss"]) for h in history)


def test_same_seed_is_bitwise_deterministic(spec, tiny):
    a, _ = _run(spec, tiny, steps=3, seed=7)
    b, _ = _run(spec, tiny, steps=3, seed=7)
    c, _ = _run(spec, tiny, steps=3, seed=8)
    eq = jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a.params, b.params)
    assert all(jax.tree.leaves(eq))
    assert not np.array_equal(np.asarray(a.params["head"]["dense_0"]["kernel"]),
                              np.asarray(c.params["head"]["dense_0"]["kernel"]))


def test_bf16_compute_keeps_fp32_params(spec, tiny):
    from dataclasses import replace

    bf16 = replace(spec, dtype="bfloat16")
    tx, step = jit_train_step(bf16, ObjectiveConfig(), OPTIM, TOTAL_STEPS)
    state = create_train_state(bf16, tiny.params, tx, 0)
    state, m = step(state, tiny.params, tokenize(tiny.tokenizer, SENTENCES, 32))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert np.isfinite(float(m["loss"]))


def test_remat_gives_the_same_step(spec, tiny):
    from dataclasses import replace

    batch = tokenize(tiny.tokenizer, SENTENCES, 32)
    out = []
    for variant in (spec, replace(spec, remat=True)):
        tx, step = jit_train_step(variant, ObjectiveConfig(), OPTIM, TOTAL_STEPS)
        state, m = step(create_train_state(variant, tiny.params, tx, 0), tiny.params, batch)
        out.append((float(m["loss"]), float(m["grad_norm"]), state.params))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-6) and out[0][1] == pytest.approx(out[1][1], rel=1e-5)
    diffs = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), out[0][2], out[1][2])
    assert max(jax.tree.leaves(diffs)) < 1e-6


def test_without_head_the_loss_is_sg_opt_on_cls_and_views(spec, tiny):
    """model.head=False: no head params anywhere, the loss is SG-OPT on BERT_T's [CLS] and the guide's mean-pooled
    views themselves (dimension d, re-derived here with the plain encoder and NumPy), and a step trains BERT_T's
    layers only."""
    from dataclasses import replace

    from sgcl_jax.bert import Bert
    from sgcl_jax.model import init_trainable
    from sgcl_jax.train_step import loss_fn
    from tests.oracles import np_sg_opt

    still = replace(tiny.config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    nohead = replace(spec, bert=still, head=False)
    trainable = init_trainable(nohead, tiny.params, jax.random.key(0))
    assert set(trainable) == {"encoder"}
    batch = tokenize(tiny.tokenizer, SENTENCES, 32)
    loss, metrics = loss_fn(nohead, ObjectiveConfig(tau=0.05), trainable, tiny.params, batch, jax.random.key(1))

    hidden = Bert(still).apply({"params": tiny.params}, batch["input_ids"], batch["attention_mask"])
    mask = batch["attention_mask"][..., None].astype(np.float64)
    views = np.stack([(np.asarray(h, np.float64) * mask).sum(1) / mask.sum(1) for h in hidden], axis=1)
    cls = np.asarray(hidden[-1][:, 0], np.float64)  # BERT_T starts as the guide, so its [CLS] is the guide's
    assert views.shape == (len(SENTENCES), still.num_hidden_layers + 1, still.hidden_size)
    np.testing.assert_allclose(float(metrics["objective"]), np_sg_opt(cls, views, 0.05), rtol=1e-4)
    assert float(metrics["regulariser"]) == 0.0 and float(loss) == pytest.approx(float(metrics["objective"]))

    tx, step = jit_train_step(nohead, ObjectiveConfig(), OPTIM, TOTAL_STEPS)
    state = create_train_state(nohead, tiny.params, tx, 0)
    guide_before = jax.tree.map(np.array, tiny.params)
    state, _ = step(state, tiny.params, batch)
    assert set(state.params) == {"encoder"}
    assert not any("head" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state))
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, guide_before, jax.tree.map(np.asarray, tiny.params))))
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), state.params["encoder"], tiny.params["encoder"])
    assert all(jax.tree.leaves(moved))


def test_layer_range_is_inclusive_and_equals_the_released_slice(tiny):
    """guide.layer_min..layer_max is inclusive; the released --lmin a --lmax b is the slice [a:b] (-1: all)."""
    n = tiny.config.num_hidden_layers
    hidden_states = list(range(n + 1))
    for lmin, lmax in [(0, -1), (0, 2), (1, 3), (1, -1), (2, 3)]:
        released = hidden_states[lmin : n + 1 if lmax == -1 else lmax]
        ours = ModelSpec(tiny.config, layer_min=lmin, layer_max=-1 if lmax == -1 else lmax - 1).layers
        assert list(ours) == released, (lmin, lmax)
    with pytest.raises(ValueError, match="outside"):
        ModelSpec(tiny.config, layer_min=2, layer_max=1).layers  # noqa: B018
