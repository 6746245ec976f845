"""The experiment runner on the tiny config: variants over seeds build the table (mean +- std recomputed here from
each seed's results.json), a finished variant is skipped on a re-run, an interrupted study resumes what is
missing, the paper's numbers come from its file, and an unknown override is refused before anything is written."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from sgcl_jax import paper, study
from sgcl_jax.config import ConfigError
from sgcl_jax.study import Variant, parse_variant, run_experiment


def test_two_variants_build_the_table_and_a_rerun_skips_them(tmp_path, tiny_config, capsys):
    base = tiny_config(**{"train.num_steps": 4, "train.eval_every": 2})
    # An override of the data, not of the step, so that both variants share one compiled step.
    variants = [Variant("ref", {}), Variant("half data", {"data.max_sentences": 160}),
                Variant("tau-0.1", {"objective.tau": 0.1})]
    table = run_experiment("ablation", base, variants, tmp_path, seeds=[1])
    printed = capsys.readouterr().out
    results = {v: json.loads((tmp_path / folder / "seed_1" / "results.json").read_text())
               for v, folder in (("ref", "ref"), ("half data", "half_data"), ("tau-0.1", "tau-0.1"))}
    assert [r["name"] for r in table["rows"]] == ["ref", "half data", "tau-0.1"]
    for row in table["rows"]:
        assert row["best"]["mean"] == pytest.approx(results[row["name"]]["average"]["score"])
        assert row["best"]["per_seed"] == [pytest.approx(row["best"]["mean"])]
        assert row["last"]["mean"] == pytest.approx(results[row["name"]]["last"]["average"]["score"])
        assert row["best_steps"] == [results[row["name"]]["training"]["best_step"]]
        assert row["wall_seconds"] == [results[row["name"]]["training"]["wall_seconds"]] and row["wall_seconds"][0] > 0
    ref, half, tau = table["rows"]
    # The overrides reached the trainer, and the tiny setting learns: every variant's best step is a trained one.
    assert len({r["best"]["mean"] for r in table["rows"]}) == 3 and all(r["best_steps"][0] > 0 for r in table["rows"])
    assert half["delta"]["value"] == pytest.approx(half["best"]["mean"] - ref["best"]["mean"])
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["rows"][1]["delta"]["value"] == pytest.approx(half["delta"]["value"])
    md = (tmp_path / "ablation.md").read_text()
    assert printed.rstrip().endswith(md.strip()) and f"{half['delta']['value']:+.2f}" in md
    assert "average over STSB" in md and "best steps" in md and "avg (last)" in md
    assert json.loads((tmp_path / "half_data" / "config.json").read_text())["data"]["max_sentences"] == 160

    # A re-run trains nothing: the finished seeds' folders are untouched, and the table is the same.
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and "seed_1" in p.parts}
    again = run_experiment("ablation", base, variants, tmp_path, seeds=[1])
    assert [r["best"] for r in again["rows"]] == [r["best"] for r in table["rows"]]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # An interrupted study reports what is finished: a seed not yet trained is left out, not trained.
    report = run_experiment("ablation", base, variants, tmp_path, seeds=[1, 2], train=False)
    assert [r["seeds"] for r in report["rows"]] == [[1]] * 3 and not (tmp_path / "ref" / "seed_2").exists()
    assert [r["best"] for r in report["rows"]] == [r["best"] for r in table["rows"]]
    assert "| ref | 1 |" in (tmp_path / "ablation.md").read_text()


def test_what_git_keeps_of_a_study_rebuilds_its_table(tmp_path, repo_root, tiny_config):
    # results/ is tracked without the weights (.gitignore): what a new checkout gets must report the same table
    # and count as finished (nothing trained again).
    base = tiny_config(**{"train.num_steps": 2, "train.eval_every": 2})
    variants = [Variant("ref", {}), Variant("tau-0.1", {"objective.tau": 0.1})]
    trained = tmp_path / "trained"
    table = run_experiment("ablation", base, variants, trained, seeds=[1])
    files = [p.relative_to(trained) for p in trained.rglob("*") if p.is_file()]
    asked = "\n".join(f"results/study/{p.as_posix()}" for p in files)
    ignored = subprocess.run(["git", "-C", str(repo_root), "check-ignore", "--no-index", "--stdin"], input=asked,
                             capture_output=True, text=True).stdout.split()
    assert any("/checkpoints/" in p for p in ignored) and any("/best/" in p for p in ignored)
    kept = tmp_path / "checkout"
    for rel in files:
        if f"results/study/{rel.as_posix()}" not in ignored:
            (kept / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(trained / rel, kept / rel)
    assert not list(kept.rglob("checkpoints")) and (kept / "ref" / "seed_1" / "results.json").is_file()
    for train in (False, True):
        again = run_experiment("ablation", base, variants, kept, seeds=[1], train=train)
        assert [r["best"] for r in again["rows"]] == [r["best"] for r in table["rows"]]
    assert not list(kept.rglob("checkpoints"))
    # Training a few variants (--only) trains only those and keeps every finished one in the saved table.
    more = [*variants, Variant("tau-1", {"objective.tau": 1.0})]
    again = run_experiment("ablation", base, more, kept, seeds=[1], train=["tau-0.1"])
    assert [r["name"] for r in again["rows"]] == ["ref", "tau-0.1"] and not (kept / "tau-1").exists()
    saved = json.loads((kept / "ablation.json").read_text())["rows"]
    assert saved == json.loads(json.dumps(again["rows"]))


def test_unknown_or_invalid_overrides_are_refused_before_anything_runs(tmp_path, repo_root, tiny_config, capsys):
    with pytest.raises(ConfigError, match="variant 'bad'.*model.nope"):
        run_experiment("ablation", tiny_config(), [Variant("ok", {}), Variant("bad", {"model.nope": 1})],
                       tmp_path / "a", seeds=[1])
    assert not (tmp_path / "a").exists()
    from sgcl_jax import experiments

    def cli(*args):  # in-process: the command's exit status and the last line it wrote to stderr
        try:
            code = experiments.main(["ablation", "--config", str(repo_root / "configs/tiny.py"), *args])
            err = capsys.readouterr().err.strip().splitlines()
        except SystemExit as e:  # refused while parsing its flags: the message is the one line printed
            code, err = 1 if isinstance(e.code, str) else e.code, [str(e.code)]
        return code, err

    code, err = cli("--workdir", str(tmp_path / "b"), "--only", "SG-OPT,mine", "--variant", "mine:objective.tau=-1")
    assert code == 1 and "tau" in err[-1] and not (tmp_path / "b").exists()
    code, err = cli("--workdir", str(tmp_path / "c"), "--only", "SG-OPT,nope")
    assert code == 1 and "unknown variant" in err[-1] and not (tmp_path / "c").exists()
    # The base config takes training's overrides; a mistyped field is one line naming it, nothing written.
    code, err = cli("--workdir", str(tmp_path / "d"), "--config.optim.lrr=1e-3")
    assert code == 1 and err == [
        "error: config: optim.lrr: no such field (fields of optim: lr, b1, b2, eps, weight_decay, warmup_ratio, "
        "clip_norm)"] and not (tmp_path / "d").exists()
    code, err = cli("--workdir", str(tmp_path / "e"), "--set", "optim.lr=1")
    assert code == 1 and "--set was renamed: use --config." in err[-1]


def test_variants_are_data():
    v = parse_variant("small-lr:optim.lr=1e-6,data.files=a.txt,model.head=False")
    assert v.overrides == {"optim.lr": 1e-6, "data.files": "a.txt", "model.head": False}
    with pytest.raises(ValueError, match="key=value"):
        parse_variant("nothing")
    names = [v.name for v in study.ABLATION]
    assert names[0] == "SG-OPT" and len(set(names)) == len(names) == 9
    assert np.all([isinstance(v.overrides, dict) for v in study.ABLATION])
    # Experiments sharing a workdir share their reference: the same name and the same (empty) overrides.
    for name in ("domain", "recipe"):
        ref = study.variants(name, nli="x.txt")[0]
        assert (ref.name, ref.overrides) == ("SG-OPT", {})


def test_paper_numbers_come_from_its_file(paper_results):
    """Every ablation variant finds its Table 5 row by its overrides; the numbers are the file's, not ours."""
    rows = paper_results["table5_ablation_bert_base"]["rows"]
    for v in study.ABLATION:
        found = paper.ablation(v.overrides)
        (expected,) = [r for r in rows if r["overrides"] == v.overrides]
        assert found == {"variant": expected["variant"], "avg7": expected["avg7"], "delta": expected["delta"]}
    assert paper.ablation({"objective.tau": 0.5}) is None
    sg_opt = paper_results["table1_sts_spearman"]["rows"]["bert-base"]["sg-opt (cls)"]
    assert paper.sts_row("bert-base", "sg-opt (cls)") == {k: v["mean"] for k, v in sg_opt.items()}
    assert paper.domain_drop() == paper_results["figure4_domain_shift"]["sg-opt"]
    assert set(paper.transfer_rows()) == {k for k in paper_results["table4_senteval_accuracy"]["rows"]
                                          if k.startswith("bert-base ")}


