"""Orbax checkpoints of the train state (filled in with the trainer)."""

from pathlib import Path


def is_workdir(path: Path) -> bool:
    """Whether a folder is a training workdir (it holds checkpoints/)."""
    return (path / "checkpoints").is_dir()
