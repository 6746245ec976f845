"""Model building (guide + spec), the projection head, the guide/trainable split and the forward giving c and h."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgcl_jax.bert import Bert, BertConfig, split_by_sentence
from sgcl_jax.pooling import pool, pool_layers
from sgcl_jax.pretrained import Pretrained, architecture, load_pretrained, random_pretrained

Params = dict[str, Any]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # config.DTYPES' names as JAX dtypes


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything static about the two encoders and the head (hashable: it selects the compiled graph)."""

    bert: BertConfig
    head: bool = True  # False: the objectives compare c and the views directly (Table 5's "- projection head")
    head_dim: int = 4096
    dtype: str = "float32"  # compute dtype of BERT_T, BERT_F and the head; params stay fp32
    guide_pooling: str = "mean"
    layer_min: int = 0
    layer_max: int = -1  # -1: the last layer
    guide_dropout: bool = True
    remat: bool = False
    pooling: str = "cls"  # BERT_T's sentence vector c: its last layer's [CLS] (the paper) or mean/max of its tokens

    @property
    def layers(self) -> tuple[int, ...]:
        """The hidden-state indices (0 = embedding output) whose pooled vectors are the views."""
        n = self.bert.num_hidden_layers
        hi = n if self.layer_max < 0 else self.layer_max
        if not 0 <= self.layer_min <= hi <= n:
            raise ValueError(f"guide layer range [{self.layer_min}, {self.layer_max}] is outside 0..{n}")
        return tuple(range(self.layer_min, hi + 1))

    @classmethod
    def from_config(cls, cfg: Any, bert: BertConfig) -> ModelSpec:
        """The spec of a run config (its `model` and `guide` sections) for this architecture; checks the layers."""
        model, guide = cfg.model, cfg.guide
        spec = cls(bert=bert, head=model.head, head_dim=model.head_dim, dtype=model.dtype, guide_pooling=guide.pooling,
                   layer_min=guide.layer_min, layer_max=guide.layer_max, guide_dropout=guide.dropout,
                   remat=model.remat, pooling=model.pooling)
        spec.layers  # noqa: B018 - refuses a bad layer range now, not inside jit
        return spec

    def bert_module(self, guide: bool = False) -> Bert:
        """The Flax BERT for the guide (every token of every layer) or the trained copy ([CLS] only at the top)."""
        return Bert(self.bert, DTYPES[self.dtype], remat=self.remat and not guide,
                    cls_only=not guide and self.pooling == "cls")


def load_guide(model_cfg: Any) -> Pretrained:
    """The guide BERT_F and its tokenizer from a `model` config section: a name/path, or 'random' of its shape."""
    if model_cfg.name == "random":
        return random_pretrained(BertConfig(**dict(model_cfg.random)), seed=model_cfg.init_seed,
                                 tokenizer_from=model_cfg.tokenizer)
    return load_pretrained(model_cfg.name)


def guide_architecture(model_cfg: Any) -> BertConfig:
    """The guide's architecture from a `model` config section, without loading (or downloading) weights."""
    if model_cfg.name == "random":
        return BertConfig(**dict(model_cfg.random))
    return architecture(model_cfg.name)


def step_flops(cfg: BertConfig, batch: int, length: int, views: int, head_dim: int, negatives: int = 0) -> float:
    """Model FLOPs of one step for `batch` sentences: guide forward + BERT_T forward/backward (3x) + head
    forward/backward on c and h, and with `negatives` (the global batch) the similarity logits forward/backward."""
    d, inner, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_token_layer = 2 * (4 * d * d + 2 * d * inner) + 2 * 2 * length * d  # projections + QK^T and PV
    encoder = batch * length * n * per_token_layer
    head = batch * (views + 1) * 2 * (d * head_dim + head_dim * head_dim)
    logits = 2 * batch * negatives * views * head_dim  # c_i against every view of every sentence
    return encoder * (1 + 3) + 3 * head + 3 * logits


class ProjectionHead(nn.Module):
    """f: Linear(d, H) -> GELU -> Linear(H, H) -> GELU, shared by c and h (exact erf GELU)."""

    hidden: int = 4096
    initializer_range: float = 0.02
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(2):
            x = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=jnp.float32,
                         kernel_init=nn.initializers.normal(self.initializer_range), name=f"dense_{i}")(x)
            # Split by sentence under FSDP, so the partitioner gathers the head's weights rather than every
            # sentence's views (it otherwise splits the 4096 features and all-reduces the B x (L+1) x 4096 projections).
            x = split_by_sentence(jax.nn.gelu(x, approximate=False))
        return x


def head_module(spec: ModelSpec) -> ProjectionHead:
    """The projection head for this spec."""
    return ProjectionHead(spec.head_dim, spec.bert.initializer_range, DTYPES[spec.dtype])


def init_trainable(spec: ModelSpec, guide: Params, rng: jax.Array) -> Params:
    """The trainable tree: BERT_T's encoder layers (a copy of the guide's) and, if enabled, a fresh head.

    BERT_T's embeddings are frozen, so they are not here: they are the guide's, passed in at every step.
    """
    trainable = {"encoder": jax.tree.map(jnp.array, guide["encoder"])}
    if spec.head:
        trainable["head"] = head_module(spec).init(rng, jnp.zeros((1, spec.bert.hidden_size)))["params"]
    return trainable


def trained_bert(trainable: Params, guide: Params) -> Params:
    """BERT_T's full param tree: the frozen (shared) embeddings plus the trained encoder."""
    return {"embeddings": guide["embeddings"], "encoder": trainable["encoder"]}


def regulariser(trainable: Params, guide: Params) -> jax.Array:
    """sum ||theta_T - theta_F||^2 over BERT_T; the frozen embeddings are identical, so they add exactly 0."""
    sq = jax.tree.map(lambda t, f: jnp.sum(jnp.square(t - f)), trainable["encoder"], guide["encoder"])
    return jax.tree.reduce(jnp.add, sq, jnp.zeros((), jnp.float32))


def forward(spec: ModelSpec, trainable: Params, guide: Params, batch: dict[str, jax.Array], rng: jax.Array,
            train: bool = True) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """-> (c, h_all, f(c), f(h_all)): BERT_T's sentence vector (last-layer [CLS], or its `spec.pooling` of the
    last layer), the guide's pooled views and their projections (f is the identity when the spec has no head)."""
    k_guide, k_trained = jax.random.split(rng)
    ids, mask, tt = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    hidden_f = spec.bert_module(guide=True).apply(
        {"params": guide}, ids, mask, tt, deterministic=not (train and spec.guide_dropout),
        rngs={"dropout": k_guide})
    h_all = jax.lax.stop_gradient(pool_layers(hidden_f, mask, spec.guide_pooling, spec.layers))
    hidden_t = spec.bert_module().apply(
        {"params": trained_bert(trainable, guide)}, ids, mask, tt, deterministic=not train,
        rngs={"dropout": k_trained})
    c = pool(hidden_t[-1], mask, spec.pooling)
    if not spec.head:
        return c, h_all, c, h_all
    head = head_module(spec)
    fc = head.apply({"params": trainable["head"]}, c)
    fh = head.apply({"params": trainable["head"]}, h_all)
    return c, h_all, fc, fh
