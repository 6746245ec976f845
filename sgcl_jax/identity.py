"""A run's identity: the config fields (and fingerprints) that define what a run trains, the fields that may change
when it resumes, and the check that refuses to continue a run under another identity. One module holds the rules;
the trainer writes `identity.json` with them and checks every resume against it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sgcl_jax.config import Config
from sgcl_jax.files import read_json

IDENTITY = "identity.json"  # the run's identity, written with config.json before anything else of the run


class RunError(ValueError):
    """A run folder that cannot be used as asked: another run's folder, in use, or incomplete."""


# Fields that may differ when a run resumes: where things are and how often to log, not what is trained.
RESUMABLE = ("seeds", "train.eval_every", "train.log_every", "train.progress", "train.keep_checkpoints",
             "train.checkpoint_every", "model.remat", "data.data_dir", "data.download", "data.tfds_data_dir",
             "eval.", "mesh.")


def identity(cfg: Config) -> dict[str, Any]:
    """The fields that define what a run trains (flattened, JSON values): a resume must match every one."""
    flat = _flatten(cfg.to_dict())
    return {k: v for k, v in flat.items() if not any(k == r or (r.endswith(".") and k.startswith(r))
                                                     for r in RESUMABLE)}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and k != "random":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def read_identity(workdir: str | Path) -> dict[str, Any] | None:
    """The identity a run folder was created with (identity.json), or None for a folder without one."""
    path = Path(workdir) / IDENTITY
    return read_json(path) if path.exists() else None


def identity_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The identity fields whose values differ, as 'field: saved -> current'.

    A field a run folder lacks was added by a later release: the run trained with its default, so it matches
    that default (older run folders stay resumable)."""
    defaults = identity(Config())
    saved = {**{k: v for k, v in defaults.items() if k in current}, **saved}
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k, '(absent)')!r} -> {current.get(k, '(absent)')!r}" for k in keys
            if saved.get(k) != current.get(k)]


def check_identity(workdir: Path, saved: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Refuses to continue a run whose identity differs, listing every differing field on one line."""
    if saved is None:
        raise RunError(f"{workdir}: its checkpoints carry no run identity (written by an older sgcl_jax); "
                       "use a new --workdir")
    diff = identity_mismatch(saved, current)
    if diff:
        raise RunError(f"{workdir}: refusing to resume: this config differs from the run's in {'; '.join(diff)}. "
                       "Use a new --workdir, or the run's own values (its config.json). Fields that may change "
                       "on resume are listed in the README.")
