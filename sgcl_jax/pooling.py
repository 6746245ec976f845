"""Masked pooling of token vectors into sentence vectors: one implementation for the guide and for evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from sgcl_jax.config import POOLINGS


def pool(hidden: jax.Array, mask: jax.Array, method: str) -> jax.Array:
    """(..., s, d) token vectors and (..., s) mask -> (..., d) sentence vectors, in fp32."""
    h = hidden.astype(jnp.float32)
    m = mask.astype(jnp.float32)[..., None]
    if method == "cls":
        return h[..., 0, :]
    if method == "mean":
        return (h * m).sum(-2) / jnp.maximum(m.sum(-2), 1.0)
    if method == "max":
        return jnp.where(m > 0, h, -jnp.inf).max(-2)
    raise ValueError(f"unknown pooling {method!r}; choose from {POOLINGS}")


def pool_layers(hidden_states: Sequence[jax.Array], mask: jax.Array, method: str, layers: Sequence[int]) -> jax.Array:
    """Pools each of the given layers: -> (b, len(layers), d)."""
    return jnp.stack([pool(hidden_states[i], mask, method) for i in layers], axis=1)


def sentence_embedding(hidden_states: Sequence[jax.Array], mask: jax.Array, method: str = "cls",
                       layer: int | str = "last") -> jax.Array:
    """An evaluation embedding: `method` pooling of one layer, or of the first and last layers averaged."""
    if layer == "first_last":
        return 0.5 * (pool(hidden_states[1], mask, method) + pool(hidden_states[-1], mask, method))
    idx = len(hidden_states) - 1 if layer == "last" else int(layer)
    if not -len(hidden_states) <= idx < len(hidden_states):
        raise ValueError(f"layer {layer} out of range: the model has {len(hidden_states)} hidden states (0..L)")
    return pool(hidden_states[idx], mask, method)
