"""The one encode path (evaluation during training, the CLI, and `load_encoder` for users)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgcl_jax.bert import BertConfig, BertEncoder
from sgcl_jax.model import DTYPES
from sgcl_jax.pooling import POOLINGS, pool, sentence_embedding
from sgcl_jax.tokenization import pad_batch, token_ids

# Finer than the training buckets: evaluation sorts by length, so most batches are short and padding is waste
# (a MiniLM forward compiles in well under a second per shape on CPU, so 20-odd shapes cost little).
EVAL_BUCKETS = (4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 28, 32, 36, 40, 48, 56, 64, 80, 96, 128, 192, 256, 384, 512)


@functools.lru_cache(maxsize=64)
def embed_fn(config: BertConfig, dtype: str, pooling: str, layer: int | str) -> Callable[..., jax.Array]:
    """A jitted (params, batch) -> (b, d) fp32 embeddings; params are an argument, so new weights never recompile."""

    cls_only = pooling == "cls" and layer in ("last", -1, config.num_hidden_layers)

    def fn(params, batch):
        hidden = BertEncoder(config, DTYPES[dtype], cls_only=cls_only).apply(
            {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return sentence_embedding(hidden, batch["attention_mask"], pooling, layer)

    return jax.jit(fn)


@functools.lru_cache(maxsize=8)
def all_layers_fn(config: BertConfig, dtype: str) -> Callable[..., jax.Array]:
    """A jitted (params, batch) -> (L+1, len(POOLINGS), b, d): every layer under every pooling, in one pass."""

    def fn(params, batch):
        hidden = BertEncoder(config, DTYPES[dtype]).apply({"params": params}, batch["input_ids"],
                                                         batch["attention_mask"], batch["token_type_ids"])
        mask = batch["attention_mask"]
        return jnp.stack([jnp.stack([pool(h, mask, p) for p in POOLINGS]) for h in hidden])

    return jax.jit(fn)


def run_sorted(fn: Callable[..., jax.Array], params: Any, tokenizer: Any, sentences: Sequence[str],
               batch_size: int = 64, max_length: int = 128, progress: bool = False) -> np.ndarray:
    """Applies fn to length-sorted, bucket-padded batches of fixed row count; results in the input order.

    The batch axis of fn's output must be the second to last (..., b, d).
    """
    if len(sentences) == 0:
        raise ValueError("no sentences to encode")
    ids = token_ids(tokenizer, sentences, max_length)
    order = np.argsort([-len(x) for x in ids], kind="stable")
    buckets = tuple(b for b in EVAL_BUCKETS if b < max_length) + (max_length,)
    rows = min(batch_size, len(ids))  # a fixed row count: one compile per bucket, not per remainder
    starts = range(0, len(ids), rows)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="encode", unit="batch")
    outs = []
    for s in starts:
        idx = order[s : s + rows]
        batch = pad_batch([ids[i] for i in idx], buckets, tokenizer.pad_token_id or 0, rows=rows)
        outs.append(fn(params, batch)[..., : len(idx), :])  # async dispatch: tokenising overlaps compute
    stacked = np.concatenate([np.asarray(o) for o in outs], axis=-2)
    result = np.empty_like(stacked)
    result[..., order, :] = stacked
    return result


@dataclasses.dataclass
class Encoder:
    """A sentence encoder: BERT params + tokenizer; [CLS] of the last layer by default (what SG-BERT uses)."""

    config: BertConfig
    params: Any
    tokenizer: Any
    max_length: int = 128
    dtype: str = "float32"
    pooling: str = "cls"
    layer: int | str = "last"
    source: str = ""

    def encode(self, sentences: Sequence[str], batch_size: int = 64, normalize: bool = False,
               pooling: str | None = None, layer: int | str | None = None,
               progress: bool | None = None) -> np.ndarray:
        """Sentences -> (n, d) float32 embeddings, in input order."""
        if isinstance(sentences, str):
            sentences = [sentences]
        fn = embed_fn(self.config, self.dtype, pooling or self.pooling, self.layer if layer is None else layer)
        progress = len(sentences) > 10 * batch_size if progress is None else progress
        emb = run_sorted(fn, self.params, self.tokenizer, sentences, batch_size, self.max_length, progress)
        if normalize:
            emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
        return emb


def load_encoder(source: str = "minilm", which: str = "best", **kwargs: Any) -> Encoder:
    """An Encoder from a model name ('minilm'), a Hugging Face folder or hub id, a training workdir (its best
    or latest checkpoint) or one checkpoint folder of a workdir."""
    from sgcl_jax import checkpointing

    workdir, which_, step = checkpointing.resolve_checkpoint(source)
    if checkpointing.is_workdir(workdir):
        pre, params = checkpointing.load_trained_bert(workdir, which_ or which, step)
        return Encoder(pre.config, params, pre.tokenizer, source=f"{source} ({which})", **kwargs)
    from sgcl_jax.pretrained import load_pretrained

    pre = load_pretrained(source)
    return Encoder(pre.config, pre.params, pre.tokenizer, source=pre.source, **kwargs)
