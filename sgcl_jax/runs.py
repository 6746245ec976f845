"""A run folder <-> (config, guide, trained params, results): what load_encoder, evaluate, export and the
trainer share, plus the run's identity check and its lock.

A run folder describes itself:
    config.json      the validated config the run was trained with (its `seed` is the run's seed)
    checkpoints/     the newest train states; each one's meta holds the run's identity (see `identity.py`)
    best/            the best-on-dev params (absent when the untrained model scored best, or no dev set)
    metrics.jsonl    one JSON line per logged step and dev evaluation; tb/ the same for TensorBoard
    results.json     the final evaluation, with its protocol
    .lock            while a process trains here: its PID, host and start time
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import jax

from sgcl_jax import checkpointing
from sgcl_jax.config import Config, ConfigError
from sgcl_jax.encoder import SentenceEncoder
from sgcl_jax.files import read_json
from sgcl_jax.identity import RunError
from sgcl_jax.model import ModelSpec, init_trainable, load_guide, trained_bert
from sgcl_jax.pretrained import Pretrained, load_pretrained
from sgcl_jax.train_step import create_train_state, make_optimizer

log = logging.getLogger(__name__)
CONFIG, RESULTS, LOCK = "config.json", "results.json", ".lock"


def is_run(path: str | Path) -> bool:
    """Whether a folder is a training run (it holds checkpoints/)."""
    return checkpointing.has_checkpoints(path)


def resolve_checkpoint(path: str | Path) -> tuple[Path, str | None, int | None]:
    """A run folder, or one checkpoint folder in it (<run>/best/<step>, <run>/checkpoints/<step>) ->
    (run folder, which, step); which and step are None for a plain run folder."""
    path = Path(path).expanduser()
    if path.name.isdigit() and path.parent.name in (checkpointing.BEST, checkpointing.STATE) \
            and is_run(path.parent.parent):
        return path.parent.parent, "best" if path.parent.name == checkpointing.BEST else "latest", int(path.name)
    if not is_run(path) and any(path.glob("seed_*/checkpoints")):
        raise RunError(f"{path}: a multi-seed run folder; name one seed: {path}/seed_<N>")
    if path.is_dir() and (path / CONFIG).exists() and not is_run(path) and not _is_model_folder(path):
        raise RunError(f"{path}: a run folder without checkpoints (has training run here?)")
    return path, None, None


def _is_model_folder(path: Path) -> bool:
    return any((path / f).exists() for f in ("model.safetensors", "pytorch_model.bin"))


def read_config(workdir: str | Path) -> Config:
    """The validated config of a run folder."""
    path = Path(workdir) / CONFIG
    if not path.exists():
        raise RunError(f"{workdir}: no {CONFIG}; not a training run folder")
    raw = read_json(path)
    try:
        return Config.from_dict(raw)
    except ConfigError as e:
        raise RunError(f"{path}: {e}") from None


def read_results(workdir: str | Path, damaged_ok: bool = False) -> dict[str, Any] | None:
    """A run's results.json, or None before its final evaluation (and, with damaged_ok, when it does not parse:
    the trainer then scores the run again from its checkpoints)."""
    path = Path(workdir) / RESULTS
    if not path.exists():
        return None
    try:
        return read_json(path)
    except ValueError as e:
        if not damaged_ok:
            raise
        log.warning("%s; the run's checkpoints are intact, so it is scored again", e)
        return None


# ------------------------------------------------------------------------------------------ loading


@dataclasses.dataclass
class Run:
    """A trained run as loaded: its config, the guide (with tokenizer), BERT_T's full params and the checkpoint."""

    workdir: Path
    config: Config
    guide: Pretrained
    params: Any
    meta: dict[str, Any]

    @property
    def results(self) -> dict[str, Any] | None:
        """The run's results.json, if written."""
        return read_results(self.workdir)

    def scores(self) -> dict[str, Any] | None:
        """The run's scores computed on exactly the loaded checkpoint (results.json's best-on-dev entry, or its
        "last" entry), or None when results.json holds no score of these weights."""
        results, checkpoint = self.results, str(self.meta.get("checkpoint", ""))
        if not results or not checkpoint:
            return None
        model = str(results.get("protocol", {}).get("model", ""))
        if (checkpoint.startswith("step 0") and "step 0" in model) or re.search(
                rf"\b{re.escape(checkpoint)}\b", model):
            return results
        last = results.get("last")
        if last and checkpoint == f"{checkpointing.STATE}/{last['step']}":
            return {**results, "tasks": last["tasks"], "average": last["average"],
                    "protocol": {**results["protocol"], "model": f"{self.workdir} (last, {checkpoint})"}}
        return None

    def encoder(self, **overrides: Any) -> SentenceEncoder:
        """The trained BERT_T as a SentenceEncoder with the run's max length, eval dtype and pooling."""
        settings = {"max_length": self.config.model.max_length, "dtype": self.config.eval.dtype,
                    "pooling": self.config.eval.pooling}
        for key, value in overrides.items():
            if value is not None and key in settings and value != settings[key]:
                log.info("%s: overriding the run's %s=%r with %r", self.workdir, key, settings[key], value)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        label = f"{self.workdir} ({self.meta.get('checkpoint', '?')})"
        return SentenceEncoder(self.guide.config, self.params, self.guide.tokenizer, source=label, **settings)


