"""The training program on the tiny config: end to end, exact resume after a kill, the released early-stopping
rule and step-0 evaluation, config validation, training text, TFDS, and the multi-seed summary."""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sgcl_jax import data
from sgcl_jax.bookkeeping import RunState
from sgcl_jax.checkpointing import Checkpoints
from sgcl_jax.config import Config, ConfigError, base_config
from sgcl_jax.trainer import summarise_seeds, train_and_evaluate


def test_end_to_end(tmp_path, tiny_config, capsys):
    res = train_and_evaluate(tiny_config(), tmp_path)
    first = capsys.readouterr().out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["tasks"]["STSB"]["n"] == 1379 and np.isfinite(saved["tasks"]["STSB"]["score"])
    assert saved["tasks"]["STSB"]["score"] == pytest.approx(res["tasks"]["STSB"]["score"])
    assert saved["protocol"]["pooling"] == "cls" and saved["protocol"]["dtype"] == "float32"
    assert saved["training"]["total_steps"] == 30
    assert saved["training"]["selected_by"] == "STS-B dev (1500 pairs), cosine, spearman x100"
    assert saved["average"] == {"score": saved["tasks"]["STSB"]["score"], "tasks": ["STSB"], "complete": True,
                                "of": 1}
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [5, 10, 15, 20, 25, 30]
    # Step 0 is the untrained model (the released code's first evaluation), then every eval_every steps.
    assert [x["step"] for x in lines if "dev_stsb_spearman" in x] == [0, 10, 20, 30]
    assert all(np.isfinite(x["steps_per_s"]) for x in lines if "loss" in x)
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    assert Config.from_dict(json.loads((tmp_path / "config.json").read_text())).model.name == "random"
    dev = [x["dev_stsb_spearman"] for x in lines if "dev_stsb_spearman" in x]
    assert saved["training"]["best_score"] == pytest.approx(max(dev))
    assert saved["training"]["best_step"] == [0, 10, 20, 30][int(np.argmax(dev))]
    saved_best = [int(p.name) for p in (tmp_path / "best").iterdir() if p.name.isdigit()]
    assert saved_best == ([] if saved["training"]["best_step"] == 0 else [saved["training"]["best_step"]])
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [20, 30]
    assert saved["last"]["step"] == 30 and np.isfinite(saved["last"]["average"]["score"])
    assert not (tmp_path / ".lock").exists()
    # The tiny setting learns: dev rises, so a trained checkpoint is the best one.
    assert saved["training"]["best_step"] > 0 and max(dev) > dev[0]
    # The same command again trains nothing and shows the same results table again.
    stamp = (tmp_path / "results.json").stat().st_mtime_ns
    assert train_and_evaluate(tiny_config(), tmp_path) == saved
    assert capsys.readouterr().out == first and "best dev step" in first
    assert (tmp_path / "results.json").stat().st_mtime_ns == stamp


def released_fit(scores: list[float], patience: int) -> tuple[float, int, int | None]:
    """The released fit loop's bookkeeping, transcribed: (best score, index of the best, index where it stops).

    scores[0] is the step-0 evaluation (sets best_score only); the others are periodic evaluations.
    """
    best_score, best_at = -9999999, None
    if scores[0] > best_score:
        best_score, best_at = scores[0], 0
    early_stopping_cnt, last_score = 0, 0
    for i, dev_score in enumerate(scores[1:], start=1):
        if dev_score > best_score:
            best_score, best_at = dev_score, i
        if dev_score < last_score:
            early_stopping_cnt += 1
        if early_stopping_cnt >= patience:
            return best_score, best_at, i
        last_score = dev_score
    return best_score, best_at, None


@pytest.mark.parametrize("seed", range(6))
def test_run_state_follows_the_released_rule(seed):
    rng = np.random.default_rng(seed)
    scores = list(np.round(rng.normal(80, 2, 40), 1))
    if seed == 0:
        scores[0] = 99.0  # the untrained model is never beaten: it stays the best, never saved
    if seed == 1:
        scores[1] = -5.0  # a negative first score counts as a drop against the released 0 start
    patience = [3, 10, 1, 5, 2, 40][seed]
    run = RunState()
    run.record_dev(0, scores[0], patience, counts=False)
    stop_at, saved = None, []
    for i, s in enumerate(scores[1:], start=1):
        if run.record_dev(i, s, patience):
            saved.append(i)
        if run.stopped:
            stop_at = i
            break
    best, best_at, released_stop = released_fit(scores, patience)
    assert (run.best_score, run.best_step, stop_at) == (best, best_at, released_stop)
    assert 0 not in saved
    assert RunState.from_json(json.loads(json.dumps(run.to_json()))) == run