def test_seed_aggregation_and_the_sign_table(paper_results):
    """mean +- std (ddof=1) over seeds, the standard error of a difference of means, and the sign verdicts,
    against a re-derivation with NumPy on made-up per-seed scores."""
    seeds = [1, 2, 3]
    rng = np.random.default_rng(0)

    def summary(level, spread):
        per = {t: level + spread * rng.standard_normal(3) for t in ("STSB", "SICKR")}
        tasks = {t: {"score": float(v.mean()), "std": float(v.std(ddof=1)),
                     "per_seed": {str(s): float(x) for s, x in zip(seeds, v, strict=True)}} for t, v in per.items()}
        training = {str(s): {"best_score": level + 1 + i, "best_step": 50 * (i + 1), "wall_seconds": 60.0 * (i + 1)}
                    for i, s in enumerate(seeds)}
        return {"tasks": tasks, "per_seed": training, "protocol": {}, "missing": {},
                "last": {"tasks": tasks}}, per

    ref, ref_per = summary(70.0, 0.3)
    far, far_per = summary(75.0, 0.3)
    near, near_per = summary(70.1, 0.3)
    found = [Variant("SG-OPT", {}), Variant("OPT2", {"objective.name": "opt2"}), Variant("lambda-0",
                                                                                         {"objective.lam": 0.0})]
    table = study.build_table("ablation", found, {"SG-OPT": ref, "OPT2": far, "lambda-0": near})
    for row, per in zip(table["rows"], (ref_per, far_per, near_per), strict=True):
        avg = (per["STSB"] + per["SICKR"]) / 2
        assert row["best"]["mean"] == pytest.approx(avg.mean()) and row["best"]["std"] == pytest.approx(avg.std(ddof=1))
    ref_avg = (ref_per["STSB"] + ref_per["SICKR"]) / 2
    for row, per in zip(table["rows"][1:], (far_per, near_per), strict=True):
        avg = (per["STSB"] + per["SICKR"]) / 2
        se = np.sqrt(avg.var(ddof=1) / 3 + ref_avg.var(ddof=1) / 3)
        assert row["delta"]["value"] == pytest.approx(avg.mean() - ref_avg.mean())
        assert row["delta"]["se"] == pytest.approx(se)
        assert row["delta"]["outside_2se"] == (abs(avg.mean() - ref_avg.mean()) > 2 * se)
    assert table["rows"][1]["delta"]["outside_2se"] and not table["rows"][2]["delta"]["outside_2se"]
    assert table["rows"][1]["dev"]["mean"] == pytest.approx(77.0) and table["rows"][1]["best_steps"] == [50, 100, 150]
    text = study.format_study(table)
    # OPT2: the paper's change is negative, ours positive and outside 2 SE; lambda-0: inside 2 SE.
    assert "| OPT2 | -1.48 | +" in text and "| no | yes |" in text and "| lambda-0 | -0.86 |" in text
    assert "| 1.0 |" not in text and "min/seed" in text


