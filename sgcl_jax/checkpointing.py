"""Orbax checkpoints of a run folder: the newest N train states, the best-on-dev params, and restores that
fall back past a damaged save.

Layout of a run folder (see runs.py for the rest):
    checkpoints/<step>/      state (trainable params, optimizer state, step, PRNG key, divergence flag) + meta
    best/<step>/             the trainable params of the best dev score + meta
The guide is never saved: it is re-derived from the config and checked against the run's identity in meta.
Orbax writes each step to a temporary folder and renames it when complete, so a kill never leaves half a
save; temporary folders left by a kill are removed when the folder is next opened for writing.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)
STATE, BEST = "checkpoints", "best"


def abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of a pytree (concrete or already abstract): Orbax's restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)


def set_aside(path: Path) -> Path:
    """Renames a damaged checkpoint folder out of Orbax's view (never deletes what a user may want back)."""
    target = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(target)
    return target


def _manager(folder: Path, keep: int, writable: bool, async_save: bool = True) -> ocp.CheckpointManager:
    # A reading manager never saves, so its preservation policy never deletes; Orbax's read_only mode is not
    # used because it warns on every open.
    # Orbax names its cross-process barriers by step alone: the state and best managers saving the same step at
    # once in a multi-process run would meet at each other's barriers ("Barrier ... is already ongoing", then a
    # timeout), so each manager's barriers carry its folder's name.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep), create=writable,
        cleanup_tmp_directories=writable, enable_async_checkpointing=async_save,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=folder.name))
    for _ in range(0 if writable else 9):  # a writer must not hide a missing folder
        try:
            return ocp.CheckpointManager(folder, options=options)
        except FileNotFoundError:  # a trainer rotated a step away while the manager listed it: list again
            time.sleep(0.05)
    return ocp.CheckpointManager(folder, options=options)