def abstract_trainable(spec: ModelSpec, guide: Any) -> Any:
    """The trainable tree's shapes on this host's first device (what a restore fills in)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = jax.eval_shape(lambda: init_trainable(spec, guide, jax.random.key(0)))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes)


def abstract_state(spec: ModelSpec, cfg: Config, guide: Any) -> Any:
    """The full train state's shapes (optimizer state included) on this host's first device."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = jax.eval_shape(lambda: create_train_state(spec, guide, make_optimizer(cfg.optim, 1), cfg.seed))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes)


def load_run(path: str | Path, which: str = "best", step: int | None = None) -> Run:
    """A run folder's (or one checkpoint folder's) trained model: 'best' on dev, or 'latest'.

    A run whose dev evaluations never beat the untrained model has no best checkpoint: its best is the
    guide itself (step 0), as in the released code. A run without dev evaluations uses its latest state.
    """
    workdir, which_, step_ = resolve_checkpoint(path)
    which, step = which_ or which, step if step_ is None else step_
    if not is_run(workdir):
        raise RunError(f"{workdir}: not a training run folder (no checkpoints/)")
    cfg = read_config(workdir)
    guide = load_guide(cfg.model)
    spec = ModelSpec.from_config(cfg, guide.config)
    if which == "best":
        found = checkpointing.restore(workdir, "best", abstract_trainable(spec, guide.params), step)
        if found is None:
            latest = checkpointing.Checkpoints(workdir, writable=False).read_meta() or {}
            if latest.get("run", {}).get("best_step") == 0:
                meta = {**latest, "checkpoint": "step 0 (the untrained guide scored best on dev)"}
                _check_guide(workdir, meta, guide)
                return Run(workdir, cfg, guide, guide.params, meta)
            which = "latest"  # no dev evaluation happened: the latest state is all there is
    if which == "latest":
        found = checkpointing.restore(workdir, "latest", abstract_state(spec, cfg, guide.params), step)
        if found is not None:
            found = (found[0].params, found[1])
    if found is None:
        raise RunError(f"{workdir}: no {which} checkpoint restores (has training run here?)")
    params, meta = found
    _check_guide(workdir, meta, guide)
    return Run(workdir, cfg, guide, trained_bert(params, guide.params), meta)


def _check_guide(workdir: Path, meta: dict[str, Any], guide: Pretrained) -> None:
    saved = meta.get("identity", {}).get("guide.fingerprint", meta.get("guide_fingerprint"))
    if saved not in (None, guide.fingerprint()):
        raise RunError(f"{workdir}: the checkpoint was trained from a different guide than its config.json names "
                       f"({saved} != {guide.fingerprint()} from {guide.source})")


def load_encoder(source: str = "minilm", which: str = "best", **overrides: Any) -> SentenceEncoder:
    """A SentenceEncoder from a model name ('minilm'), a Hugging Face folder or hub id, a training run folder (its
    best or latest checkpoint) or one checkpoint folder of a run.

    A run's own max length, evaluation dtype and pooling are used unless overridden (each override is logged).
    """
    workdir, _, _ = resolve_checkpoint(source)
    if is_run(workdir):
        return load_run(source, which).encoder(**overrides)
    pretrained = load_pretrained(source)
    return SentenceEncoder(pretrained.config, pretrained.params, pretrained.tokenizer, source=source,
                           **{k: v for k, v in overrides.items() if v is not None})


# ------------------------------------------------------------------------------------------ the lock


class RunLock:
    """Exclusive use of a run folder by one training process: `<run>/.lock` holds the holder's PID and host.

    An OS file lock (flock) guards it, so a lock left by a killed process is free again: it is taken over
    with a message naming the dead holder. fcntl is used directly because the refusal must name the holder.
    """

    def __init__(self, workdir: str | Path):
        self.path = Path(workdir) / LOCK
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunError(f"{self.path.parent}: another training run is using this folder ({holder}); wait "
                               "for it to finish, or use another --workdir") from None
            # The holder unlinks the file as it releases it: a lock on an unlinked file guards nothing.
            if self.path.exists() and os.fstat(fd).st_ino == self.path.stat().st_ino:
                break
            os.close(fd)
        previous = _read_holder(fd)
        if previous:
            log.warning("%s: taking over a stale lock (%s is gone)", self.path.parent, previous)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _read_holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        h = json.loads(raw)
        return f"pid {h['pid']} on {h['host']} since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "a holder that left no details" if raw else ""
