"""Evaluation task names: the built-in STS sets, STS 2017's multilingual tracks, SentEval's transfer tasks,
any STS-format folder, and the aliases that name groups of them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

STS_TASKS = ("STS12", "STS13", "STS14", "STS15", "STS16", "STSB", "SICKR")
# Track name -> the file stem in SemEval-2017's release. tr-en (track 6) has 500 input lines for 250 gold
# scores and nothing in the release says which are scored: it is refused (see sts.read_sts17).
STS17_TRACKS = {"STS17-ar-ar": "track1.ar-ar", "STS17-ar-en": "track2.ar-en", "STS17-es-es": "track3.es-es",
                "STS17-es-en": "track4a.es-en", "STS17-es-en-wmt": "track4b.es-en", "STS17-en-en": "track5.en-en",
                "STS17-tr-en": "track6.tr-en"}
TRANSFER_TASKS = ("MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC")
ALIASES = {"sts": STS_TASKS, "transfer": TRANSFER_TASKS,
           "sts17": tuple(t for t in STS17_TRACKS if t != "STS17-tr-en")}


DATA_ENV = {"sts": "SGCL_DATA_DIR", "senteval": "SGCL_SENTEVAL_DIR"}


def data_folder(which: str, explicit: str | os.PathLike | None = None) -> Path:
    """The STS ("sts") or SentEval ("senteval") data folder: the explicit one, else its environment variable, else
    for STS the user cache folder (where missing STS sets are fetched)."""
    folder = explicit or os.environ.get(DATA_ENV[which])
    if folder:
        return Path(folder).expanduser()
    if which == "senteval":
        raise MissingData("no SentEval data folder: pass --senteval-dir (eval.senteval_dir) or set $SGCL_SENTEVAL_DIR")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sgcl_jax" / "sts"


class MissingData(FileNotFoundError):
    """A task's files are not in the data folder (STS or SentEval)."""


def kind(task: str) -> str:
    """'sts' (English STS), 'sts17' (multilingual), 'transfer' (SentEval classification) or 'folder'."""
    if task in STS_TASKS:
        return "sts"
    if task in STS17_TRACKS:
        return "sts17"
    if task in TRANSFER_TASKS:
        return "transfer"
    return "folder"


def expand(names: Iterable[str]) -> tuple[str, ...]:
    """Task names with aliases expanded, duplicates dropped, order kept; unknown names raise ValueError.

    A name that is none of the above must be an existing folder of STS-format files.
    """
    out: list[str] = []
    unknown = []
    for name in names:
        for task in ALIASES.get(name.lower(), (name,)):
            if kind(task) == "folder" and not Path(task).expanduser().is_dir():
                unknown.append(task)
            elif task not in out:
                out.append(task)
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}: use {', '.join(STS_TASKS)}, {', '.join(TRANSFER_TASKS)}, "
                         f"{', '.join(STS17_TRACKS)}, an alias ({', '.join(ALIASES)}) or a folder of STS files")
    return tuple(out)
