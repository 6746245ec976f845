"""The package in its ecosystem: installed into a fresh folder and used from elsewhere, the encoder run by a
sentence-transformers evaluator in place of a SentenceTransformer, and a real TensorFlow Datasets source."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import sgcl_jax
from sgcl_jax import scoring, sts
from sgcl_jax.encoder import SentenceEncoder


@pytest.mark.slow
def test_installs_into_a_fresh_folder_and_runs_from_elsewhere(tmp_path, repo_root, subprocess_env):
    import shutil

    # A copy of what the package is built from, so that the build writes nothing into the checkout.
    source = tmp_path / "source"
    for part in ("sgcl_jax", "configs"):
        shutil.copytree(repo_root / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(repo_root / part, source / part)
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                        "--target", str(target), str(source)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (target / "sgcl_jax" / "configs" / "default.py").exists() and not (target / "tests").exists()
    env = {**subprocess_env, "PYTHONPATH": str(target)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import sgcl_jax, sgcl_jax.config as c; print(sgcl_jax.__file__); "
             "print(sorted(c.shipped_configs())); print(c.load_config_file('tiny').model.name)")
    r = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith(str(target)) and "'default'" in lines[1] and "'tiny'" in lines[1]
    assert lines[2] == "random"
    r = subprocess.run([sys.executable, "-m", "sgcl_jax.train", "--helpshort"], cwd=elsewhere, env=env,
                       capture_output=True, text=True, timeout=120)
    assert "--workdir" in r.stdout + r.stderr and "Traceback" not in r.stderr  # absl's help exits 1
    r = subprocess.run([sys.executable, "-m", "sgcl_jax.train", "--config", "nope", "--workdir", "w"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "shipped: " in r.stderr and "Traceback" not in r.stderr


def test_encode_has_sentence_transformers_shape(minilm):
    enc = SentenceEncoder(minilm.config, minilm.params, minilm.tokenizer, source="minilm")
    one = enc.encode("A man plays a guitar.", unknown_keyword=True)  # ignored, as ST's tools may pass extras
    assert one.shape == (384,) and one.dtype == np.float32
    assert enc.encode([]).shape == (0, 384) and enc.get_sentence_embedding_dimension() == 384
    many = enc.encode(["A man plays a guitar.", "Someone makes music."], normalize_embeddings=True, batch_size=1)
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(many[0], one / np.linalg.norm(one), rtol=1e-5, atol=1e-6)
    sims = enc.similarity(many, many)
    assert sims.shape == (2, 2) and sims[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert enc.encode(["x y"], convert_to_tensor=True).shape == (1, 384)
    assert len(repr(enc)) < 300 and "dim=384" in repr(enc)
    with pytest.raises(ValueError, match="precision"):
        enc.encode(["x"], precision="int8")


def test_a_sentence_transformers_evaluator_runs_our_encoder(minilm, data_dir, monkeypatch):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    # The evaluator also files its metrics into a SentenceTransformer's model card (training-time metadata, not
    # part of the encode interface): that step is skipped here.
    monkeypatch.setattr(EmbeddingSimilarityEvaluator, "store_metrics_in_model_card_data", lambda *a, **k: None)

    dev = sts.read_stsb(data_dir / "STSBenchmark", "dev")
    pairs = slice(0, 200)
    evaluator = EmbeddingSimilarityEvaluator(dev.sent1[pairs], dev.sent2[pairs], list(dev.gold[pairs] / 5.0),
                                             name="stsb-dev", show_progress_bar=False,
                                             batch_size=64)  # our default: the programs compiled for the other tests
    enc = SentenceEncoder(minilm.config, minilm.params, minilm.tokenizer, source="minilm")
    metrics = evaluator(enc)
    ours = scoring.score_sts(enc, {"dev": [sts.Subset("dev", dev.sent1[pairs], dev.sent2[pairs],
                                                        dev.gold[pairs])]})["dev"]["score"]
    assert metrics["stsb-dev_spearman_cosine"] == pytest.approx(ours / 100, abs=1e-4)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory, data_dir):
    """A real TFDS dataset ('sgcl_lines', feature 'text') built locally from 320 STS-B sentences."""
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    folder = tmp_path_factory.mktemp("tfds")
    lines = sts.stsb_sentences(data_dir)[:320]
    builder = tfds.dataset_builders.TfDataBuilder(
        name="sgcl_lines", config="default", version="1.0.0", data_dir=str(folder),
        split_datasets={"train": tf.data.Dataset.from_tensor_slices({"text": lines})},
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))
    builder.download_and_prepare()
    return folder, lines


@pytest.mark.slow
def test_trains_from_a_real_tfds_dataset(tmp_path, tiny_config, tfds_dir, monkeypatch):
    import jax

    from sgcl_jax import data
    from sgcl_jax.trainer import train_and_evaluate

    folder, lines = tfds_dir
    cfg = tiny_config(**{"data.source": "tfds", "data.tfds_name": "sgcl_lines", "data.tfds_data_dir": str(folder),
                         "data.max_sentences": 0, "train.num_steps": 4, "train.eval_every": 2})
    sentences, shared = data.load_sentences(cfg.data)
    assert sorted(sentences) == sorted(s.strip() for s in lines) and shared is False
    res = train_and_evaluate(cfg, tmp_path)
    assert res["training"]["step"] == 4 and np.isfinite(res["tasks"]["STSB"]["score"])
    assert json.loads((tmp_path / "config.json").read_text())["data"]["source"] == "tfds"
    # Two processes each read their own share of the split: together, every example exactly once.
    shares = []
    for index in (0, 1):
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        monkeypatch.setattr(jax, "process_index", lambda i=index: i)
        shares.append(data.read_tfds("sgcl_lines", "train", "text", str(folder)))
    assert abs(len(shares[0]) - len(shares[1])) <= 1 and sorted(shares[0] + shares[1]) == sorted(sentences)


def test_package_imports_lazily():
    r = subprocess.run([sys.executable, "-c", "import sgcl_jax, sys; print('orbax.checkpoint' in sys.modules, "
                        "'tensorflow' in sys.modules); sgcl_jax.SentenceEncoder"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["False", "False"], r.stderr[-1000:]
    assert sgcl_jax.load_encoder is sgcl_jax.runs.load_encoder
    assert {"load_encoder", "SentenceEncoder", "train_and_evaluate"} <= set(dir(sgcl_jax))  # discoverable


def test_the_config_validates_without_jax():
    """The config (and so every command's flag parsing and --help) loads no JAX, Flax, optax or Orbax."""
    code = ("import sys; from sgcl_jax.config import load_config_file; load_config_file('default'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax', 'orbax')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-1000:])
