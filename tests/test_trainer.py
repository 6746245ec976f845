"""The training program end to end on the tiny config: results, records, exact resume after a kill, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from sgcl_jax import data
from sgcl_jax.checkpointing import Checkpoints
from sgcl_jax.trainer import summarise_seeds, train_and_evaluate
from tests.conftest import ROOT


def tiny_config(**overrides):
    """configs/tiny.py with overrides given as dotted names."""
    sys.path.insert(0, str(ROOT))
    from configs import tiny

    c = tiny.get_config()
    c.train.progress = False
    for key, value in overrides.items():
        node = c
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return c


def test_end_to_end(tmp_path, data_dir):
    res = train_and_evaluate(tiny_config(), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["tasks"]["STSB"]["n"] == 1379 and np.isfinite(saved["tasks"]["STSB"]["score"])
    assert saved["tasks"]["STSB"]["score"] == pytest.approx(res["tasks"]["STSB"]["score"])
    assert saved["protocol"]["pooling"] == "cls" and saved["training"]["total_steps"] == 30
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [5, 10, 15, 20, 25, 30]
    assert [x["step"] for x in lines if "dev_stsb_spearman" in x] == [10, 20, 30]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == "random"
    best = [x["dev_stsb_spearman"] for x in lines if "dev_stsb_spearman" in x]
    assert saved["training"]["best_score"] == pytest.approx(max(best))
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [20, 30]
    assert saved["last"]["step"] == 30 and np.isfinite(saved["last"]["average"])
    if saved["training"]["best_step"] != 30:
        assert saved["last"]["tasks"]["STSB"]["score"] != saved["tasks"]["STSB"]["score"]


def _train_cmd(workdir, *extra):
    return [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/tiny.py"), "--workdir",
            str(workdir), "--config.train.progress=False", *extra]


def _final_state(workdir):
    ckpt = Checkpoints(workdir)
    step = ckpt.latest_step()
    out = ckpt.state.restore(step)
    ckpt.close()
    return step, out


def test_exact_resume_after_kill(tmp_path, data_dir):
    env = {**os.environ, "SGCL_DATA_DIR": str(data_dir), "JAX_PLATFORMS": "cpu"}
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight), check=True, env=env, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "10").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists()
    interrupted_at = Checkpoints(killed).latest_step()
    assert interrupted_at is not None and interrupted_at < 30
    subprocess.run(_train_cmd(killed), check=True, env=env, capture_output=True, timeout=300)

    (s1, a), (s2, b) = _final_state(straight), _final_state(killed)
    assert s1 == s2 == 30
    leaves_a, leaves_b = jax.tree.leaves(a["state"]), jax.tree.leaves(b["state"])
    assert len(leaves_a) == len(leaves_b)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b, strict=True))
    ra, rb = (json.loads((w / "results.json").read_text()) for w in (straight, killed))
    assert ra["tasks"] == rb["tasks"] and ra["training"]["best_step"] == rb["training"]["best_step"]
    # The metrics log of the resumed run reads as one run: each step once, the same values.
    la, lb = ([json.loads(x) for x in (w / "metrics.jsonl").read_text().splitlines()] for w in (straight, killed))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "steps_per_s"} for r in rows]  # noqa: E731
    assert strip(la) == strip(lb)


def test_config_errors_before_work(tmp_path):
    for flag, message in [("--config.optim.nope=1", "nope"), ("--config.optim.lr=abc", "lr"),
                          ("--config.objective.name=simcse", "objective.name")]:
        r = subprocess.run(_train_cmd(tmp_path / "w", flag), capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and message in r.stderr, (flag, r.stderr[-2000:])
        assert not (tmp_path / "w" / "checkpoints").exists()


def test_workdir_of_another_model(tmp_path, data_dir):
    train_and_evaluate(tiny_config(**{"train.num_steps": 2, "train.eval_every": 0}), tmp_path)
    with pytest.raises(ValueError, match="checkpoints of another model"):
        train_and_evaluate(tiny_config(**{"train.num_steps": 4, "model.init_seed": 1}), tmp_path)


def test_text_files(tmp_path, caplog):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty\.txt: no training sentences"):
        data.read_text_file(empty)
    mixed = tmp_path / "mixed.txt.gz"
    import gzip

    mixed.write_bytes(gzip.compress(b"good one\n" + b"bad \xff\xfe line\n" + "ümlaut fine\n\n".encode()))
    sentences, bad = data.read_text_file(mixed)
    assert sentences == ["good one", "ümlaut fine"] and bad == 1
    assert "mixed.txt.gz:2: not UTF-8" in caplog.text
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        data.read_text_file(tmp_path / "nope.txt")


def test_batches_are_deterministic_and_split_by_process(tiny):
    sentences = [f"sentence number {i} " + "x " * (i % 40) for i in range(100)]
    full = data.Batches(sentences, tiny.tokenizer, 8, seed=3, max_length=32, buckets=(16, 32))
    halves = [data.Batches(sentences, tiny.tokenizer, 8, 3, 32, (16, 32), process_index=p, process_count=2)
              for p in range(2)]
    assert full.steps_per_epoch == 12
    for step in (0, 5, 12, 13):
        whole = full(step)
        parts = [h(step) for h in halves]
        np.testing.assert_array_equal(np.concatenate([p["input_ids"] for p in parts]), whole["input_ids"])
    assert full.drawn(12) != full.drawn(0)  # a new permutation each epoch
    assert len(set(sum((full.drawn(s) for s in range(12)), []))) == 96  # no sentence twice in an epoch


def test_multi_seed_summary(tmp_path, data_dir):
    overrides = {"seeds": (1, 2), "train.num_steps": 4, "train.eval_every": 2}
    first = train_and_evaluate(tiny_config(**overrides, **{"eval.also_last": False}), tmp_path)
    assert "last" not in first
    # Re-running finished seeds trains nothing; asking for the last checkpoints scores them from disk.
    res = train_and_evaluate(tiny_config(**overrides), tmp_path)
    assert res["tasks"] == first["tasks"]
    per = [json.loads((tmp_path / f"seed_{s}" / "results.json").read_text())["tasks"]["STSB"]["score"]
           for s in (1, 2)]
    assert per[0] != per[1]
    assert res["tasks"]["STSB"]["score"] == pytest.approx(np.mean(per))
    assert res["tasks"]["STSB"]["std"] == pytest.approx(np.std(per, ddof=1))
    assert json.loads((tmp_path / "results.json").read_text())["tasks"]["STSB"]["per_seed"] == {
        "1": per[0], "2": per[1]}
    last = [json.loads((tmp_path / f"seed_{s}" / "results.json").read_text())["last"]["average"] for s in (1, 2)]
    assert res["last"]["average"] == pytest.approx(np.mean(last))
    fake = {s: {"protocol": {}, "tasks": {"A": {"score": v, "n": 3}}, "average": v} for s, v in
            [(1, 70.0), (2, 72.0), (3, 77.0)]}
    summary = summarise_seeds(fake)
    assert summary["tasks"]["A"]["score"] == pytest.approx(73.0)
    assert summary["tasks"]["A"]["std"] == pytest.approx(np.sqrt(((70 - 73) ** 2 + 1 + 16) / 2))


def test_checkpoint_path_is_workdir_relative_safe(tmp_path):
    # The workdir may be given as a relative path (Orbax needs absolute ones).
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        ck = Checkpoints("rel")
        ck.close()
        assert (tmp_path / "rel" / "checkpoints").is_dir()
    finally:
        os.chdir(cwd)


def test_tfds_source_reads_this_process_share(monkeypatch):
    """The TFDS path with a stand-in module (tensorflow is not a test dependency): split per process, feature."""
    import types

    calls = {}
    fake = types.ModuleType("tensorflow_datasets")
    fake.split_for_jax_process = lambda split: f"{split}[process share]"

    def load(name, split, data_dir=None):
        calls.update(name=name, split=split)
        return [{"text": b"first sentence"}, {"text": b"  "}, {"text": "zweiter Satz – ü".encode()}, {"text": b"3"}]

    fake.load, fake.as_numpy = load, lambda ds: ds
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    cfg = tiny_config(**{"data.source": "tfds", "data.tfds_name": "wiki", "data.max_sentences": 2}).data
    sentences, shared = data.load_sentences(cfg)
    assert sentences == ["first sentence", "zweiter Satz – ü"] and shared is False
    assert calls == {"name": "wiki", "split": "train[process share]"}
    with pytest.raises(KeyError, match="no feature 'body'"):
        data.read_tfds("wiki", "train", "body")


def test_missing_training_data_is_fetched_or_explained(tmp_path, mirror, monkeypatch):
    target = tmp_path / "cache"
    cfg = tiny_config(**{"data.data_dir": str(target), "data.download": False}).data
    with pytest.raises(FileNotFoundError, match="SGCL_DATA_DIR"):
        data.load_sentences(cfg)
    cfg.download = True
    monkeypatch.setenv("SGCL_STS_MIRROR", "http://127.0.0.1:9/")  # nothing listens: a fast, clear failure
    with pytest.raises(FileNotFoundError, match="fetching it failed"):
        data.load_sentences(cfg)
    monkeypatch.setenv("SGCL_STS_MIRROR", mirror[0])
    sentences, _ = data.load_sentences(cfg)
    assert len(sentences) == 320 and (target / "STSBenchmark" / "stsbenchmark.tsv.gz").exists()
