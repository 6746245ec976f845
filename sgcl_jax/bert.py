"""A functional Flax BERT encoder whose params carry Hugging Face's names."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

SUPPORTED_MODEL_TYPES = ("bert",)

_ACTIVATIONS = {
    # BERT's "gelu" is the exact erf form; jax.nn.gelu defaults to the tanh one.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def split_by_sentence(x: jax.Array) -> jax.Array:
    """Asks for an activation split along its leading (sentence) axis where the caller set Flax's logical rule for
    "batch" (the FSDP step does); a no-op otherwise. Without it, weights split over the data axis lead the SPMD
    partitioner to split activations by feature and gather the whole batch at every layer."""
    return nn.with_logical_constraint(x, ("batch",) + (None,) * (x.ndim - 1))


def whole(x: jax.Array) -> jax.Array:
    """Asks for a weight whole on every device where the caller set Flax's logical rules (the FSDP step does); a
    no-op otherwise."""
    return nn.with_logical_constraint(x, (None,) * x.ndim)


class _Embed(nn.Embed):
    """nn.Embed that looks up in the whole table under FSDP. A lookup in a table split by feature (30,522 rows
    do not divide over 8 devices, so the layout splits the 384 features) makes the partitioner gather every
    token id of the global batch and return each token's vector with an all-to-all: bytes that grow with the
    batch, where gathering the table costs the same at any batch."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Token ids (any integer shape) -> their vectors (float32, a trailing features axis)."""
        return jnp.take(whole(self.embedding), inputs, axis=0)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The architecture fields of a Hugging Face `BertConfig` that the encoder uses."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config") -> BertConfig:
        """Builds the config from a Hugging Face config.json dict, refusing non-BERT models."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"{source}: model_type {model_type!r} is not supported; sgcl_jax encodes BERT-family "
                f"checkpoints (model_type in {SUPPORTED_MODEL_TYPES}: BERT, MiniLM, BGE)."
            )
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{source}: position_embedding_type {d['position_embedding_type']!r} is not supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in fields})
        if cfg.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"{source}: hidden_act {cfg.hidden_act!r} is not supported ({sorted(_ACTIVATIONS)})")
        return cfg

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json content of the equivalent Hugging Face BertModel."""
        return {"architectures": ["BertModel"], "model_type": "bert", **dataclasses.asdict(self)}


def _dense(cfg: BertConfig, features: int, name: str, dtype: Any) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.normal(cfg.initializer_range),
        name=name,
    )


def _layer_norm(cfg: BertConfig, dtype: Any) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=jnp.float32, name="LayerNorm")


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)

        def embed(n: int, name: str) -> nn.Embed:
            return _Embed(n, cfg.hidden_size, embedding_init=init, param_dtype=jnp.float32, name=name)

        positions = jnp.arange(input_ids.shape[-1])[None, :]
        x = (
            embed(cfg.vocab_size, "word_embeddings")(input_ids)
            + embed(cfg.max_position_embeddings, "position_embeddings")(positions)
            + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        )
        x = _layer_norm(cfg, self.dtype)(x)
        return split_by_sentence(nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic))


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with an additive padding mask."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask_bias: jax.Array, deterministic: bool, first_only: bool = False
                 ) -> jax.Array:
        cfg = self.config
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads

        def project(name: str, inputs: jax.Array) -> jax.Array:
            y = split_by_sentence(_dense(cfg, cfg.hidden_size, name, self.dtype)(inputs))
            return y.reshape(*y.shape[:-1], heads, head_dim)

        # first_only: only position 0 ([CLS]) asks queries; keys and values still come from every token.
        q = project("query", x[:, :1] if first_only else x)
        k, v = project("key", x), project("value", x)
        # Scores and softmax in fp32: bf16 logits lose the small differences that the mask bias must dominate.
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(head_dim)
        probs = jax.nn.softmax(scores + mask_bias, axis=-1)
        probs = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
        return split_by_sentence(ctx.reshape(*ctx.shape[:-2], cfg.hidden_size))


class _ResidualOutput(nn.Module):
    """Dense, dropout, then LayerNorm over the residual sum (HF's `*Output` blocks)."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, residual: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.config
        y = _dense(cfg, cfg.hidden_size, "dense", self.dtype)(x)
        y = nn.Dropout(cfg.hidden_dropout_prob)(y, deterministic=deterministic)
        return split_by_sentence(_layer_norm(cfg, self.dtype)(y + residual))


class BertAttention(nn.Module):
    """Self-attention followed by its output projection and residual LayerNorm."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask_bias: jax.Array, deterministic: bool, first_only: bool = False
                 ) -> jax.Array:
        ctx = BertSelfAttention(self.config, self.dtype, name="self")(x, mask_bias, deterministic, first_only)
        residual = x[:, :1] if first_only else x
        return _ResidualOutput(self.config, self.dtype, name="output")(ctx, residual, deterministic)


class _Intermediate(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        return split_by_sentence(_ACTIVATIONS[cfg.hidden_act](_dense(cfg, cfg.intermediate_size, "dense",
                                                                     self.dtype)(x)))


class BertLayer(nn.Module):
    """One transformer block with HF's module names (attention / intermediate / output)."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask_bias: jax.Array, deterministic: bool, first_only: bool = False
                 ) -> jax.Array:
        attn = BertAttention(self.config, self.dtype, name="attention")(x, mask_bias, deterministic, first_only)
        inter = _Intermediate(self.config, self.dtype, name="intermediate")(attn)
        return _ResidualOutput(self.config, self.dtype, name="output")(inter, attn, deterministic)


class _LayerStack(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32
    remat: bool = False
    cls_only: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask_bias: jax.Array, deterministic: bool) -> list[jax.Array]:
        # static_argnums: `deterministic` and `first_only` are Python bools that select the graph.
        layer_cls = nn.remat(BertLayer, static_argnums=(3, 4)) if self.remat else BertLayer
        hidden = [x]
        n = self.config.num_hidden_layers
        for i in range(n):
            # "layer_<i>" maps to HF's "layer.<i>" in pretrained.py's name table.
            x = layer_cls(self.config, self.dtype, name=f"layer_{i}")(x, mask_bias, deterministic,
                                                                      self.cls_only and i == n - 1)
            hidden.append(x)
        return hidden


class Bert(nn.Module):
    """BERT without the pooler: returns every hidden state, embedding output first.

    Params are fp32 whatever `dtype` (the compute dtype) is, so optimizers always hold fp32 masters.
    """

    config: BertConfig
    dtype: Any = jnp.float32
    remat: bool = False
    # Only [CLS] of the last layer is needed (cls pooling): its last layer runs queries, the attention
    # output and the feed-forward for position 0 alone; the last hidden state then has length 1.
    cls_only: bool = False

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, ...]:
        """Returns the L+1 hidden states (b, s, d); the last one is the last hidden state."""
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = BertEmbeddings(self.config, self.dtype, name="embeddings")(input_ids, token_type_ids, deterministic)
        # Additive bias as in HF: a large negative number where the key is padding.
        mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        hidden = _LayerStack(self.config, self.dtype, self.remat, self.cls_only, name="encoder")(x, mask_bias,
                                                                                           deterministic)
        return tuple(hidden)