def _reason(e: BaseException) -> str:
    """An exception as one short line (TensorStore's messages run to pages)."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


class Damaged(ValueError):
    """A checkpoint that exists but does not restore; the message names it and what failed."""


def _restore_newest(mngr: ocp.CheckpointManager, args: Any, what: str, steps: list[int] | None = None,
                    repair: bool = False) -> tuple[int, Any] | None:
    """(step, restored) of the newest step that restores. Each one that fails is reported and, when `repair`
    (only the trainer, holding the run's lock), set aside; readers leave the folder as it is."""
    tried: set[int] = set()
    while True:
        todo = [s for s in sorted(mngr.all_steps() if steps is None else steps, reverse=True) if s not in tried]
        if not todo:
            return None
        step = todo[0]
        tried.add(step)
        try:
            return step, mngr.restore(step, args=args)
        except Exception as e:  # TensorStore, JSON and missing-file errors all mean the same here: damaged
            if steps is None and not (Path(mngr.directory) / str(step)).exists():
                # A trainer rotated it away while we read: look again (its newer saves are complete ones).
                log.info("%s %s/%d was removed while being read; reading the newest again", what,
                         Path(mngr.directory), step)
                with contextlib.suppress(FileNotFoundError):  # the listing itself may race the next rotation
                    mngr.reload()
                continue
            reason = _reason(e)
            if repair and jax.process_index() == 0:
                moved = set_aside(Path(mngr.directory) / str(step))
                log.warning("%s %s/%d does not restore (%s); set aside as %s, trying the next older one",
                            what, Path(mngr.directory), step, reason, moved.name)
                mngr.reload()
            else:
                log.warning("%s %s/%d does not restore (%s); trying the next older one", what,
                            Path(mngr.directory), step, reason)
            if steps is not None and len(steps) == 1:
                raise Damaged(f"{Path(mngr.directory)}/{step} does not restore ({reason})") from None


class SaveFailed(OSError):
    """A checkpoint save that did not complete (a full disk, most often); the message names what was kept."""


def _no_space(e: BaseException) -> bool:
    text = str(e)
    return getattr(e, "errno", None) == 28 or "No space left" in text or "RESOURCE_EXHAUSTED" in text


def _peer_lost(e: BaseException) -> bool:
    # jax.distributed's barrier inside Orbax's save fails when another process died or stopped answering.
    text = str(e).lower()
    return "heartbeat" in text or "barrier" in text or "coordinationservice" in text


class Checkpoints:
    """A run folder's two Orbax CheckpointManagers: periodic state (the newest `keep`) and best params (1)."""

    def __init__(self, workdir: str | Path, keep: int = 2, async_save: bool = True, writable: bool = True):
        workdir = Path(workdir).absolute()  # Orbax needs absolute paths
        self.writable = writable
        self.state = _manager(workdir / STATE, keep, writable, async_save)
        self.best = _manager(workdir / BEST, 1, writable, async_save)

    @contextlib.contextmanager
    def _saving(self) -> Iterator[None]:
        """Turns a failed save (reported by Orbax at this call or, for an async save, at a later one) into one line
        naming the folder and what was kept; the failed save's temporary folder is removed."""
        try:
            yield
        except SaveFailed:
            raise
        except Exception as e:
            folder = Path(self.state.directory)
            for parent in (folder, Path(self.best.directory)):
                for tmp in parent.glob("*.orbax-checkpoint-tmp*"):
                    shutil.rmtree(tmp, ignore_errors=True)
            kept = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
            reason = "no space left on device" if _no_space(e) else _reason(e)
            fix = ("Another process of the run stopped: start every process with the same command"
                   if _peer_lost(e) and not _no_space(e) else "Free space (or fix the disk) and run the same command")
            raise SaveFailed(
                f"{folder}: a checkpoint save failed ({reason}). Kept: "
                + (f"checkpoints {kept}, the newest complete being {folder}/{kept[-1]}" if kept else
                   "no checkpoint yet")
                + f"; the run folder's other files are unchanged. {fix} again to resume.") from None

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves the full train state and its metadata at `step` (asynchronously)."""
        with self._saving():
            self.state.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                          meta=ocp.args.JsonSave(meta)), force=True)

    def save_best(self, step: int, params: Any, meta: dict[str, Any]) -> None:
        """Replaces the best checkpoint with these trainable params."""
        with self._saving():
            if step in self.best.all_steps():  # a resumed run reaching the same step again: replace it
                self.best.delete(step)
            self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                         meta=ocp.args.JsonSave(meta)), force=True)

    def latest_step(self) -> int | None:
        """The step of the newest complete periodic save."""
        return self.state.latest_step()

    def restore(self, like: Any) -> tuple[Any, dict[str, Any]] | None:
        """(state, meta) of the newest periodic save that restores, laid out like `like`; None when none does."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract(like)), meta=ocp.args.JsonRestore())
        found = _restore_newest(self.state, args, "checkpoint", repair=self.writable)
        return None if found is None else (found[1]["state"], found[1]["meta"])

    def read_meta(self) -> dict[str, Any] | None:
        """The metadata of the newest periodic save whose metadata reads (no arrays read)."""
        found = _restore_newest(self.state, ocp.args.Composite(meta=ocp.args.JsonRestore()), "checkpoint")
        return None if found is None else found[1]["meta"]

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        with self._saving():
            self.state.wait_until_finished()
            self.best.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the managers."""
        with self._saving():
            self.state.close()
            self.best.close()


def has_checkpoints(workdir: str | Path) -> bool:
    """Whether a folder holds a training run's checkpoints/ folder."""
    return (Path(workdir) / STATE).is_dir()


def restore(workdir: str | Path, which: str, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
    """The stored tree (the state for 'latest', the params for 'best') and its meta, laid out like `like`.

    With `step`, exactly that checkpoint (Damaged when it does not restore); without, the newest that restores
    (a damaged best is Damaged too: it is never silently replaced). None when there is none. Never changes the
    folder.
    """
    if which not in ("best", "latest"):
        raise ValueError(f"which={which!r}: choose 'best' or 'latest'")
    sub, item = (BEST, "params") if which == "best" else (STATE, "state")
    folder = Path(workdir).absolute() / sub
    if not folder.is_dir():
        return None
    mngr = _manager(folder, 1, writable=False)
    try:
        if step is not None and step not in mngr.all_steps():
            raise FileNotFoundError(f"{workdir}: no checkpoint {sub}/{step} (have {sorted(mngr.all_steps())})")
        args = ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract(like)), "meta": ocp.args.JsonRestore()})
        steps = [step] if step is not None else sorted(mngr.all_steps())[-1:] if which == "best" else None
        found = _restore_newest(mngr, args, f"{which} checkpoint", steps) if steps != [] else None
    finally:
        mngr.close()
    if found is None:
        return None
    return found[1][item], {**found[1]["meta"], "checkpoint": f"{sub}/{found[0]}"}
