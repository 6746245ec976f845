"""Orbax checkpoints: periodic saves of the full train state (latest N), the best-on-dev params, exact resume.

Layout of a workdir:
    config.json              the resolved config (written by the trainer)
    checkpoints/<step>/      state (trainable params, optimizer state, step, PRNG key) + meta (JSON)
    best/<step>/             params of the best dev score + meta
The guide is never saved: it is re-derived from config.model and checked against the fingerprint in meta.
Orbax writes each step to a temporary folder and renames it when complete, so a kill never leaves half a save.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

STATE, BEST = "checkpoints", "best"


def is_workdir(path: Path) -> bool:
    """Whether a folder is a training workdir (it holds checkpoints/)."""
    return (Path(path) / STATE).is_dir()


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)


class Checkpoints:
    """The workdir's two Orbax CheckpointManagers: periodic state (keeps `keep`) and best params (keeps 1)."""

    def __init__(self, workdir: str | Path, keep: int = 3, async_save: bool = True):
        workdir = Path(workdir).absolute()
        opts = {"create": True, "enable_async_checkpointing": async_save}
        self.state = ocp.CheckpointManager(workdir / STATE, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, **opts))
        self.best = ocp.CheckpointManager(workdir / BEST, options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts))

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves the full train state and its metadata at `step`."""
        self.state.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      meta=ocp.args.JsonSave(meta)), force=True)

    def save_best(self, step: int, params: Any, meta: dict[str, Any]) -> None:
        """Replaces the best checkpoint with these trainable params."""
        self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                     meta=ocp.args.JsonSave(meta)), force=True)

    def latest_step(self) -> int | None:
        """The step of the newest complete periodic save."""
        return self.state.latest_step()

    def restore(self, like: Any) -> tuple[Any, dict[str, Any]] | None:
        """(state, meta) of the newest periodic save, laid out like `like` (shapes, dtypes, shardings), or None."""
        step = self.state.latest_step()
        if step is None:
            return None
        out = self.state.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(like)),
                                                               meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]

    def read_meta(self) -> dict[str, Any] | None:
        """The metadata of the newest periodic save (no arrays read)."""
        step = self.state.latest_step()
        if step is None:
            return None
        return self.state.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self.state.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the managers."""
        self.state.close()
        self.best.close()


def resolve_checkpoint(path: str | Path) -> tuple[Path, str | None, int | None]:
    """A workdir, or one checkpoint folder in it (<workdir>/best/<step>, <workdir>/checkpoints/<step>) ->
    (workdir, which, step); which and step are None for a plain workdir."""
    path = Path(path).expanduser()
    if path.name.isdigit() and path.parent.name in (BEST, STATE) and is_workdir(path.parent.parent):
        return path.parent.parent, "best" if path.parent.name == BEST else "latest", int(path.name)
    if not is_workdir(path) and any(path.glob("seed_*/checkpoints")):
        raise FileNotFoundError(f"{path}: a multi-seed workdir; name one seed: {path}/seed_<N>")
    return path, None, None


def restore_params(workdir: str | Path, like: Any, which: str = "best",
                   step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Trainable params of a workdir's best (or latest, or given-step) checkpoint, laid out like `like`."""
    workdir = Path(workdir).absolute()
    if which not in ("best", "latest"):
        raise ValueError(f"which={which!r}: choose 'best' or 'latest'")
    sub = BEST if which == "best" else STATE
    mngr = ocp.CheckpointManager(workdir / sub, options=ocp.CheckpointManagerOptions(create=False))
    if step is not None and step not in mngr.all_steps():
        raise FileNotFoundError(f"{workdir}: no checkpoint {sub}/{step} (have {sorted(mngr.all_steps())})")
    step = mngr.latest_step() if step is None else step
    if step is None and which == "best":  # no dev evaluation happened: the latest state is all there is
        mngr.close()
        return restore_params(workdir, like, "latest")
    if step is None:
        raise FileNotFoundError(f"{workdir}: no checkpoint in {sub}/ (has training run here?)")
    if which == "best":
        out = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(_abstract(like)),
                                                         meta=ocp.args.JsonRestore()))
        params, meta = out["params"], out["meta"]
    else:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))["state"]
        params = state["params"]
    mngr.close()
    return params, {**meta, "checkpoint": f"{sub}/{step}"}


def load_trained_bert(workdir: str | Path, which: str = "best", step: int | None = None) -> tuple[Any, Any]:
    """(the guide's Pretrained, BERT_T's full params) of a training workdir, the guide fingerprint checked."""
    from sgcl_jax.model import init_trainable, trained_bert
    from sgcl_jax.trainer import load_guide, model_spec

    workdir = Path(workdir)
    cfg_file = workdir / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{workdir}: no config.json; not a training workdir")
    config = json.loads(cfg_file.read_text())
    pre = load_guide(config["model"])
    spec = model_spec(config, pre.config)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        jax.eval_shape(lambda: init_trainable(spec, pre.params, jax.random.key(0))))
    params, meta = restore_params(workdir, like, which, step)
    if meta.get("guide_fingerprint") not in (None, pre.fingerprint()):
        raise ValueError(f"{workdir}: the checkpoint was trained from a different guide than config.model "
                         f"({meta['guide_fingerprint']} != {pre.fingerprint()})")
    return pre, trained_bert(params, pre.params)