def test_the_recipe_config_is_the_studys_pick_and_trains_on_the_tiny_model(tmp_path, repo_root, tiny_config):
    """configs/minilm_plus.py is the default config with the chosen candidate's overrides (so the study's folders
    and the shipped config are one run), and it trains: BERT_T's mean-pooled vector, scored with mean pooling."""
    from sgcl_jax.config import load_config_file

    plus, default = load_config_file(str(repo_root / "configs/minilm_plus.py")), load_config_file("default")
    (mean,) = [v for v in study.RECIPE if v.name == "mean"]
    assert plus == default.replace(**mean.overrides) and plus.model.pooling == plus.eval.pooling == "mean"
    tiny = tiny_config(**{"train.num_steps": 4, "train.eval_every": 2, **mean.overrides})
    res = study.train_and_evaluate(tiny, tmp_path)
    assert res["protocol"]["pooling"] == "mean" and res["training"]["best_step"] > 0
    assert json.loads((tmp_path / "config.json").read_text())["model"]["pooling"] == "mean"


def test_untrained_baselines_are_measured_once(tmp_path, tiny_config, monkeypatch):
    """The untrained model's scores (the bar the recipe must clear) are measured, cached in the workdir, and read
    back without encoding again; a change of tasks measures again, into a cache of its own."""
    cfg = tiny_config()
    measure = study.evaluators.evaluate
    first = study.untrained(cfg, "mean", tmp_path)
    assert first["pooling"] == "mean" and set(first["tasks_scores"]) == {"STSB"} and first["dev"] is not None

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(study.evaluators, "evaluate", no_encoding)
    assert study.untrained(cfg, "mean", tmp_path) == first
    other = cfg.replace(**{"eval.final_tasks": ("STSB", "SICKR")})
    with pytest.raises(AssertionError, match="encoded again"):
        study.untrained(other, "mean", tmp_path)
    # Another task set has a cache of its own (the transfer and recipe studies share a workdir): measuring it
    # leaves the first one's cache as it was.
    monkeypatch.setattr(study.evaluators, "evaluate", measure)
    second = study.untrained(other, "mean", tmp_path)
    assert set(second["tasks_scores"]) == {"STSB", "SICKR"}
    monkeypatch.setattr(study.evaluators, "evaluate", no_encoding)
    assert study.untrained(cfg, "mean", tmp_path) == first
    assert study.untrained(other, "mean", tmp_path) == second
    assert study.untrained_file("cls", study.tasks.STS_TASKS) == "untrained_cls.json"
    assert study.untrained_file("cls", study.tasks.TRANSFER_TASKS) == "untrained_cls_transfer.json"
