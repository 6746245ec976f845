"""Run folders that nothing corrupts or silently mixes (issue 12's fault probe, one test per case): refused
resumes leave the folder as it was, config changes are refused by field, divergence stops before anything
non-finite is saved, a second run is locked out, damaged checkpoints are set aside, and bad input names itself."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import jax
import numpy as np
import pytest

import sgcl_jax
from sgcl_jax import checkpointing, evaluate, evaluators, identity, runs, sts
from sgcl_jax.pretrained import load_pretrained
from sgcl_jax.trainer import DivergenceError, train_and_evaluate

SHORT = {"train.num_steps": 4, "train.eval_every": 2, "train.checkpoint_every": 2, "train.log_every": 2}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under a folder with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_config):
    """A finished tiny run (4 steps), trained once for the tests that must not damage it."""
    workdir = tmp_path_factory.mktemp("finished")
    train_and_evaluate(tiny_config(**SHORT), workdir)
    return workdir


def test_1_refused_resume_changes_nothing(finished, tiny_config):
    before = snapshot(finished)
    for change, field in [({"model.init_seed": 1}, "model.init_seed"), ({"model.head_dim": 32}, "model.head_dim")]:
        with pytest.raises(runs.RunError, match=field.replace(".", r"\.")) as e:
            train_and_evaluate(tiny_config(**SHORT, **change), finished)
        assert "strict" not in str(e.value)  # no Orbax advice to relax the restore
        assert snapshot(finished) == before
    # The finished run still loads and scores.
    encoder = sgcl_jax.load_encoder(str(finished))
    assert encoder.encode("a sentence").shape == (32,)


def test_2_resume_with_another_config_is_refused(tmp_path, tiny_config):
    train_and_evaluate(tiny_config(**SHORT), tmp_path)
    (tmp_path / "results.json").unlink()  # an unfinished run: its checkpoints decide
    before = snapshot(tmp_path)
    with pytest.raises(runs.RunError, match=r"refusing to resume.*data\.batch_size: 8 -> 16.*objective\.name: "
                                            r"'sg_opt' -> 'opt1'"):
        train_and_evaluate(tiny_config(**SHORT, **{"data.batch_size": 16, "objective.name": "opt1"}), tmp_path)
    assert snapshot(tmp_path) == before
    # Fields that only say where and how often may change on resume.
    train_and_evaluate(tiny_config(**{**SHORT, "train.log_every": 1, "train.keep_checkpoints": 3}), tmp_path)
    assert (tmp_path / "results.json").exists()


def test_3_divergence_stops_before_anything_non_finite_is_saved(tmp_path, tiny_config, write):
    with pytest.raises(DivergenceError, match=r"step \d+: the loss or gradient norm is not finite.*optim\.lr"):
        train_and_evaluate(tiny_config(**{"optim.lr": 1e6, "train.log_every": 30, "train.checkpoint_every": 1,
                                          "train.eval_every": 1, "train.keep_checkpoints": 30}), tmp_path)
    assert not list(tmp_path.rglob("*orbax-checkpoint-tmp*"))
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    for step in steps:  # every saved state is finite
        run = runs.load_run(tmp_path / "checkpoints" / str(step))
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(run.params))
    metrics = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["best_dev"]) for m in metrics if "best_dev" in m)  # a nan dev score is never best
    assert not (tmp_path / "results.json").exists() and not (tmp_path / ".lock").exists()
    # Evaluation refuses a non-finite score and says why.
    pre = load_pretrained(str(_nan_model(tmp_path)))
    encoder = sgcl_jax.SentenceEncoder(pre.config, pre.params, pre.tokenizer)
    write(tmp_path / "pairs" / "STS.input.toy.txt", "".join(f"a cat {i}\ta dog {i}\n" for i in range(4)))
    write(tmp_path / "pairs" / "STS.gs.toy.txt", "4\n3\n2\n1\n")
    with pytest.raises(ValueError, match="not finite"):
        evaluators.evaluate(encoder, [str(tmp_path / "pairs")])


def _nan_model(tmp_path: Path) -> Path:
    """The bundled model folder with one NaN weight."""
    import shutil

    from safetensors.numpy import load_file, save_file

    src, dst = sgcl_jax.pretrained.resolve("minilm"), tmp_path / "nan_model"
    shutil.copytree(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    sd["embeddings.LayerNorm.weight"] = np.full_like(sd["embeddings.LayerNorm.weight"], np.nan)
    save_file(sd, str(dst / "model.safetensors"))
    return dst


def test_4_export_never_deletes_the_run(finished, tmp_path):
    from sgcl_jax import export, pytorch_export

    before = snapshot(finished)
    for out in (finished, finished / "exported", finished.parent):
        assert export.main(["--checkpoint", str(finished), "--out", str(out), "--overwrite"]) == 1
        assert snapshot(finished) == before
    other = tmp_path / "not_an_export"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    assert export.main(["--checkpoint", str(finished), "--out", str(other), "--overwrite", "--format", "hf"]) == 1
    assert (other / "keep.txt").exists()
    target = tmp_path / "export"
    assert export.main(["--checkpoint", str(finished), "--out", str(target), "--format", "hf"]) == 0
    assert export.main(["--checkpoint", str(finished), "--out", str(target), "--format", "hf", "--overwrite"]) == 0
    assert (target / pytorch_export.MARKER).exists()


def test_5_a_second_run_into_the_same_folder_is_refused(tmp_path, tiny_config, caplog):
    with runs.RunLock(tmp_path):
        with pytest.raises(runs.RunError, match=r"another training run is using this folder \(pid \d+ on "):
            train_and_evaluate(tiny_config(**SHORT), tmp_path)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.json").exists()
    # A lock left by a process that is gone is taken over, with a message naming it.
    (tmp_path / ".lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere", "since": "yesterday"}))
    with caplog.at_level(logging.WARNING), runs.RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] != 999999
    assert "taking over a stale lock (pid 999999 on elsewhere" in caplog.text
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("damage", ["tensor", "meta"])
def test_6_a_damaged_newest_checkpoint_falls_back(tmp_path, tiny_config, caplog, damage):
    cfg = tiny_config(**SHORT)
    train_and_evaluate(cfg, tmp_path)
    (tmp_path / "results.json").unlink()
    newest = tmp_path / "checkpoints" / "4"
    if damage == "tensor":
        victim = max((p for p in (newest / "state").rglob("*") if p.is_file() and "d" in p.parent.name),
                     key=lambda p: p.stat().st_size)
    else:
        victim = newest / "meta" / "metadata"
    victim.write_bytes(victim.read_bytes()[: max(1, victim.stat().st_size // 3)])
    (tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-1234").mkdir()  # an interrupted save
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.')  # a kill mid-write
    with caplog.at_level(logging.INFO):
        res = train_and_evaluate(cfg, tmp_path)
    assert "does not restore" in caplog.text and "set aside" in caplog.text
    assert "resumed from step 2" in caplog.text and "incomplete last line" in caplog.text
    assert list((tmp_path / "checkpoints").glob("4.damaged-*"))
    assert not list((tmp_path / "checkpoints").glob("*orbax-checkpoint-tmp*"))
    assert res["training"]["step"] == 4 and (tmp_path / "checkpoints" / "4").is_dir()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(x) for x in lines)


def test_7_input_errors_name_the_file_line_or_field(tmp_path, tiny_config, write, make_sts16):
    make_sts16(tmp_path)
    gs = tmp_path / "STS16-en-test" / "STS2016.gs.headlines.txt"
    write(gs, "\n4.0\nnan\n\n1\n0\n")
    with pytest.raises(ValueError, match=r"STS2016\.gs\.headlines\.txt:3: gold score 'nan' is not a finite"):
        sts.read_task("STS16", tmp_path)
    write(gs, "\n4.0\n7\n\n1\n0\n")
    with pytest.raises(ValueError, match=r"headlines\.txt:3: gold score '7' is not a finite number in \[0, 5\]"):
        sts.read_task("STS16", tmp_path)
    model = tmp_path / "model"
    import shutil

    shutil.copytree(sgcl_jax.pretrained.resolve("minilm"), model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read the weights"):
        load_pretrained(str(model))
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    (empty_run / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    with pytest.raises(runs.RunError, match="without checkpoints"):
        sgcl_jax.load_encoder(str(empty_run))
    assert evaluate.main(["--model", str(empty_run), "--tasks", "STSB"]) == 1
    (empty_run / "checkpoints").mkdir()
    with pytest.raises(runs.RunError, match="no latest checkpoint restores"):
        sgcl_jax.load_encoder(str(empty_run))


def test_checkpoint_restore_by_step_reports_what_exists(finished):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint checkpoints/9999 \(have \[2, 4\]\)"):
        checkpointing.restore(finished, "latest", None, 9999)


# ------------------------------------------------------------------------------------------ never mixed, never
# mislabelled (issue 23) and faults in the wild (issue 22), each on a fresh copy of a tiny run


def _copy(finished, tmp_path):
    import shutil

    return Path(shutil.copytree(finished, tmp_path / "run"))


def _add_best(run, step=4):
    """A best-on-dev checkpoint at `step`, written as the trainer writes one (the tiny model rarely beats step 0)."""
    restored = checkpointing.restore(run, "latest", None, step)
    ckpt = checkpointing.Checkpoints(run)
    ckpt.save_best(step, restored[0]["params"], {"step": step, "dev_score": 50.0, "identity": restored[1]["identity"]})
    ckpt.close()


def _damage(folder):
    victim = max((p for p in folder.rglob("*") if p.is_file() and "d" in p.parent.name), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])


def test_identity_is_written_first_and_another_run_is_never_adopted(finished, tmp_path, tiny_config):
    run = _copy(finished, tmp_path)
    assert json.loads((run / identity.IDENTITY).read_text())["objective.name"] == "sg_opt"
    # Killed before any checkpoint finished: nothing under checkpoints/, a best/ of the first run.
    for p in (run / "checkpoints").iterdir():
        import shutil

        shutil.rmtree(p)
    (run / "results.json").unlink()
    before = snapshot(run)
    with pytest.raises(runs.RunError, match=r"refusing to resume.*objective\.name: 'sg_opt' -> 'opt1'"):
        train_and_evaluate(tiny_config(**SHORT, **{"objective.name": "opt1"}), run)
    assert snapshot(run) == before
    # A folder of an older release (no identity.json) whose checkpoint metadata is damaged: refused too.
    (run / identity.IDENTITY).unlink()
    (run / "checkpoints" / "4").mkdir()
    (run / "checkpoints" / "4" / "junk").write_text("x")
    before = snapshot(run)
    with pytest.raises(runs.RunError, match="identity cannot be read"):
        train_and_evaluate(tiny_config(**SHORT), run)
    assert snapshot(run) == before


def test_a_restart_before_the_first_checkpoint_logs_each_step_once(finished, tmp_path, tiny_config):
    run = _copy(finished, tmp_path)
    import shutil

    for p in (run / "checkpoints").iterdir():
        shutil.rmtree(p)
    (run / "results.json").unlink()
    train_and_evaluate(tiny_config(**SHORT), run)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (finished / "metrics.jsonl").read_text().splitlines()]
    assert steps == [r["step"] for r in rows] and steps.count(0) == 1


def test_a_refused_resume_leaves_lock_and_temporary_folders(finished, tmp_path, tiny_config):
    run = _copy(finished, tmp_path)
    (run / ".lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere", "since": "yesterday"}))
    (run / "checkpoints" / "6.orbax-checkpoint-tmp-1").mkdir()
    (run / "checkpoints" / "6.orbax-checkpoint-tmp-1" / "part").write_text("x")
    (run / "results.json").unlink()
    before = snapshot(run)
    with pytest.raises(runs.RunError, match="refusing to resume"):
        train_and_evaluate(tiny_config(**SHORT, **{"model.head_dim": 32}), run)
    assert snapshot(run) == before and (run / ".lock").exists()


def test_a_damaged_best_is_refused_by_readers_and_nothing_is_renamed(finished, tmp_path):
    run = _copy(finished, tmp_path)
    _add_best(run)
    _damage(run / "best" / "4")
    before = snapshot(run)
    with pytest.raises(checkpointing.Damaged, match=r"best/4 does not restore"):
        sgcl_jax.load_encoder(str(run))
    assert evaluate.main(["--model", str(run), "--tasks", "STSB"]) != 0
    assert snapshot(run) == before  # read-only: no rename, no delete
    # The last state is there when asked for, named as what it is.
    enc = sgcl_jax.load_encoder(str(run), which="latest")
    assert "checkpoints/4" in enc.source
    _damage(run / "checkpoints" / "4")
    before = snapshot(run)
    enc = sgcl_jax.load_encoder(str(run), which="latest")  # the newest is damaged: the older one, by name
    assert "checkpoints/2" in enc.source and snapshot(run) == before


def test_a_damaged_best_in_an_unfinished_run_still_finishes(finished, tmp_path, tiny_config, caplog):
    run = _copy(finished, tmp_path)
    _add_best(run, 2)
    _damage(run / "best" / "2")
    (run / "results.json").unlink()
    meta = checkpointing.Checkpoints(run, writable=False).read_meta()
    meta_best = meta["run"]["best_step"]
    cfg = tiny_config(**SHORT)
    # The run's own record says best step 2 (as it would, had step 2 beaten step 0).
    state_dir = run / "checkpoints" / "4" / "meta" / "metadata"
    raw = json.loads(state_dir.read_text())
    raw["run"]["best_step"], raw["run"]["best_score"] = 2, 99.0
    state_dir.write_text(json.dumps(raw))
    with caplog.at_level(logging.WARNING):
        res = train_and_evaluate(cfg, run)
    assert "the best checkpoint is lost" in caplog.text
    assert "best/2 is lost" in res["protocol"]["model"] and (run / "results.json").exists()
    assert meta_best in (0, 2, 4)


def test_damaged_results_json_is_scored_again(finished, tmp_path, tiny_config):
    run = _copy(finished, tmp_path)
    good = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text('{"tasks": {"STSB"')
    res = train_and_evaluate(tiny_config(**SHORT), run)
    assert res["tasks"]["STSB"]["score"] == pytest.approx(good["tasks"]["STSB"]["score"], abs=1e-6)
    assert json.loads((run / "results.json").read_text())["tasks"] == res["tasks"]


def test_seeds_are_validated(tiny_config):
    from sgcl_jax.config import ConfigError

    with pytest.raises(ConfigError, match=r"config: seed: -1: must be >= 0"):
        tiny_config(seed=-1)
    with pytest.raises(ConfigError, match=r"config: seeds: \(1, 1\) repeats \[1\]"):
        tiny_config(seeds=(1, 1))


def test_encode_refuses_bad_input_naming_the_argument(finished):
    enc = sgcl_jax.load_encoder(str(finished))
    for kwargs, message in [({"sentences": None}, "sentences must be a string or a list of strings"),
                            ({"sentences": ["ok", "\ud800"]}, r"sentences\[1\] is not valid Unicode"),
                            ({"sentences": ["ok", 3]}, r"sentences\[1\] is a int"),
                            ({"sentences": ["a"], "batch_size": 0}, "batch_size=0: must be an integer >= 1"),
                            ({"sentences": ["a"], "batch_size": -1}, "batch_size=-1"),
                            ({"sentences": ["a"], "truncate_dim": -5}, r"truncate_dim=-5: must be in 1\.\.32"),
                            ({"sentences": ["a"], "truncate_dim": 33}, "truncate_dim=33")]:
        with pytest.raises(ValueError, match=message):
            enc.encode(**kwargs)
    assert enc.encode(["a", "b"], truncate_dim=5).shape == (2, 5)


def test_evaluating_a_damaged_checkpoint_folder_is_one_line(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    for step in ("2", "4"):
        _damage(run / "checkpoints" / step)
    before = snapshot(run)
    assert evaluate.main(["--model", str(run / "checkpoints" / "4"), "--tasks", "STSB"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "checkpoints/4 does not restore" in err[0], err
    assert snapshot(run) == before


def test_a_run_folder_of_the_previous_release_resumes(tmp_path, tiny_config):
    """A run folder written before `model.pooling` existed (identity.json and config.json lack the field) is
    this release's run with the field at its default: it resumes, and finishes as an uninterrupted run does."""
    import shutil

    cfg = tiny_config(**{"train.num_steps": 8, "train.eval_every": 4, "train.checkpoint_every": 4})
    straight = train_and_evaluate(cfg, tmp_path / "straight")
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "straight", old)
    for name in ("identity.json", "config.json"):  # as the previous release wrote them
        saved = json.loads((old / name).read_text())
        if name == "identity.json":
            del saved["model.pooling"]
        else:
            del saved["model"]["pooling"]
        (old / name).write_text(json.dumps(saved))
    shutil.rmtree(old / "checkpoints" / "8")  # stopped after step 4's save
    (old / "results.json").unlink()
    resumed = train_and_evaluate(cfg, old)
    assert resumed["tasks"] == straight["tasks"] and resumed["training"]["best_step"] == straight["training"][
        "best_step"]
    assert json.loads((old / "identity.json").read_text())["model.pooling"] == "cls"
    # A field that differs from the default is still a different run.
    with pytest.raises(runs.RunError, match=r"model\.pooling: 'cls' -> 'mean'"):
        train_and_evaluate(cfg.replace(**{"model.pooling": "mean", "eval.pooling": "mean"}), old)
