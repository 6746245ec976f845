"""Training text (STS-B sentences, text files, TFDS), the deterministic shuffle, per-process split and batching.

The batch of step t is a pure function of (seed, t): resuming at step t needs no iterator state beyond t.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sgcl_jax import sts
from sgcl_jax.tokenization import bucket_length, buckets_for, pad_batch, token_ids

log = logging.getLogger(__name__)


def read_text_file(path: str | Path) -> tuple[list[str], int]:
    """One sentence per line (.gz allowed); blank lines dropped; lines that are not UTF-8 skipped and counted."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: training text file not found")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: not a readable gzip file ({type(e).__name__}: {e or 'truncated'})") from None
    raw = _decode_bom(path, raw)
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw[:nul].count(b"\n") + 1
        raise ValueError(f"{path}: not text: NUL bytes at line {line} (a binary file, or text in an encoding "
                         "without a byte-order mark, such as UTF-16; save it as UTF-8)")
    sentences, bad = [], 0
    for i, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            bad += 1
            if bad <= 5:
                log.warning("%s:%d: not UTF-8, line skipped", path, i)
            continue
        if text:
            sentences.append(text)
    if bad:
        log.warning("%s: skipped %d line(s) that are not UTF-8", path, bad)
    if not sentences and bad:
        raise ValueError(f"{path}: no training sentences: none of its {bad} non-blank line(s) is UTF-8 text")
    if not sentences:
        raise ValueError(f"{path}: no training sentences (the file is empty or blank)")
    return sentences, bad


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))  # UTF-32 LE starts like UTF-16 LE


def _decode_bom(path: Path, raw: bytes) -> bytes:
    """Text with a byte-order mark (UTF-8-sig, UTF-16, UTF-32) as UTF-8 bytes; other bytes as they are."""
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            try:
                text = raw[len(bom):].decode(encoding)
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: starts with a {encoding} byte-order mark but is not {encoding} text "
                                 f"(byte {e.start + len(bom)})") from None
            log.info("%s: %s text (byte-order mark), decoded", path, encoding)
            return text.replace("\r\n", "\n").encode("utf-8")
    return raw


def read_tfds(name: str, split: str, feature: str, data_dir: str | None = None, limit: int = 0) -> list[str]:
    """This process's share of a TFDS split's text feature (tensorflow and tfds imported only here)."""
    import jax

    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(f"data.source='tfds' needs TensorFlow Datasets ({e}): pip install 'sgcl_jax[tfds]'") from None
    process_split = tfds.split_for_jax_process(split) if jax.process_count() > 1 else split
    ds = tfds.load(name, split=process_split, data_dir=data_dir or None)
    out = []
    for ex in tfds.as_numpy(ds):
        if feature not in ex:
            raise KeyError(f"TFDS {name}: no feature {feature!r} (has {sorted(ex)})")
        text = ex[feature].decode("utf-8", errors="replace").strip()
        if text:
            out.append(text)
        if limit and len(out) >= limit:
            break
    return out


def stsb_training_sentences(data_dir: str | None, download: bool) -> list[str]:
    """The STS-B sentences, fetched into the data folder first when absent and `download` is set."""
    try:
        return sts.stsb_sentences(data_dir)
    except sts.MissingData as e:
        hint = "point $SGCL_DATA_DIR or --config.data.data_dir at a folder holding STSBenchmark/"
        if not download:
            raise sts.MissingData(f"{e}; {hint}, or set --config.data.download=True") from e
        try:
            sts.download("STSB", data_dir)
        except OSError as d:
            raise sts.MissingData(f"{e}, and fetching it failed ({d}); {hint}") from d
        return sts.stsb_sentences(data_dir)


def load_sentences(cfg: Any) -> tuple[list[str], bool]:
    """The configured training sentences -> (sentences, whether every process holds the same list)."""
    if cfg.source == "stsb":
        sentences, shared = stsb_training_sentences(cfg.data_dir or None, cfg.download), True
    elif cfg.source == "text":
        sentences, shared = [], True
        for f in cfg.files:
            sentences += read_text_file(f)[0]
    elif cfg.source == "tfds":
        sentences, shared = read_tfds(cfg.tfds_name, cfg.tfds_split, cfg.tfds_feature, cfg.tfds_data_dir,
                                      cfg.max_sentences), False
    else:
        raise ValueError(f"data.source {cfg.source!r}: choose from 'stsb', 'text', 'tfds'")
    if cfg.max_sentences:
        sentences = sentences[: cfg.max_sentences]
    return sentences, shared


def fingerprint(sentences: Sequence[str]) -> str:
    """SHA-256 (16 hex digits) of the training sentences in order: a resume must see the same text."""
    h = hashlib.sha256()
    for s in sentences:
        h.update(s.encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()[:16]


def test_set_overlap(sentences: Sequence[str], data_dir: str | None = None) -> dict[str, int]:
    """How many training sentences also appear in each evaluation test set that is present."""
    train = set(sentences)
    out = {}
    for task in sts.TASKS:
        try:
            subsets = sts.read_task(task, data_dir)
        except (sts.MissingData, ValueError):
            continue
        if n := len(train.intersection(sts.distinct_sentences(subsets))):
            out[task] = n
    return out


class Batches:
    """Step -> this process's rows of the global batch, deterministic in (seed, step).

    With a shared sentence list (STS-B, text files) every process draws the same global batch and keeps its
    slice, so the padded length (the bucket of the global batch's longest row) agrees everywhere. With a
    per-process list (TFDS) each process draws its own rows, and `sync_length` (e.g. a max over processes)
    makes the lengths agree.
    """

    def __init__(self, sentences: Sequence[str], tokenizer: Any, global_batch: int, seed: int, max_length: int,
                 buckets: Sequence[int], process_index: int = 0, process_count: int = 1, shared: bool = True,
                 sync_length: Any = None):
        if global_batch % process_count:
            raise ValueError(f"batch size {global_batch} does not divide over {process_count} processes")
        self.local = global_batch // process_count
        self.draw = global_batch if shared else self.local
        if len(sentences) < self.draw:
            raise ValueError(f"{len(sentences)} training sentences are fewer than one batch of {self.draw}")
        self.sentences = list(sentences)
        self.tokenizer = tokenizer
        self.seed = seed
        self.max_length = max_length
        self.buckets = buckets_for(max_length, buckets)
        self.offset = process_index * self.local if shared else 0
        self.sync_length = sync_length
        self.steps_per_epoch = len(self.sentences) // self.draw

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, index of the step's first sentence in that epoch's permutation)."""
        return step // self.steps_per_epoch, (step % self.steps_per_epoch) * self.draw

    def drawn(self, step: int) -> list[str]:
        """The sentences drawn for a step (a new permutation every epoch; an epoch's tail is dropped)."""
        epoch, start = self.position(step)
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.sentences))
        return [self.sentences[i] for i in perm[start : start + self.draw]]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        """This process's token arrays for a step: (local rows, bucket length)."""
        ids = token_ids(self.tokenizer, self.drawn(step), self.max_length)
        length = bucket_length(max(len(x) for x in ids), self.buckets)
        if self.sync_length is not None:
            length = self.sync_length(length)
        mine = ids[self.offset : self.offset + self.local]
        return pad_batch(mine, (length,), self.tokenizer.pad_token_id or 0)
