"""The one encode path: `SentenceEncoder`, used by dev evaluation, the CLIs and `load_encoder`."""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgcl_jax.bert import Bert, BertConfig
from sgcl_jax.model import DTYPES
from sgcl_jax.pooling import POOLINGS, pool, sentence_embedding
from sgcl_jax.tokenization import bucket_length, pad_batch, token_ids_once

log = logging.getLogger(__name__)

# Finer than the training buckets: evaluation sorts by length, so most batches are short and padding is waste
# (a MiniLM forward compiles in well under a second per shape on CPU, so 20-odd shapes cost little).
EVAL_BUCKETS = (4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 28, 32, 36, 40, 48, 56, 64, 80, 96, 128, 192, 256, 384, 512)


@functools.lru_cache(maxsize=64)
def embed_fn(config: BertConfig, dtype: str, pooling: str, layer: int | str) -> Callable[..., jax.Array]:
    """A jitted (params, batch) -> (b, d) fp32 embeddings; params are an argument, so new weights never recompile."""

    cls_only = pooling == "cls" and layer in ("last", -1, config.num_hidden_layers)

    def fn(params, batch):
        hidden = Bert(config, DTYPES[dtype], cls_only=cls_only).apply(
            {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return sentence_embedding(hidden, batch["attention_mask"], pooling, layer)

    return jax.jit(fn)


@functools.lru_cache(maxsize=8)
def all_layers_fn(config: BertConfig, dtype: str) -> Callable[..., jax.Array]:
    """A jitted (params, batch) -> (L+1, len(POOLINGS), b, d): every layer under every pooling, in one pass."""

    def fn(params, batch):
        hidden = Bert(config, DTYPES[dtype]).apply({"params": params}, batch["input_ids"],
                                                         batch["attention_mask"], batch["token_type_ids"])
        mask = batch["attention_mask"]
        return jnp.stack([jnp.stack([pool(h, mask, p) for p in POOLINGS]) for h in hidden])

    return jax.jit(fn)


def run_sorted(fn: Callable[..., jax.Array], params: Any, tokenizer: Any, sentences: Sequence[str],
               batch_size: int = 64, max_length: int = 128, progress: bool = False) -> np.ndarray:
    """Applies fn to length-sorted, bucket-padded batches of fixed row count; results in the input order.

    A batch never spans two buckets, so each sentence is padded to its own length's bucket, whatever else is
    encoded with it: its vector is the same bits alone or among other tasks' sentences (padded to a longer
    neighbour's bucket, 1 row in 10-250 changed in the last bits, enough to flip SST2's choice of C on its dev
    split). The batch axis of fn's output must be the second to last (..., b, d).
    """
    if len(sentences) == 0:
        raise ValueError("no sentences to encode")
    ids = token_ids_once(tokenizer, sentences, max_length)
    order = np.argsort([-len(x) for x in ids], kind="stable")
    buckets = tuple(b for b in EVAL_BUCKETS if b < max_length) + (max_length,)
    rows = min(batch_size, len(ids))  # a fixed row count: one compile per bucket, not per remainder
    batches = []
    for _, group in itertools.groupby(order, key=lambda i: bucket_length(len(ids[i]), buckets)):
        group = list(group)
        batches += [group[s : s + rows] for s in range(0, len(group), rows)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="encode", unit="batch")
    outs = []
    for idx in batches:
        batch = pad_batch([ids[i] for i in idx], buckets, tokenizer.pad_token_id or 0, rows=rows)
        outs.append(fn(params, batch)[..., : len(idx), :])  # async dispatch: tokenising overlaps compute
    stacked = np.concatenate([np.asarray(o) for o in outs], axis=-2)
    result = np.empty_like(stacked)
    result[..., order, :] = stacked
    return result


def _check_inputs(sentences: Any, batch_size: int, truncate_dim: int | None, dim: int) -> list[str]:
    """The sentences as a list, or a one-line error naming the argument."""
    if isinstance(sentences, str):
        items = [sentences]
    elif isinstance(sentences, (list, tuple)) or (hasattr(sentences, "__iter__") and not isinstance(sentences, bytes)
                                                 and not isinstance(sentences, dict)):
        items = list(sentences)
    else:
        raise ValueError(f"encode: sentences must be a string or a list of strings, got {type(sentences).__name__}")
    for i, s in enumerate(items):
        if not isinstance(s, str):
            raise ValueError(f"encode: sentences[{i}] is a {type(s).__name__}, not a string")
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"encode: sentences[{i}] is not valid Unicode text ({e.reason} at position "
                             f"{e.start})") from None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"encode: batch_size={batch_size!r}: must be an integer >= 1")
    if truncate_dim is not None and (isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int)
                                     or not 1 <= truncate_dim <= dim):
        raise ValueError(f"encode: truncate_dim={truncate_dim!r}: must be in 1..{dim}")
    return items


