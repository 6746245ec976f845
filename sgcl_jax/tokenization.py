"""Tokenization to a small set of bucket lengths, so jit compiles once per bucket rather than per batch."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_BUCKETS = (16, 32, 64, 128)


def buckets_for(max_length: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> tuple[int, ...]:
    """The bucket lengths capped at max_length, max_length itself always included."""
    return tuple(sorted({b for b in buckets if b < max_length} | {max_length}))


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds n tokens."""
    for b in buckets:
        if n <= b:
            return b
    return buckets[-1]


def token_ids(tokenizer: Any, sentences: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids with [CLS]/[SEP], truncated to max_length, unpadded."""
    return tokenizer(list(sentences), max_length=max_length, truncation=True, padding=False)["input_ids"]


def token_ids_once(tokenizer: Any, sentences: Sequence[str], max_length: int) -> tuple[tuple[int, ...], ...]:
    """`token_ids`, remembered for the last few sentence lists: a run's dev set is tokenized once, not at every
    evaluation."""
    return _token_ids_cached(tokenizer, tuple(sentences), max_length)


@functools.lru_cache(maxsize=4)
def _token_ids_cached(tokenizer: Any, sentences: tuple[str, ...], max_length: int) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(x) for x in token_ids(tokenizer, sentences, max_length))


def pad_batch(ids: Sequence[Sequence[int]], buckets: Sequence[int], pad_id: int = 0,
              rows: int | None = None) -> dict[str, np.ndarray]:
    """Pads to the bucket of the longest row (and to `rows` rows with empty masks): the encoder's batch dict."""
    n = rows or len(ids)
    length = bucket_length(max((len(x) for x in ids), default=1), buckets)
    input_ids = np.full((n, length), pad_id, np.int32)
    mask = np.zeros((n, length), np.int32)
    for i, x in enumerate(ids):
        x = x[:length]
        input_ids[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}


def tokenize(tokenizer: Any, sentences: Sequence[str], max_length: int = 128,
             buckets: Sequence[int] = DEFAULT_BUCKETS) -> dict[str, np.ndarray]:
    """Sentences -> {input_ids, attention_mask, token_type_ids}, padded to a bucket length."""
    return pad_batch(token_ids(tokenizer, sentences, max_length), buckets_for(max_length, buckets),
                     tokenizer.pad_token_id or 0)
