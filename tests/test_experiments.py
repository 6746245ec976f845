"""The experiment runner on the tiny config: two variants build the table, a finished variant is skipped on a
re-run, and an unknown override is refused before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sgcl_jax import experiments
from sgcl_jax.config import ConfigError
from sgcl_jax.experiments import Variant, parse_variant, run_experiment


def test_two_variants_build_the_table_and_a_rerun_skips_them(tmp_path, tiny_config, capsys):
    base = tiny_config(**{"train.num_steps": 4, "train.eval_every": 2})
    # An override of the data, not of the step, so that both variants share one compiled step.
    variants = [Variant("ref", {}), Variant("half data", {"data.max_sentences": 160})]
    table = run_experiment("ablation", base, variants, tmp_path, seeds=[1])
    printed = capsys.readouterr().out
    results = {v: json.loads((tmp_path / folder / "seed_1" / "results.json").read_text())
               for v, folder in (("ref", "ref"), ("half data", "half_data"))}
    assert [r["name"] for r in table["rows"]] == ["ref", "half data"]
    for row in table["rows"]:
        assert row["average"] == pytest.approx(results[row["name"]]["average"]["score"])
        assert row["per_seed_average"] == [pytest.approx(row["average"])]
    ref, half = table["rows"]
    assert ref["average"] != half["average"]  # the override reached the trainer
    assert half["delta"] == pytest.approx(half["average"] - ref["average"])
    assert json.loads((tmp_path / "ablation.json").read_text())["rows"][1]["delta"] == pytest.approx(half["delta"])
    md = (tmp_path / "ablation.md").read_text()
    assert printed.rstrip().endswith(md.strip()) and f"{half['delta']:+.2f}" in md and "average over STSB" in md
    assert json.loads((tmp_path / "half_data" / "config.json").read_text())["data"]["max_sentences"] == 160

    # A re-run trains nothing: the finished seeds' folders are untouched, and the table is the same.
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and "seed_1" in p.parts}
    again = run_experiment("ablation", base, variants, tmp_path, seeds=[1])
    assert [r["average"] for r in again["rows"]] == [r["average"] for r in table["rows"]]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_unknown_or_invalid_overrides_are_refused_before_anything_runs(tmp_path, repo_root, tiny_config, capsys):
    with pytest.raises(ConfigError, match="variant 'bad'.*model.nope"):
        run_experiment("ablation", tiny_config(), [Variant("ok", {}), Variant("bad", {"model.nope": 1})],
                       tmp_path / "a", seeds=[1])
    assert not (tmp_path / "a").exists()
    rc = experiments.main(["ablation", "--config", str(repo_root / "configs/tiny.py"), "--workdir",
                           str(tmp_path / "b"), "--only", "SG-OPT,mine", "--variant", "mine:objective.tau=-1"])
    assert rc == 2 and "tau" in capsys.readouterr().err and not (tmp_path / "b").exists()
    rc = experiments.main(["ablation", "--config", str(repo_root / "configs/tiny.py"), "--workdir",
                           str(tmp_path / "c"), "--only", "SG-OPT,nope"])
    assert rc == 2 and "unknown variant" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_variants_are_data():
    v = parse_variant("small-lr:optim.lr=1e-6,data.files=a.txt,model.head=False")
    assert v.overrides == {"optim.lr": 1e-6, "data.files": "a.txt", "model.head": False}
    with pytest.raises(ValueError, match="key=value"):
        parse_variant("nothing")
    names = [v.name for v in experiments.ABLATION]
    assert names[0] == "SG-OPT" and len(set(names)) == len(names) == 9
    assert np.all([isinstance(v.overrides, dict) for v in experiments.ABLATION])
