"""TrainState, the optimizer, and the pure train step (one jit per bucket shape)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from sgcl_jax import losses
from sgcl_jax.config import ObjectiveConfig, OptimConfig
from sgcl_jax.model import ModelSpec, Params, forward, init_trainable, regulariser
from sgcl_jax.pretrained import abstract_params
from sgcl_jax.sharding import DATA, Layout


@flax.struct.dataclass
class TrainState:
    """What changes during training: the trainable tree, its optimizer state, the step and the base PRNG key."""

    step: jax.Array
    params: Params
    opt_state: Any
    rng: jax.Array  # raw uint32 key data: plain arrays checkpoint everywhere
    # The first step whose loss or gradient norm was not finite (-1: none). Kept on device, so divergence is
    # caught without a host sync per step: the trainer reads it before every save and dev evaluation.
    first_nonfinite: jax.Array


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    """ceil(warmup_ratio x total steps), as the released training.py counts them."""
    return math.ceil(round(cfg.warmup_ratio * total_steps, 6))  # round: 0.1 * 1080 is 108.00000000000001


def lr_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup over the first warmup_ratio of the steps, then linear decay to 0 (HF's linear schedule)."""
    warmup = warmup_steps(cfg, total_steps)
    decay = optax.linear_schedule(cfg.lr, 0.0, max(total_steps - warmup, 1))
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def decay_mask(params: Params) -> Params:
    """Weight decay on weight matrices only; biases and LayerNorm params are excluded."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm then AdamW, on the trainable tree only (the guide and the embeddings are not in it)."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(lr_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                    weight_decay=cfg.weight_decay, mask=decay_mask),
    )


def create_train_state(spec: ModelSpec, guide: Params, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """The initial state: BERT_T = guide copy, a fresh head, fresh optimizer moments."""
    init_key, run_key = jax.random.split(jax.random.key(seed))
    params = init_trainable(spec, guide, init_key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(run_key), first_nonfinite=jnp.full((), -1, jnp.int32))


def step_rng(state: TrainState) -> jax.Array:
    """The step's key, derived from the base key and the step so that a resumed run draws the same numbers."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def loss_fn(spec: ModelSpec, obj: ObjectiveConfig, trainable: Params, guide: Params, batch: dict[str, jax.Array],
            rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """objective + lambda * regulariser, with the similarity statistics as aux metrics."""
    k_fwd, k_view = jax.random.split(rng)
    _, _, fc, fh = forward(spec, trainable, guide, batch, k_fwd, train=True)
    objective = losses.sampled_view_loss(obj.name, fc, fh, obj.tau, k_view)
    reg = regulariser(trainable, guide)
    sims = losses.sg_opt_logits(fc, fh, 1.0)
    own = losses.own_views(*fh.shape[:2])
    metrics = {
        "objective": objective,
        "regulariser": reg,
        "pos_sim": jnp.sum(jnp.where(own, sims, 0)) / jnp.sum(own),
        "neg_sim": jnp.sum(jnp.where(own, 0, sims)) / jnp.maximum(jnp.sum(~own), 1),
    }
    return objective + obj.lam * reg, metrics


def train_step(state: TrainState, guide_params: Params, batch: dict[str, jax.Array], rng: jax.Array, *,
               spec: ModelSpec, objective: ObjectiveConfig, tx: optax.GradientTransformation,
               schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the trainable tree; the guide is read, never differentiated or updated."""
    grad_fn = jax.value_and_grad(lambda p: loss_fn(spec, objective, p, guide_params, batch, rng), has_aux=True)
    (loss, metrics), grads = grad_fn(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    first_nonfinite = jnp.where((state.first_nonfinite < 0) & ~finite, state.step + 1, state.first_nonfinite)
    metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         first_nonfinite=first_nonfinite), metrics


def state_shardings(spec: ModelSpec, tx: optax.GradientTransformation, layout: Layout) -> tuple[Any, Any]:
    """(train-state shardings, guide shardings) of a layout: one NamedSharding per leaf, from shapes alone."""
    guide = abstract_params(spec.bert)
    state = jax.eval_shape(lambda g: create_train_state(spec, g, tx, 0), guide)
    return layout.params(state), layout.params(guide)


@functools.lru_cache(maxsize=32)
def jit_train_step(spec: ModelSpec, objective: ObjectiveConfig, optim: OptimConfig, total_steps: int,
                   layout: Layout | None = None
                   ) -> tuple[optax.GradientTransformation, Callable[..., tuple[TrainState, dict]]]:
    """(tx, jitted step(state, guide, batch)): `train_step` with the step's key derived in-graph from the state.

    Cached on its (hashable) arguments, so runs of one configuration in a process share one compiled step.

    The state is donated, the guide never is. With a layout (see sharding.py) the step is one program over global
    arrays: the batch is split on the mesh's data axis and the loss still sees every sentence of the global batch
    as a negative; params, optimizer state and guide are replicated or, with `layout.fsdp`, sharded.
    """
    tx = make_optimizer(optim, total_steps)
    step = functools.partial(train_step, spec=spec, objective=objective, tx=tx,
                             schedule=lr_schedule(optim, total_steps))

    def fn(state: TrainState, guide: Params, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
        if layout is None or not layout.fsdp:
            return step(state, guide, batch, step_rng(state))
        # FSDP: activations stay split by sentence (bert.split_by_sentence), so the compiler gathers the weights,
        # not the batch. Replicated weights never pull activations off the batch split: no rule needed there.
        with jax.sharding.use_abstract_mesh(layout.mesh.abstract_mesh), nn.logical_axis_rules([("batch", DATA)]):
            return step(state, guide, batch, step_rng(state))

    kwargs = {}
    if layout is not None:
        state_sh, guide_sh = state_shardings(spec, tx, layout)
        kwargs = {"in_shardings": (state_sh, guide_sh, layout.batch),
                  "out_shardings": (state_sh, layout.replicated)}
    return tx, jax.jit(fn, donate_argnums=(0,), **kwargs)
