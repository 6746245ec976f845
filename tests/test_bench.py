"""The benchmark harness runs on the tiny shape and reports sane numbers (no timing assertions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sgcl_jax import bench, timing
from sgcl_jax.bert import BertConfig


def test_flop_count_by_hand():
    cfg = BertConfig(hidden_size=4, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    # one layer, one token: projections 2*(4*16 + 2*32) = 256, attention 2*2*1*4 = 16 -> 272 per forward
    # guide forward + trained forward/backward = 4 forwards; head on c + 2 views: 3 * 2*(4*2 + 2*2) = 72, x3
    assert timing.step_flops(cfg, batch=1, length=1, views=2, head_dim=2) == 4 * 272 + 3 * 72


@pytest.mark.slow
def test_harness_runs_with_torch_baseline(tmp_path, data_dir, capsys):
    out = tmp_path / "bench.json"
    rc = bench.main(["--model", "tiny", "--batch", "8", "--steps", "4", "--torch", "--head-dim", "64",
                     "--data-dir", str(data_dir), "--json", str(out)])
    assert rc == 0
    (row,) = json.loads(out.read_text())
    for impl in ("jax", "torch"):
        x = row[impl]
        assert x["sentences_per_s"] > 0 and x["tokens_per_s"] > x["sentences_per_s"] and np.isfinite(x["loss"])
    assert row["jax"]["compile_seconds"] > 0 and row["speedup"] > 0
    assert 16 <= row["mean_padded_length"] <= 128  # STS-B lengths, padded to the trainer's buckets
    assert "speedup" in capsys.readouterr().out


def test_pipeline_bench_reports_host_rate(data_dir, capsys):
    rows = timing.bench_pipeline(16, 5, 128, "minilm", str(data_dir))
    assert rows["sentences_per_s"] > 0 and rows["cores"] == 1


def test_bench_command_shows_the_library_info_lines(monkeypatch, capsys):
    """A long `--transfer` run logs each task as it finishes; the command must not drop those INFO lines."""
    import logging

    from sgcl_jax import bench

    logging.getLogger().setLevel(logging.WARNING)
    monkeypatch.setattr(timing, "bench_pipeline", lambda *a: {"batch": 16, "sentences_per_s": 1.0, "steps": 5,
                                                              "seconds": 1.0})
    assert bench.main(["--pipeline", "--batch", "16"]) == 0
    assert logging.getLogger("sgcl_jax.transfer").isEnabledFor(logging.INFO)


def test_sklearn_race_on_a_sample_of_the_fits(tmp_path, write):
    """The transfer race: our fits and scikit-learn's on the same folds agree, and a sample is extrapolated."""
    write(tmp_path / "MR" / "rt-polarity.pos", "".join(f"good film number {i}\n" for i in range(20)))
    write(tmp_path / "MR" / "rt-polarity.neg", "".join(f"bad film number {i}\n" for i in range(20)))

    class Encoder:
        def encode(self, sentences, batch_size=64):
            rng = np.random.RandomState(0)
            return np.stack([rng.normal(size=8) + (1.5 if s.startswith("good") else -1.5) for s in sentences])

    race = timing._sklearn_race(Encoder(), "MR", 3, [1], str(tmp_path), sample=5)
    assert race["fits"] == 3 * 6 * 3 and race["sklearn_fits_timed"] == 5
    assert race["sklearn_seconds"] == pytest.approx(race["sklearn_seconds_measured"] * 54 / 5)
    assert race["max_accuracy_difference"] <= 1e-6 and race["speedup"] > 0