def test_nan_dev_score_is_never_best():
    run = RunState()
    assert run.record_dev(0, float("nan"), 3, counts=False) is False
    assert run.record_dev(10, 50.0, 3) is True and run.record_dev(20, float("nan"), 3) is False
    assert (run.best_score, run.best_step, run.drops) == (50.0, 10, 0)


def final_state(workdir):
    """(step, {"state": restored state}) of a run folder's newest checkpoint, on this process's first device (the
    run may have been saved by several processes)."""
    from sgcl_jax import checkpointing, runs
    from sgcl_jax.model import ModelSpec, load_guide

    cfg = runs.read_config(workdir)
    guide = load_guide(cfg.model)
    target = runs.abstract_state(ModelSpec.from_config(cfg, guide.config), cfg, guide.params)
    state, meta = checkpointing.restore(workdir, "latest", target)
    return int(meta["checkpoint"].split("/")[-1]), {"state": state}


def assert_same_run(straight, resumed, steps=30):
    """The resumed run's final state, scores and metrics log equal the uninterrupted run's, bitwise."""
    (s1, a), (s2, b) = final_state(straight), final_state(resumed)
    assert s1 == s2 == steps
    leaves_a, leaves_b = jax.tree.leaves(a["state"]), jax.tree.leaves(b["state"])
    assert len(leaves_a) == len(leaves_b)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b, strict=True))
    ra, rb = (json.loads((w / "results.json").read_text()) for w in (straight, resumed))
    assert ra["tasks"] == rb["tasks"] and ra["training"]["best_step"] == rb["training"]["best_step"]
    # The metrics log of the resumed run reads as one run: each step once, the same values.
    la, lb = ([json.loads(x) for x in (w / "metrics.jsonl").read_text().splitlines()] for w in (straight, resumed))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "steps_per_s"} for r in rows]  # noqa: E731
    assert strip(la) == strip(lb)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, train_cmd, subprocess_env):
    """An uninterrupted tiny run: the reference of the resume tests."""
    folder = tmp_path_factory.mktemp("straight")
    subprocess.run(train_cmd(folder), check=True, env=subprocess_env, capture_output=True, timeout=300)
    return folder


