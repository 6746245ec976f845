"""The self-guided contrastive objectives on already-projected vectors, computed in fp32.

At tau = 0.01 the logits reach +-100, so every similarity, log-sum-exp and loss is fp32 whatever the
encoder's compute dtype was.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sgcl_jax.config import OBJECTIVES


def _unit(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    # Same epsilon as torch.nn.functional.cosine_similarity, so zero vectors do not give NaN.
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def cosine_logits(u: jax.Array, v: jax.Array, tau: float) -> jax.Array:
    """g(u_i, v_j) / tau for every pair: (n, d), (m, d) -> (n, m)."""
    return _unit(u) @ _unit(v).T / tau


def sg(c: jax.Array, h: jax.Array, tau: float) -> jax.Array:
    """Symmetric NT-Xent over X = {c, h}: each of the 2b anchors against its partner, all others negatives."""
    b = c.shape[0]
    x = jnp.concatenate([c, h], axis=0)
    logits = cosine_logits(x, x, tau)
    logits = jnp.where(jnp.eye(2 * b, dtype=bool), -jnp.inf, logits)
    partner = (jnp.arange(2 * b) + b) % (2 * b)
    pos = logits[jnp.arange(2 * b), partner]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos)


def opt1(c: jax.Array, h: jax.Array, tau: float) -> jax.Array:
    """Only c_i is an anchor; negatives are the other c_j and every h_j but h_i."""
    b = c.shape[0]
    cc = jnp.where(jnp.eye(b, dtype=bool), -jnp.inf, cosine_logits(c, c, tau))
    ch = cosine_logits(c, h, tau)
    return jnp.mean(jax.nn.logsumexp(jnp.concatenate([cc, ch], axis=1), axis=1) - jnp.diagonal(ch))


def opt2(c: jax.Array, h: jax.Array, tau: float) -> jax.Array:
    """Only c_i is an anchor; the denominator holds the views of every sentence, h_i included."""
    ch = cosine_logits(c, h, tau)
    return jnp.mean(jax.nn.logsumexp(ch, axis=1) - jnp.diagonal(ch))


def sg_opt_logits(c: jax.Array, h_all: jax.Array, tau: float) -> jax.Array:
    """g(c_i, h_{m,n}) / tau as (b, b x K) for c (b, d) and h_all (b, K, d): column m x K + n is view n of m.

    Kept 2-D: as (b, b, K) the K views would be the minor axis, which a TPU tiles to 128 lanes (7 views of
    MiniLM: 18x the memory), and the global batch's logits are what grows fastest on a pod."""
    b, k, d = h_all.shape
    return cosine_logits(c, h_all.reshape(b * k, d), tau)


def own_views(b: int, k: int) -> jax.Array:
    """(b, b x K) mask of sg_opt_logits' entries that are views of the row's own sentence."""
    return jnp.arange(b)[:, None] == jnp.arange(b * k)[None, :] // k


def sg_opt(c: jax.Array, h_all: jax.Array, tau: float) -> jax.Array:
    """SG-OPT: every view h_{i,k} is a positive of c_i; negatives are all views of the other sentences.

    Views of sentence i from other layers are in neither the numerator nor the denominator of term (i, k).
    """
    b, k, _ = h_all.shape
    logits = sg_opt_logits(c, h_all, tau)
    # g(c_i, h_ik) directly, not gathered from the logits: on a TPU the gather's gradient (a scatter) read 7x the
    # loss's bytes. Own views are masked out of `neg`, so pos need not be bitwise the logits' entries.
    pos = jnp.einsum("bd,bkd->bk", _unit(c), _unit(h_all)) / tau  # (b, K)
    neg = jax.nn.logsumexp(jnp.where(own_views(b, k), -jnp.inf, logits), axis=1)  # (b,)
    return jnp.mean(jnp.logaddexp(pos, neg[:, None]) - pos)


def sampled_view_loss(objective: str, c: jax.Array, h_all: jax.Array, tau: float, rng: jax.Array) -> jax.Array:
    """Dispatches by name; SG/OPT1/OPT2 draw one view per sentence uniformly from the K layers."""
    if objective == "sg_opt":
        return sg_opt(c, h_all, tau)
    fn = {"sg": sg, "opt1": opt1, "opt2": opt2}.get(objective)
    if fn is None:
        raise ValueError(f"unknown objective {objective!r}; choose from {OBJECTIVES}")
    b, k, _ = h_all.shape
    layer = jax.random.randint(rng, (b,), 0, k)
    return fn(c, h_all[jnp.arange(b), layer], tau)
