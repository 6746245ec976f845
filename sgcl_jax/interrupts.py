"""Stopping a run cleanly: SIGTERM (a TPU pod or spot VM being preempted) and Ctrl-C (SIGINT) become a request to
stop at the next step boundary, where the trainer saves a checkpoint and says how to resume.

With several processes (`jax.distributed`), SIGTERM is JAX's preemption notice: the distributed runtime catches it
on every host and `multihost_utils.reached_preemption_sync_point(step)` turns true at the same step on all of them,
so every process saves the same step. A Python handler would replace the runtime's, so none is installed for it.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import jax

log = logging.getLogger(__name__)


class Stopped(Exception):
    """The run stopped at a step boundary on a signal, with its state saved at `step` (or, for a second Ctrl-C,
    wherever it was: `step` is then the newest checkpoint, None if there is none)."""

    def __init__(self, signame: str, step: int | None, saved: bool, workdir: Any):
        self.signame, self.step, self.saved, self.workdir = signame, step, saved, workdir
        where = (f"saved {workdir}/checkpoints/{step}" if saved else
                 f"newest checkpoint {workdir}/checkpoints/{step}" if step is not None else "no checkpoint yet")
        super().__init__(f"stopped by {signame} at step {step if saved else 'boundary not reached'}: {where}")


def _distributed() -> bool:
    from jax._src import distributed

    return jax.process_count() > 1 and distributed.global_state.client is not None


class Interrupts:
    """A context manager: while inside, SIGTERM and SIGINT are remembered instead of killing the process; a second
    Ctrl-C raises KeyboardInterrupt at once (for a run stuck in a compile or an evaluation)."""

    def __init__(self, notice: str = "stopping at the next step boundary after saving a checkpoint (Ctrl-C again to "
                 "stop at once)") -> None:
        self.notice = notice  # what the holder does on the signal, logged when it arrives
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        # Several processes: SIGTERM is the runtime's, and a local Ctrl-C flag could stop the processes at different
        # steps, so Ctrl-C keeps its default (KeyboardInterrupt, after which the run resumes from its newest save).
        for s in [] if _distributed() else [signal.SIGINT, signal.SIGTERM]:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = name
        log.warning("%s received: %s", name, self.notice)

    def reached(self, step: int) -> str | None:
        """The signal to stop on at this step boundary, the same on every process; None to go on."""
        if _distributed():
            from jax.experimental import multihost_utils

            return "SIGTERM" if multihost_utils.reached_preemption_sync_point(step) else None
        return self.received