def _interrupt(workdir, train_cmd, env, sig):
    """Starts a tiny run, sends `sig` once its step-10 checkpoint exists; -> (exit status, stderr)."""
    proc = subprocess.Popen(train_cmd(workdir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (workdir / "checkpoints" / "10").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.mark.slow
def test_exact_resume_after_kill(tmp_path, train_cmd, subprocess_env, straight_run):
    killed = tmp_path / "killed"
    code, _ = _interrupt(killed, train_cmd, subprocess_env, signal.SIGKILL)
    assert code == -signal.SIGKILL and not (killed / "results.json").exists()
    interrupted_at = Checkpoints(killed, writable=False).latest_step()
    assert interrupted_at is not None and interrupted_at < 30
    # The killed process's lock is stale: the resumed run takes it over.
    subprocess.run(train_cmd(killed), check=True, env=subprocess_env, capture_output=True, timeout=300)
    assert_same_run(straight_run, killed)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_at_the_step_boundary_and_resumes_bitwise(tmp_path, train_cmd, subprocess_env, straight_run,
                                                                 sig):
    stopped = tmp_path / "stopped"
    code, err = _interrupt(stopped, train_cmd, subprocess_env, sig)
    line = err.strip().splitlines()[-1]
    step = Checkpoints(stopped, writable=False).latest_step()
    # SIGTERM (a preemption) exits 0 without scoring; Ctrl-C exits 130; both saved the step they stopped at.
    assert code == (0 if sig == signal.SIGTERM else 130), err[-2000:]
    assert 10 < step < 30 and not (stopped / "results.json").exists()
    assert line.startswith(f"stopped by {sig.name} at step {step}: saved {stopped}/checkpoints/{step}; resume with: "
                           "python "), line
    resume = line.split("resume with: ", 1)[1]
    assert "train.py" in resume and f"--workdir {stopped}" in resume
    subprocess.run(train_cmd(stopped), check=True, env=subprocess_env, capture_output=True, timeout=300)
    assert_same_run(straight_run, stopped)


def test_config_is_validated_at_construction():
    cfg = Config.from_dict(base_config())
    assert cfg == Config() and Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    bad = [({"optim.lr": -1e-5}, "optim.lr"), ({"optim.lr": 0.0}, "optim.lr"), ({"objective.name": "simcse"},
           "objective.name"), ({"objective.tau": 0}, "objective.tau"), ({"data.batch_size": 1}, "data.batch_size"),
           ({"eval.final_tasks": ("STSB", "NOPE")}, "eval.final_tasks"), ({"model.dtype": "float16"}, "model.dtype"),
           ({"guide.pooling": "sum"}, "guide.pooling"), ({"data.source": "text"}, "data.files"),
           ({"train.log_every": 0}, "train.log_every"), ({"optim.nope": 1}, "optim.nope"),
           ({"model.head": "yes"}, "model.head"), ({"eval.classifier": "svm"}, "eval.classifier")]
    for change, field in bad:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            cfg.replace(**change)
    # Comma lists for tuple fields, as the flag parser hands them over.
    c = Config.from_dict({**cfg.to_dict(), "eval": {**cfg.to_dict()["eval"], "final_tasks": ("STSB,SICKR",)},
                          "data": {**cfg.to_dict()["data"], "source": "text", "files": ("a.txt,b.txt",)}})
    assert c.eval.final_tasks == ("STSB", "SICKR") and c.data.files == ("a.txt", "b.txt")
    assert cfg.replace(**{"eval.final_tasks": "transfer"}).eval.final_tasks == ("transfer",)
    assert cfg.replace(seeds="1,2,3").seeds == (1, 2, 3) and cfg.replace(**{"data.buckets": "16,32"}).data.buckets \
        == (16, 32)
    with pytest.raises(ConfigError, match="seeds: expected an integer, got 'x'"):
        cfg.replace(seeds="1,x")


@pytest.mark.slow
def test_cli_errors_are_one_line_and_touch_nothing(tmp_path, train_cmd, subprocess_env):
    workdir = tmp_path / "w"
    r = subprocess.run(train_cmd(workdir, "--config.optim.lr=-1", "--config.eval.final_tasks=STSB,SICKR"),
                       capture_output=True, text=True, timeout=120, env=subprocess_env)
    assert r.returncode != 0 and "optim.lr" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not workdir.exists()
    r = subprocess.run([*train_cmd(workdir, "--config.data.source=text", "--config.data.files=/nope.txt"),
                        "--verbose"], capture_output=True, text=True, timeout=120, env=subprocess_env)
    assert r.returncode != 0 and "/nope.txt" in r.stderr and "Traceback" in r.stderr
    assert not workdir.exists()


def test_mistyped_overrides_and_help_answer_before_anything_starts(tmp_path, repo_root, capsys):
    """A mistyped field or section is one line naming it (exit 1); --help prints the program's description and its
    own flags (exit 0); both before any flag parsing, model or folder."""
    from sgcl_jax import train as train_cli

    workdir = tmp_path / "w"
    base = ["--config", str(repo_root / "configs/tiny.py"), "--workdir", str(workdir)]
    for flag, line in (("--config.optim.lrr=1e-3", "error: config: optim.lrr: no such field (fields of optim: "),
                       ("--config.optimm.lr=1", "error: config: optimm.lr: no such field (fields of config: ")):
        with pytest.raises(SystemExit) as e:
            train_cli.main([*base, flag])
        assert str(e.value.code).startswith(line) and "\n" not in str(e.value.code) and not workdir.exists()
    with pytest.raises(SystemExit) as e:
        train_cli.main([*base, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("Trains an SG-BERT sentence encoder.") and "--workdir:" in out


def test_text_files(tmp_path, caplog, write):
    with pytest.raises(ValueError, match=r"empty\.txt: no training sentences"):
        data.read_text_file(write(tmp_path / "empty.txt", "\n  \n"))
    mixed = write(tmp_path / "mixed.txt.gz", gzip.compress(b"good one\nbad \xff\xfe line\n" + "ümlaut\n\n".encode()))
    sentences, bad = data.read_text_file(mixed)
    assert sentences == ["good one", "ümlaut"] and bad == 1
    assert "mixed.txt.gz:2: not UTF-8" in caplog.text
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        data.read_text_file(tmp_path / "nope.txt")
    latin = write(tmp_path / "latin1.txt", "caf\xe9 cr\xe8me\n\xe0 la carte\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"latin1\.txt: no training sentences: none of its 2 non-blank"):
        data.read_text_file(latin)
    truncated = write(tmp_path / "cut.txt.gz", gzip.compress(b"a sentence\n" * 1000)[:60])
    with pytest.raises(ValueError, match=r"cut\.txt\.gz: not a readable gzip file"):
        data.read_text_file(truncated)
    garbage = write(tmp_path / "garbage.txt.gz", b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"not deflate data at all")
    with pytest.raises(ValueError, match=r"garbage\.txt\.gz: not a readable gzip file"):
        data.read_text_file(garbage)


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


def test_multi_seed_summary(tmp_path, tiny_config):
    # Trained in bf16: selection and the final scores are still computed in fp32 (eval.dtype).
    overrides = {"seeds": (1, 2), "train.num_steps": 4, "train.eval_every": 2, "model.dtype": "bfloat16"}
    first = train_and_evaluate(tiny_config(**overrides, **{"eval.also_last": False}), tmp_path)
    assert "last" not in first and first["protocol"]["dtype"] == "float32"
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
    last = [json.loads((tmp_path / f"seed_{s}" / "results.json").read_text())["last"]["average"]["score"]
            for s in (1, 2)]
    assert res["last"]["average"]["score"] == pytest.approx(np.mean(last))
    # A call for one of the seeds keeps the folder's summary over every finished seed; a seed folder of another
    # run (seed 1's, copied to seed_9) is left out of it, not refused.
    shutil.copytree(tmp_path / "seed_1", tmp_path / "seed_9")
    one = train_and_evaluate(tiny_config(**{**overrides, "seeds": (2,)}), tmp_path)
    assert one["tasks"]["STSB"]["per_seed"] == {"1": per[0], "2": per[1]} and one["tasks"] == res["tasks"]
    assert json.loads((tmp_path / "config.json").read_text())["seeds"] == [1, 2]
    assert json.loads((tmp_path / "results.json").read_text())["protocol"]["seeds"] == [1, 2]
    fake = {s: {"protocol": {}, "tasks": {"A": {"score": v, "n": 3}},
                "average": {"score": v, "tasks": ["A"], "complete": True, "of": 1}}
            for s, v in [(1, 70.0), (2, 72.0), (3, 77.0)]}
    summary = summarise_seeds(fake)
    assert summary["tasks"]["A"]["score"] == pytest.approx(73.0)
    assert summary["tasks"]["A"]["std"] == pytest.approx(np.sqrt(((70 - 73) ** 2 + 1 + 16) / 2))
    assert summary["average"]["std"] == pytest.approx(summary["tasks"]["A"]["std"])


def test_tfds_source_reads_this_process_share(monkeypatch, tiny_config):
    """The TFDS reader's per-process split and feature handling, with a stand-in module (the real TFDS run is
    in test_packaging)."""
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
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # not installed
    with pytest.raises(ImportError, match=r"sgcl_jax\[tfds\]"):
        data.read_tfds("wiki", "train", "text")


def test_missing_training_data_is_fetched_or_explained(tmp_path, mirror, monkeypatch, tiny_config):
    target = tmp_path / "cache"
    cfg = tiny_config(**{"data.data_dir": str(target), "data.download": False}).data
    with pytest.raises(FileNotFoundError, match="SGCL_DATA_DIR"):
        data.load_sentences(cfg)
    cfg = tiny_config(**{"data.data_dir": str(target), "data.download": True}).data
    monkeypatch.setenv("SGCL_STS_MIRROR", "http://127.0.0.1:9/")  # nothing listens: a fast, clear failure
    with pytest.raises(FileNotFoundError, match="fetching it failed"):
        data.load_sentences(cfg)
    monkeypatch.setenv("SGCL_STS_MIRROR", mirror[0])
    sentences, _ = data.load_sentences(cfg)
    assert len(sentences) == 320 and (target / "STSBenchmark" / "stsbenchmark.tsv.gz").exists()


def test_typed_and_previous_release_configs_take_the_same_overrides(tmp_path, write):
    """A shipped config (a typed Config) and a config file of the previous release (a ConfigDict) both take
    --config.a.b overrides parsed by the field's type; a value of the wrong type is one line naming the flag."""
    from sgcl_jax import cli
    from sgcl_jax import train as train_cli

    old = write(tmp_path / "old.py", "import ml_collections\nfrom sgcl_jax.config import Config\n\n\n"
                "def get_config():\n    return ml_collections.ConfigDict(Config().to_dict())\n")
    for config in ("tiny", str(old)):
        cli.parse(train_cli.FLAGS, "", "train", ["--config", config, "--config.optim.lr=3e-5",
                                                 "--config.eval.final_tasks=STSB,SICKR", "--config.seeds=1,2"])
        cfg = Config.from_dict(train_cli._CONFIG.value)
        assert (cfg.optim.lr, cfg.eval.final_tasks, cfg.seeds) == (3e-5, ("STSB", "SICKR"), (1, 2)), config
    cli.parse(train_cli.FLAGS, "", "train", ["--config", "tiny"])  # a second parse starts from the defaults
    assert Config.from_dict(train_cli._CONFIG.value).optim.lr == 5e-4
    with pytest.raises(SystemExit) as e:
        cli.parse(train_cli.FLAGS, "", "train", ["--config", "tiny", "--config.optim.lr=abc"])
    assert str(e.value.code).startswith("error: ") and "optim.lr" in str(e.value.code)
    assert "\n" not in str(e.value.code)
