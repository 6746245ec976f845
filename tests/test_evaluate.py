"""Scoring and aggregation against independent re-derivations, the MiniLM correctness gate, the CLI and the grid."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sgcl_jax import evaluate as ev
from sgcl_jax import evaluators, pictures, scoring
from sgcl_jax.encoder import SentenceEncoder


def _ranks(x):
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for v in np.unique(x):  # average ranks for ties
        r[x == v] = r[x == v].mean()
    return r


def _pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return 100 * float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_aggregations_differ_and_match_definitions():
    rng = np.random.default_rng(0)
    golds = [rng.uniform(0, 5, 10), rng.uniform(0, 5, 40), rng.uniform(0, 5, 25)]
    # Subsets on different scales: per-subset correlations are high, pooled correlation is not.
    preds = [g * 0.1 + rng.normal(0, s, len(g)) + off for g, s, off in zip(golds, (0.05, 0.3, 0.1), (0, 2, -1),
                                                                              strict=True)]
    spear = [_pearson(_ranks(p), _ranks(g)) for p, g in zip(preds, golds, strict=True)]
    want = {
        "all": _pearson(_ranks(np.concatenate(preds)), _ranks(np.concatenate(golds))),
        "mean": np.mean(spear),
        "wmean": np.dot(spear, [10, 40, 25]) / 75,
    }
    got = {a: scoring.aggregate(preds, golds, "spearman", a) for a in scoring.AGGREGATIONS}
    for a in scoring.AGGREGATIONS:
        assert got[a] == pytest.approx(want[a], abs=1e-9), a
    assert min(abs(got["all"] - got["mean"]), abs(got["mean"] - got["wmean"]), abs(got["all"] - got["wmean"])) > 1
    assert scoring.aggregate(preds, golds, "pearson", "all") == pytest.approx(
        _pearson(np.concatenate(preds), np.concatenate(golds)))


@pytest.mark.slow
def test_minilm_cls_gate(minilm, data_dir):
    enc = SentenceEncoder(minilm.config, minilm.params, minilm.tokenizer, pooling="cls")
    res = evaluators.evaluate(enc, ["STSB"], scoring.Settings(data_dir=str(data_dir)))
    assert res["tasks"]["STSB"]["n"] == 1379
    assert res["tasks"]["STSB"]["score"] == pytest.approx(73.50, abs=0.05)
    assert res["protocol"]["pooling"] == "cls" and res["protocol"]["aggregation_sts12_16"] == "all"
    assert res["average"] == {"score": res["tasks"]["STSB"]["score"], "tasks": ["STSB"], "complete": True, "of": 1}


@pytest.fixture()
def mixed_data(tmp_path, data_dir, make_sts16, make_sick):
    """STS-B from ../shared plus STS16 and SICK-R fixtures in one data folder."""
    (tmp_path / "STSBenchmark").symlink_to(data_dir / "STSBenchmark")
    make_sts16(tmp_path)
    make_sick(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_cli_mean_gate_and_json_shape(mixed_data, tmp_path, capsys):
    out = tmp_path / "results.json"
    rc = ev.main(["--model", "minilm", "--tasks", "STSB,STS16,SICKR,STS12", "--pooling", "mean",
                  "--data-dir", str(mixed_data), "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res) >= {"protocol", "tasks", "average", "missing"}
    assert res["tasks"]["STSB"]["score"] == pytest.approx(82.03, abs=0.05)
    assert res["tasks"]["STS16"]["n"] == 20 and res["tasks"]["SICKR"]["n"] == 7
    assert set(res["tasks"]["STS16"]["subsets"]) == set(scoring.sts.SUBSETS["STS16"])
    assert "STS12" in res["missing"]
    assert res["average"]["score"] == pytest.approx(np.mean([t["score"] for t in res["tasks"].values()]))
    assert res["average"]["tasks"] == ["STSB", "STS16", "SICKR"] and res["average"]["complete"] is False
    assert all(t["metric"] == "spearman" for t in res["tasks"].values())
    printed = capsys.readouterr().out
    assert "protocol:" in printed and "sts_metric=spearman" in printed and "pooling=mean" in printed
    assert "STS12" in printed and "missing" in printed and "average (sts) of 3 of 4" in printed


@pytest.mark.slow
def test_layer_grid_writes_table_and_png(minilm, data_dir, tmp_path):
    enc = SentenceEncoder(minilm.config, minilm.params, minilm.tokenizer)
    grid = pictures.layer_grid(enc, data_dir)
    scores = np.array(grid["scores"])
    assert scores.shape == (minilm.config.num_hidden_layers + 1, 3)
    # Layer 0's [CLS] is the same vector for every sentence: no correlation is defined there.
    assert np.isnan(scores[0, 0]) and np.isfinite(scores[1:]).all() and np.isfinite(scores[:, 1:]).all()
    # The last-layer cells equal the PyTorch/transformers numbers measured for this model.
    assert scores[-1, 0] == pytest.approx(73.50, abs=0.05) and scores[-1, 1] == pytest.approx(82.03, abs=0.05)
    pictures.plot_layer_grid(grid, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_pairs_writes_the_picture_and_the_cosines(tmp_path, data_dir, capsys):
    out = tmp_path / "pairs.png"
    rc = ev.main(["--model", "minilm", "--model", "minilm", "--pooling", "mean", "--plot-pairs", str(out),
                  "--projection", "pca", "--data-dir", str(data_dir), "--out", str(tmp_path / "pairs.json")])
    assert rc == 0
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1000, 500)  # two 5-inch panels at 100 dpi
    rows = json.loads((tmp_path / "pairs.json").read_text())
    assert len(rows) == 2 and rows[0] == rows[1]  # the same model twice: the same numbers
    assert rows[0]["positive_cosine"] > rows[0]["negative_cosine"]
    assert "mean cosine of positive pairs" in capsys.readouterr().out
    positives, negatives = pictures.sample_pairs(data_dir, 20, 0)
    assert len(positives) == len(negatives) == 20 and positives == pictures.sample_pairs(data_dir, 20, 0)[0]
