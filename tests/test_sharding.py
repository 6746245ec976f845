"""Data parallelism: 8 fake CPU devices equal 1 device on the same global batch (replicated and FSDP params);
2 local processes train."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest


@pytest.mark.slow
def test_eight_devices_equal_one(repo_root, subprocess_env):
    flags = f"{subprocess_env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env = {**subprocess_env, "XLA_FLAGS": flags}
    r = subprocess.run([sys.executable, "-m", "tests.sharding_worker"], cwd=repo_root, capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(m["loss_8"], m["loss_1"], rtol=1e-5)
    assert m["grad_diff"] <= 1e-5 * m["grad_scale"], m  # fp32 reductions in another order: relative 1e-5
    assert m["param_diff"] <= 1e-5 and m["param_moved"] > 1e-3, m
    # FSDP (params, optimizer state and guide split over the 8 devices) = 1 device, at the same tolerance.
    np.testing.assert_allclose(m["loss_fsdp"], m["loss_1"], rtol=1e-5)
    assert m["grad_diff_fsdp"] <= 1e-5 * m["grad_scale"] and m["param_diff_fsdp"] <= 1e-5, m
    # The loss really uses the global batch: with each device's 2 sentences alone it would be very different.
    assert abs(m["global_loss"] - m["local_loss"]) > 1.0, m


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(cmd, env, signal_after=None):
    """Runs `cmd` as processes 0 and 1; with signal_after (a file), SIGTERMs both once it exists (a preemption)."""
    env = {**env, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": "2"}
    procs = [subprocess.Popen(cmd, env={**env, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    if signal_after is not None:
        deadline = time.time() + 300
        while not signal_after.exists() and time.time() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.05)
        assert all(p.poll() is None for p in procs), "the run ended before it could be preempted"
        for p in procs:
            p.send_signal(signal.SIGTERM)
    try:
        outs = [p.communicate(timeout=400)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("the 2-process run hung")
    return procs, outs


@pytest.mark.slow
def test_two_processes_save_state_and_best_at_the_same_step(tmp_path, repo_root, subprocess_env):
    """The state and best managers of 2 processes saving the same steps concurrently each meet at their own
    barriers (Orbax keys them by step: without a prefix per manager, one save's barrier met the other's, and the
    run failed with "Barrier ... is already ongoing", then a timeout, under CI's load)."""
    procs, outs = _two_processes([sys.executable, str(repo_root / "tests" / "checkpoint_worker.py"),
                                  str(tmp_path / "run"), "12"], subprocess_env)
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    for i, out in enumerate(outs):
        assert json.loads(out.strip().splitlines()[-1]) == {"process": i, "latest": 12.0, "best": -12.0,
                                                             "best_step": 12}
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["11", "12"]


@pytest.mark.slow
def test_two_processes_train_and_resume_bitwise_after_a_preemption(tmp_path, train_cmd, subprocess_env):
    """2 local processes train one run (process 0 alone prints); SIGTERM on both (a pod's preemption notice): both
    save the same step through JAX's preemption sync point, exit 0, and the resumed run ends bitwise where the
    uninterrupted 2-process run ends."""
    from tests.test_trainer import assert_same_run

    extra = ("--config.train.num_steps=120", "--config.train.eval_every=40", "--config.train.checkpoint_every=40",
             "--config.train.log_every=1",
             "--heartbeat_timeout=600")  # CI's 2 cores also run other tests: a slow process is not a dead one
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    procs, outs = _two_processes(train_cmd(straight, *extra), subprocess_env)
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    assert "process 0 of 2" in outs[0] and "process 1 of 2" in outs[1]
    assert "mesh {'data': 2, 'model': 1} over 2 cpu device(s) in 2 process(es); global batch 8 = 4 per" in outs[0]
    assert sorted(int(p.name) for p in (straight / "checkpoints").iterdir() if p.name.isdigit()) == [80, 120]
    res = json.loads((straight / "results.json").read_text())
    assert res["training"]["step"] == 120 and np.isfinite(res["tasks"]["STSB"]["score"])
    assert "task" in outs[0] and "task" not in outs[1]  # only process 0 prints the results table
    procs, outs = _two_processes(train_cmd(preempted, *extra), subprocess_env,
                                 signal_after=preempted / "checkpoints" / "40")
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    steps = sorted(int(p.name) for p in (preempted / "checkpoints").iterdir() if p.name.isdigit())
    assert 40 < steps[-1] < 120 and not (preempted / "results.json").exists(), steps
    assert f"stopped by SIGTERM at step {steps[-1]}: saved" in outs[0]
    procs, outs = _two_processes(train_cmd(preempted, *extra), subprocess_env)
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:]
    assert_same_run(straight, preempted, steps=120)
