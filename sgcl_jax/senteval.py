"""SentEval's seven transfer tasks read from a folder in SentEval's `data/downstream` layout, each split in
SentEval's order (its protocols, in `transfer.py`, split that order)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sgcl_jax.files import read_lines
from sgcl_jax.tasks import TRANSFER_TASKS, MissingData, data_folder


@dataclasses.dataclass
class TransferTask:
    """A task's examples per split (texts, or text pairs for MRPC) with integer labels, in SentEval's order."""

    name: str
    protocol: str  # inner_kfold | split | kfold
    nclasses: int
    splits: dict[str, tuple[list[Any], np.ndarray]]

    @property
    def sentences(self) -> list[str]:
        """Every distinct sentence of every split."""
        out: set[str] = set()
        for texts, _ in self.splits.values():
            for t in texts:
                out.update(t if isinstance(t, tuple) else (t,))
        return sorted(out)

    def fingerprint(self) -> str:
        """A hash of the examples and labels, for the feature cache."""
        h = hashlib.sha256(self.name.encode())
        for split, (texts, labels) in sorted(self.splits.items()):
            h.update(split.encode() + json.dumps(texts).encode() + labels.tobytes())
        return h.hexdigest()[:16]


def _lines(path: Path, encoding: str) -> list[str]:
    try:
        return read_lines(path, encoding)
    except FileNotFoundError:
        raise MissingData(f"{path}: not found") from None


def _sorted(examples: list[tuple[Any, ...]], key: Callable[[tuple[Any, ...]], Any]) -> list[tuple[Any, ...]]:
    # SentEval sorts each split (by token count, then label) before encoding, and the k-fold splits that order.
    return sorted(examples, key=key)


def _binary(name: str, folder: Path, pos: str, neg: str) -> TransferTask:
    # SentEval reads these as Latin-1; the files here are ASCII, so UTF-8 gives the same text.
    examples = [(line.split(), 1) for line in _lines(folder / pos, "utf-8")]
    examples += [(line.split(), 0) for line in _lines(folder / neg, "utf-8")]
    examples = _sorted(examples, key=lambda z: (len(z[0]), z[1]))
    return TransferTask(name, "inner_kfold", 2, {"all": ([" ".join(t) for t, _ in examples],
                                                         np.array([y for _, y in examples], np.int32))})


def _sst2(folder: Path) -> TransferTask:
    splits = {}
    for split, fname in (("train", "sentiment-train"), ("dev", "sentiment-dev"), ("test", "sentiment-test")):
        path = folder / "SST" / "binary" / fname
        examples = []
        for i, line in enumerate(_lines(path, "utf-8"), start=1):
            cols = line.strip().split("\t")
            if len(cols) != 2 or cols[1] not in ("0", "1"):
                raise ValueError(f"{path}:{i}: expected 'sentence<TAB>0|1', got {line[:80]!r}")
            examples.append((cols[0].split(), int(cols[1])))
        examples = _sorted(examples, key=lambda z: (len(z[0]), z[1]))
        splits[split] = ([" ".join(t) for t, _ in examples], np.array([y for _, y in examples], np.int32))
    return TransferTask("SST2", "split", 2, splits)


TREC_CLASSES = {"ABBR": 0, "DESC": 1, "ENTY": 2, "HUM": 3, "LOC": 4, "NUM": 5}


def _trec(folder: Path) -> TransferTask:
    splits = {}
    for split, fname in (("train", "train_5500.label"), ("test", "TREC_10.label")):
        path = folder / "TREC" / fname
        examples = []
        for i, line in enumerate(_lines(path, "latin-1"), start=1):  # train_5500.label holds Latin-1 bytes
            target, _, rest = line.strip().partition(":")
            words = rest.split(" ", 1)
            if target not in TREC_CLASSES or len(words) != 2:
                raise ValueError(f"{path}:{i}: expected 'COARSE:fine question' with COARSE in "
                                 f"{sorted(TREC_CLASSES)}, got {line[:80]!r}")
            examples.append((words[1].split(), TREC_CLASSES[target]))  # the coarse label; the fine one dropped
        examples = _sorted(examples, key=lambda z: (len(z[0]), z[1]))
        splits[split] = ([" ".join(t) for t, _ in examples], np.array([y for _, y in examples], np.int32))
    return TransferTask("TREC", "kfold", 6, splits)


def _mrpc(folder: Path) -> TransferTask:
    splits = {}
    for split in ("train", "test"):
        path = folder / "MRPC" / f"msr_paraphrase_{split}.txt"
        lines = _lines(path, "utf-8")  # a UTF-8 BOM, then a header line
        if not lines or not lines[0].startswith("Quality"):
            raise ValueError(f"{path}:1: expected the header 'Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String'")
        examples = []
        for i, line in enumerate(lines[1:], start=2):
            cols = line.strip().split("\t")
            if len(cols) < 5 or cols[0] not in ("0", "1"):
                raise ValueError(f"{path}:{i}: expected 'label<TAB>id<TAB>id<TAB>sentence<TAB>sentence'")
            examples.append((cols[3].split(), cols[4].split(), int(cols[0])))
        examples = _sorted(examples, key=lambda z: (len(z[0]), len(z[1]), z[2]))
        splits[split] = ([(" ".join(a), " ".join(b)) for a, b, _ in examples],
                         np.array([y for _, _, y in examples], np.int32))
    return TransferTask("MRPC", "kfold", 2, splits)


def load_task(name: str, folder: str | os.PathLike | None = None) -> TransferTask:
    """Reads one of the seven tasks from a folder in SentEval's `data/downstream` layout."""
    root = data_folder("senteval", folder)
    readers = {"MR": lambda: _binary("MR", root / "MR", "rt-polarity.pos", "rt-polarity.neg"),
               "CR": lambda: _binary("CR", root / "CR", "custrev.pos", "custrev.neg"),
               "SUBJ": lambda: _binary("SUBJ", root / "SUBJ", "subj.objective", "subj.subjective"),
               "MPQA": lambda: _binary("MPQA", root / "MPQA", "mpqa.pos", "mpqa.neg"),
               "SST2": lambda: _sst2(root), "TREC": lambda: _trec(root), "MRPC": lambda: _mrpc(root)}
    if name not in readers:
        raise ValueError(f"unknown transfer task {name!r}; choose from {', '.join(TRANSFER_TASKS)}")
    return readers[name]()