class SentenceEncoder:
    """A sentence encoder (BERT params + tokenizer), [CLS] of the last layer by default (what SG-BERT uses).

    `encode` takes the keywords of `SentenceTransformer.encode`, so tools written for sentence-transformers
    (MTEB-style evaluators, for instance) can call it in place of a SentenceTransformer.
    """

    def __init__(self, config: BertConfig, params: Any, tokenizer: Any, max_length: int = 128,
                 dtype: str = "float32", pooling: str = "cls", layer: int | str = "last", source: str = ""):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: choose from {POOLINGS}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: choose from {tuple(DTYPES)}")
        self.config, self.params, self.tokenizer = config, params, tokenizer
        self.max_length, self.dtype, self.pooling, self.layer, self.source = max_length, dtype, pooling, layer, source

    similarity_fn_name = "cosine"  # what SentenceTransformer exposes; its evaluators read it

    def __repr__(self) -> str:
        return (f"SentenceEncoder(source={self.source!r}, dim={self.config.hidden_size}, "
                f"layers={self.config.num_hidden_layers}, pooling={self.pooling!r}, layer={self.layer!r}, "
                f"max_length={self.max_length}, dtype={self.dtype!r})")

    def get_sentence_embedding_dimension(self) -> int:
        """The embedding size d."""
        return self.config.hidden_size

    def encode(self, sentences: str | Sequence[str], batch_size: int = 32, show_progress_bar: bool | None = None,
               output_value: str | None = "sentence_embedding", precision: str | None = "float32",
               convert_to_numpy: bool = True, convert_to_tensor: bool = False, device: str | None = None,
               normalize_embeddings: bool = False, prompt: str | None = None, truncate_dim: int | None = None,
               *, pooling: str | None = None, layer: int | str | None = None, **kwargs: Any) -> Any:
        """Sentences -> (n, d) float32 embeddings in input order; one string -> (d,). SentenceTransformer's keywords.

        `prompt` is prepended to every sentence; `truncate_dim` keeps the first dimensions; `pooling` and `layer`
        choose another embedding of the same model. Keywords this encoder has no use for are ignored (logged).
        """
        if kwargs:
            log.debug("SentenceEncoder.encode ignores %s", sorted(kwargs))
        if output_value not in ("sentence_embedding", None):
            raise ValueError(f"output_value={output_value!r}: only sentence embeddings are available")
        if precision not in ("float32", None):
            raise ValueError(f"precision={precision!r}: only float32 embeddings are available")
        single = isinstance(sentences, str)
        items = _check_inputs(sentences, batch_size, truncate_dim, self.config.hidden_size)
        if prompt:
            items = [prompt + s for s in items]
        if items:
            fn = embed_fn(self.config, self.dtype, pooling or self.pooling, self.layer if layer is None else layer)
            progress = len(items) > 10 * batch_size if show_progress_bar is None else show_progress_bar
            emb = run_sorted(fn, self.params, self.tokenizer, items, batch_size, self.max_length, progress)
        else:
            emb = np.zeros((0, self.config.hidden_size), np.float32)
        if truncate_dim:
            emb = emb[:, :truncate_dim]
        if normalize_embeddings:
            emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
        emb = emb[0] if single else emb
        if convert_to_tensor:
            import torch

            return torch.from_numpy(np.ascontiguousarray(emb))
        return emb if convert_to_numpy else list(emb)

    def similarity(self, a: Any, b: Any) -> np.ndarray:
        """Cosine similarity of every row of a with every row of b: (n, m), as SentenceTransformer.similarity."""
        a, b = np.atleast_2d(np.asarray(a, np.float32)), np.atleast_2d(np.asarray(b, np.float32))
        a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
        return a @ b.T
