"""Faults a run meets in the wild (issue 22's probe, one test per case): a full disk during a save, readers racing
the trainer's checkpoint rotation, training text that is not UTF-8, STS folders without scored pairs. (Ctrl-C and
SIGTERM: tests/test_trainer.py; damaged best checkpoints and results.json: tests/test_run_folders.py.)"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import sgcl_jax
from sgcl_jax import data, sts


def test_training_text_with_a_byte_order_mark_is_decoded(tmp_path):
    lines = ["A man plays a guitar.", "Ünïcödé sentences too."]
    for encoding in ("utf-16", "utf-32", "utf-8-sig"):
        path = tmp_path / f"{encoding}.txt"
        path.write_bytes("\r\n".join(lines).encode(encoding))
        assert data.read_text_file(path) == (lines, 0), encoding


def test_binary_training_text_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "random.bin"
    path.write_bytes(b"first line\nsecond\n" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"random\.bin: not text: NUL bytes at line 3"):
        data.read_text_file(path)
    path.write_bytes("no bom".encode("utf-16-le"))  # UTF-16 without its mark: NULs in every character
    with pytest.raises(ValueError, match=r"not text: NUL bytes at line 1 .*UTF-16"):
        data.read_text_file(path)


def test_sts_folders_without_scored_pairs(tmp_path, write, caplog):
    folder = tmp_path / "mine"
    write(folder / "STS.input.a.txt", "x\ty\nz\tw\n")
    write(folder / "STS.gs.a.txt", "\n\n")
    with pytest.raises(ValueError, match=r"mine: no scored pairs: every gold line of a is blank"):
        sts.read_sts_folder(folder)
    write(folder / "STS.input.b.txt", "x\ty\nz\tw\n")
    write(folder / "STS.gs.b.txt", "1\n4\n")
    with caplog.at_level(logging.WARNING):
        subsets = sts.read_sts_folder(folder)
    assert [s.name for s in subsets] == ["b"] and "subset a has no scored pairs" in caplog.text


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _fill(disk: Path) -> Path:
    """Fills a (small) disk to its last byte with one file; returns it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
    return filler


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_full_disk_during_a_save_ends_in_one_line_and_resumes(tmp_path, train_cmd, subprocess_env):
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "64m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        run = disk / "run"
        proc = subprocess.Popen(train_cmd(run), env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.time() + 240
        while not (run / "checkpoints" / "10").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGSTOP)  # fill the disk between two saves
        kept = _hashes(run / "checkpoints" / "10")
        filler = _fill(disk)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=300)
        # The verdict is one line, the last; Orbax's own error logs are left out. (TensorStore may still print
        # "Event loop is closed" tracebacks from its C++ callbacks into Orbax's closed loop: not Python logging.)
        verdict = [x for x in err.splitlines() if x.startswith("error: ")]
        assert proc.returncode != 0 and len(verdict) == 1, err[-3000:]
        assert verdict[0] == err.strip().splitlines()[-1], err[-3000:]
        assert not [x for x in err.splitlines() if "orbax" in x and x[:1] in "EW" and "Failed" in x], err[-3000:]
        line = verdict[0]
        assert "a checkpoint save failed (no space left on device)" in line or "cannot write" in line, line
        if "checkpoint save failed" in line:
            assert f"{run}/checkpoints/10" in line and "run the same command again to resume" in line
        assert _hashes(run / "checkpoints" / "10") == kept  # the earlier save intact
        assert not list((run / "checkpoints").glob("*orbax-checkpoint-tmp*"))  # no partial save left
        os.remove(filler)
        r = subprocess.run(train_cmd(run), env=subprocess_env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert (run / "results.json").exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow
def test_readers_see_a_complete_checkpoint_while_the_trainer_rotates(tmp_path, train_cmd, subprocess_env):
    run = tmp_path / "run"
    cmd = train_cmd(run, "--config.train.num_steps=300", "--config.train.checkpoint_every=1",
                    "--config.train.eval_every=0", "--config.train.keep_checkpoints=2")
    proc = subprocess.Popen(cmd, env=subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (run / "checkpoints" / "2").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        loads = 0
        while proc.poll() is None and loads < 40:
            enc = sgcl_jax.load_encoder(str(run), which="latest")
            assert "checkpoints/" in enc.source
            loads += 1
        assert loads >= 10, "the run ended before the readers could race it"
    finally:
        proc.kill()
        proc.wait()
    assert not list((run / "checkpoints").glob("*.damaged-*"))  # readers renamed nothing


@pytest.mark.slow
def test_export_onto_a_full_disk_is_one_line(tmp_path, capsys):
    from sgcl_jax import export

    disk = tmp_path / "disk"
    if not _tmpfs(disk, "8m"):  # all-MiniLM-L6-v2's weights alone are 90 MB
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        assert export.main(["--checkpoint", "minilm", "--out", str(disk / "out"), "--format", "hf"]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"error: {disk / 'out'}") and "no space left on device" in err.lower(), err
        assert not list(disk.iterdir())  # nothing half-written
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow
def test_evaluate_out_onto_a_full_disk_keeps_the_printed_scores(tmp_path, capsys, write):
    from sgcl_jax import evaluate

    folder = tmp_path / "pairs"  # a small STS-format folder: the fault is the point, not the data set
    write(folder / "STS.input.toy.txt", "".join(f"A man plays {i}.\tA man is playing {i}.\n" for i in range(12)))
    write(folder / "STS.gs.toy.txt", "".join(f"{i % 6}\n" for i in range(12)))
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        _fill(disk)
        out = disk / "scores.json"
        rc = evaluate.main(["--model", "minilm", "--tasks", str(folder), "--out", str(out)])
        printed = capsys.readouterr()
        assert rc == 1
        assert re.search(r"^pairs\s+-?\d+\.\d\d spearman\s+12$", printed.out, re.M), printed.out  # scores kept
        err = [x for x in printed.err.strip().splitlines() if not x.startswith("encode:")]  # progress bars
        assert len(err) == 1 and err[0].startswith("error: ") and str(out) in err[0], err
        assert "no space left on device" in err[0].lower(), err
        assert not out.exists() and sorted(p.name for p in disk.iterdir()) == ["filler"]  # nothing half-written
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_metrics_line_that_cannot_be_written_names_the_file(tmp_path, monkeypatch):
    """A full disk while appending to metrics.jsonl: one line naming the file and what was kept, not a bare
    '[Errno 28] No space left on device'; closing afterwards is a warning, not a second error."""
    from sgcl_jax.bookkeeping import Records

    records = Records(tmp_path, enabled=True)
    records.write(1, {"loss": 1.0})

    class FullDisk:
        def write(self, *args):
            raise OSError(28, "No space left on device")

        flush = close = write

    records.file = FullDisk()
    with pytest.raises(OSError) as e:
        records.write(2, {"loss": 0.5})
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'metrics.jsonl'}: cannot write the run's metrics (No space left")
    assert "Kept: the checkpoints saved so far, intact" in message and "run the same command again" in message
    records.close()  # logs a warning instead of raising over the error above
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'


@pytest.mark.parametrize("error", [
    RuntimeError("INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 1 heartbeat "
                 "timeout. This indicates that the remote task has failed, got preempted, or crashed."),
    TimeoutError("Timed out while waiting for async_commit_complete barrier.")])
def test_a_save_stopped_by_a_dead_peer_says_so_not_full_disk(tmp_path, error):
    """Orbax's save waits at a jax.distributed barrier; when another process dies or stops answering there (the
    texts are CI's own failures) the one line says to restart every process, not to free disk space, and names
    what was kept."""
    from sgcl_jax.checkpointing import Checkpoints, SaveFailed

    ckpts = Checkpoints(tmp_path, async_save=False)
    ckpts.save(40, {"w": 1.0}, {"step": 40})

    def dead_peer(*args, **kwargs):
        raise error

    ckpts.state.save = dead_peer
    with pytest.raises(SaveFailed) as e:
        ckpts.save(80, {"w": 2.0}, {"step": 80})
    message = str(e.value)
    assert str(error)[:40] in message and "checkpoints [40], the newest complete being" in message
    assert "Another process of the run stopped: start every process with the same command again to resume" in message
    assert "Free space" not in message
