"""Atomic writes: a reader never sees half a file or half a folder."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; malformed JSON is a ValueError naming the file and line."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def read_lines(path: str | os.PathLike, encoding: str = "utf-8") -> list[str]:
    """A text file's lines, split on newlines only (the released data files pair line by line), without a
    byte-order mark or carriage returns; undecodable bytes are a ValueError naming the file and line."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        label = "UTF-8" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
        raise ValueError(f"{path}:{line}: not {label} ({e.reason})") from None
    lines = text.removeprefix("\ufeff").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [x.rstrip("\r") for x in lines]


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Writes JSON through a temporary file and a rename."""
    write_text(json.dumps(obj, indent=2), path)


def write_text(text: str, path: str | os.PathLike) -> None:
    """Writes a text file through a temporary file and a rename; on failure the old file is kept, named."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = f"; {path.name} as it was is kept" if path.exists() else ""
        raise OSError(e.errno, f"{path}: cannot write ({e.strerror or e}){kept}") from None


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def normal_permissions(root: Path) -> None:
    """Gives a folder tree the modes a plain mkdir/open would (0755 / 0644 under the usual umask 022).

    Temporary folders are created 0700 and some writers use 0600: a folder made for others to read must not be.
    """
    mask = current_umask()
    root.chmod(0o777 & ~mask)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty folder beside `final`; a clean exit puts it in place of `final` (with normal permissions),
    an error removes it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
    try:
        yield tmp
        normal_permissions(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
