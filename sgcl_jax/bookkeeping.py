"""The bookkeeping beside the train state: the run's dev scores and the released early-stopping rule
(`RunState`, saved in every checkpoint), its metrics log (`Records`) and the step-rate timer."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sgcl_jax.files import write_text

log = logging.getLogger(__name__)
METRICS = "metrics.jsonl"


# ------------------------------------------------------------------------------------------ run state


@dataclasses.dataclass
class RunState:
    """The bookkeeping beside the train state: dev scores, the best one, and the released early-stopping rule.

    The released code (sentence-transformers' fit as modified by SG-BERT) scores the untrained model first:
    that score is the initial best, and nothing is saved for it. Every `eval_every` steps it scores again; a
    score below the previous one (starting from 0, not from the step-0 score) adds one to a counter that is
    never reset, and the run stops when the counter reaches the patience. The end-of-training evaluation
    may become the best, but does not touch the counter. A non-finite score is never the best.
    """

    step: int = 0
    best_score: float | None = None
    best_step: int | None = None
    prev_score: float = 0.0
    drops: int = 0
    stopped: bool = False
    dev_history: list[list[float]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0  # wall time spent training so far, summed over resumes (dev evaluations included)

    def record_dev(self, step: int, score: float, patience: int, counts: bool = True) -> bool:
        """Records a dev score; True when it is the new best (so it should be saved, unless step is 0)."""
        self.dev_history.append([step, score])
        finite = math.isfinite(score)
        if not finite:
            log.warning("step %d: the dev score is %s (constant embeddings?); it is never the best", step, score)
        if counts and step > 0:
            if score < self.prev_score:
                self.drops += 1
            if self.drops >= patience:
                self.stopped = True
            if finite:
                self.prev_score = score
        if finite and (self.best_score is None or score > self.best_score):
            self.best_score, self.best_step = score, step
            return True
        return False

    def to_json(self) -> dict[str, Any]:
        """The JSON form saved in each checkpoint's meta."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunState:
        """Inverse of `to_json`."""
        return cls(**d)


# ------------------------------------------------------------------------------------------ records


class Records:
    """metrics.jsonl and TensorBoard events, written by process 0 only."""

    def __init__(self, workdir: Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.file = self.tb = None
        if not enabled:
            return
        path = self.path = workdir / METRICS
        if path.exists():
            write_text("".join(f"{x}\n" for x in _kept_lines(path, resume_step)), path)
        self.file = open(path, "a")  # noqa: SIM115 - closed in close()
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tb"))
        except ImportError:  # pragma: no cover - optional
            log.info("tensorboardX not installed: no TensorBoard events")

    def write(self, step: int, values: dict[str, float]) -> None:
        """One JSON line (and TensorBoard scalars) for a step."""
        if not self.enabled:
            return
        try:
            self.file.write(json.dumps({"step": step, **values}) + "\n")
            self.file.flush()
        except OSError as e:
            raise OSError(f"{self.path}: cannot write the run's metrics ({e.strerror or e}). Kept: the checkpoints "
                          "saved so far, intact. Free space (or fix the disk) and run the same command again to "
                          "resume.") from None
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Flushes and closes the files (a failing flush is a warning: it runs while another error propagates)."""
        if self.file:
            try:
                self.file.close()
            except OSError as e:
                log.warning("%s: the last metrics lines were not written (%s)", self.path, e.strerror or e)
        if self.tb is not None:
            self.tb.close()


def _kept_lines(path: Path, resume_step: int) -> list[str]:
    """The lines up to the resumed step; a torn last line (a kill mid-write) is dropped with a warning."""
    lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    kept = []
    for i, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                log.warning("%s:%d: an incomplete last line (a kill mid-write?); dropped", path, i)
                break
            raise ValueError(f"{path}:{i}: not a JSON line; fix or remove the line to resume") from None
        if row.get("step", 0) <= resume_step:
            kept.append(line)
    return kept


class StepTimer:
    """Training steps per second between two logged steps, leaving out evaluation, saves and compilation."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, ...]] = set()
        self.start, self.excluded, self.steps = time.perf_counter(), 0.0, 0

    @contextlib.contextmanager
    def excluding(self) -> Iterator[None]:
        """Time spent inside does not count."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - t0

    def compiles(self, shape: tuple[int, ...]) -> bool:
        """Whether a step of this shape is the first (its time is mostly compilation); counts the others."""
        new = shape not in self.seen
        self.seen.add(shape)
        self.steps += not new
        return new

    def rate(self) -> float:
        """Steps per second since the last call; call it after a sync (reading the metrics is one)."""
        now = time.perf_counter()
        seconds = now - self.start - self.excluded
        rate = self.steps / seconds if self.steps and seconds > 0 else math.nan
        self.start, self.excluded, self.steps = now, 0.0, 0
        return rate
