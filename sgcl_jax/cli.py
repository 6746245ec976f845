"""What every command line shares: logging, `--config NAME` resolution, one error printer and the exit codes.

Exit codes: 0 done; 1 an error, printed as one line (`--verbose` shows the traceback); 2 the program does not fit
the accelerator (`aot`); 130 interrupted (Ctrl-C), after saving what there was to save.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sgcl_jax.checkpointing import SaveFailed
from sgcl_jax.config import ConfigError, check_override, config_path
from sgcl_jax.interrupts import Stopped

OK, ERROR, DOES_NOT_FIT, INTERRUPTED = 0, 1, 2, 130
# The exceptions that mean bad input, a refused run folder or a failing resource: printed as one line.
USER_ERRORS = (ValueError, OSError, FloatingPointError, ImportError, RuntimeError)


def setup_logging(verbose: bool = False) -> None:
    """absl's log format at INFO (as `app.run` sets it up), WARNING for the chatty libraries; without --verbose,
    Orbax's own error logs are left out."""
    from absl import logging as absl_logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        # absl's log calls made while importing (Orbax logs at import) call logging.basicConfig() before any
        # flags are parsed; that bare handler would print every line a second time, in another format.
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    absl_logging.use_absl_handler()
    absl_logging.set_verbosity(absl_logging.INFO)
    for noisy in ("absl", "jax._src", "orbax", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        for handler in root.handlers:
            handler.addFilter(_orbax_errors)


def _orbax_errors(record: logging.LogRecord) -> bool:
    # Orbax logs a failed save from each of its writer threads, with tracebacks; the command's own one-line error
    # (checkpointing.SaveFailed) names the failure and what was kept.
    return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


def fail(error: BaseException, verbose: bool, code: int = ERROR) -> int:
    """Prints `error: <one line>` (or re-raises under --verbose) and returns the exit code."""
    if verbose:
        raise error
    print(f"error: {error}", file=sys.stderr)
    if isinstance(error, SaveFailed):
        # Orbax's writer threads keep failing on the full disk while the interpreter shuts down and print their
        # tracebacks after this line; everything of the run is closed and saved (or refused) by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def guarded(body: Callable[[], object], verbose: bool,
            errors: tuple[type[BaseException], ...] = USER_ERRORS) -> int:
    """Runs a command's body -> its exit code: a stop prints where it stopped and how to resume, an error in
    `errors` one line; anything else is a bug and keeps its traceback."""
    try:
        body()
    except Stopped as e:  # SIGTERM (preemption) or Ctrl-C: a training run saved a checkpoint at a step boundary
        return stopped(e)
    except errors as e:
        return fail(e, verbose)
    return OK


def command_line() -> str:
    """This process's command line as a user would type it again (python -m for a package module)."""
    argv = list(sys.argv)
    script = Path(argv[0])
    if script.parent.name == "sgcl_jax" and script.suffix == ".py":
        argv[:1] = ["-m", f"sgcl_jax.{script.stem}"]
    return shlex.join(["python", *argv])


def stopped(stop: Stopped) -> int:
    """Prints where a stopped run is and the command that resumes it; 0 after a preemption, 130 after Ctrl-C."""
    print(f"{stop}; resume with: {command_line()}", file=sys.stderr)
    return OK if stop.signame == "SIGTERM" else INTERRUPTED


def parse(flag_values: Any, doc: str | None, program: str, args: Sequence[str] | None = None,
          renamed: dict[str, str] | None = None, positional: bool = False) -> list[str]:
    """Parses a command's own absl flags from `args` (default: sys.argv[1:]): `--config NAME` resolved, every
    `--config.a.b` override checked against the config's fields first (one line naming a mistyped one), a renamed
    flag named with its replacement, `--help` printing the program's description and flags (exit 0); any other
    bad flag, or a positional argument where the command takes none, is one line, exit 1. Returns the positional
    arguments."""
    from absl import flags

    argv = [program, *(sys.argv[1:] if args is None else args)]
    for arg in argv[1:]:
        old = arg.split("=", 1)[0]
        if renamed and old in renamed:
            sys.exit(f"error: {old} was renamed: use {renamed[old]}")
        if arg.startswith("--config."):
            try:
                check_override(old[len("--config."):])
            except ConfigError as e:
                sys.exit(f"error: {e}")
    if any(a in ("--help", "-h", "--helpshort", "--helpfull", "-?") for a in argv[1:]):
        # absl groups the flags under the path of the file defining them: one command, one group, no path.
        lines = flag_values.get_help(include_special_flags=False).splitlines()
        listed = "\n".join(x for x in lines if x.startswith(" ") or not x.rstrip().endswith(".py:"))
        print(f"{(doc or '').strip()}\n\nflags:\n{listed.strip(chr(10))}")
        sys.exit(OK)
    argv = resolve_config_arg(argv)
    # A second call in one process starts from the defaults again, without the override flags config_flags
    # registered for the previous --config (they are defined anew for this one).
    for name in [n for n in flag_values if n.startswith("config.")]:
        delattr(flag_values, name)
    flag_values.unparse_flags()
    saved, sys.argv = sys.argv, argv  # config_flags reads the --config.a.b overrides from sys.argv
    try:
        rest = flag_values(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")
    finally:
        sys.argv = saved
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # absl logging (Orbax logs through it) expects parsed global flags
    if len(rest) > 1 and not positional:
        sys.exit(f"error: unexpected arguments: {rest[1:]}")
    return rest[1:]


def resolve_config_arg(argv: Sequence[str]) -> list[str]:
    """Rewrites `--config NAME` to the shipped config's path when NAME is not a file (absl wants a path)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = _config_path(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + _config_path(arg.split("=", 1)[1])
    return out


def _config_path(value: str) -> str:
    path, colon, arg = value.partition(":")  # config_flags passes `file.py:arg` on to get_config(arg)
    try:
        return str(config_path(path)) + colon + arg
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")
