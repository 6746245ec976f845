"""Export: a trained tiny model in both formats loaded in transformers and sentence-transformers, the round
trip from the bundled MiniLM, refusals, and the user-facing load_encoder API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import sgcl_jax
from sgcl_jax import export
from sgcl_jax.pretrained import load_pretrained, resolve
from tests.test_trainer import tiny_config

SENTENCES = ["A cat sleeps on the sofa.", "Stocks rallied today.", "", "a b c d e f g"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    from sgcl_jax.trainer import train_and_evaluate

    workdir = tmp_path_factory.mktemp("run")
    train_and_evaluate(tiny_config(**{"train.num_steps": 10, "train.eval_every": 5}), workdir)
    return workdir


def test_export_both_formats_match_jax(trained, tmp_path):
    out = tmp_path / "export"
    assert export.main(["--checkpoint", str(trained), "--out", str(out), "--format", "both"]) == 0
    enc = sgcl_jax.load_encoder(str(trained), max_length=32)
    want = enc.encode(SENTENCES)

    from transformers import AutoModel, AutoTokenizer

    model, info = AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert not any(info.values()), info
    tok = AutoTokenizer.from_pretrained(str(out))
    with torch.no_grad():
        got = model.eval()(**tok(SENTENCES, padding=True, return_tensors="pt")).last_hidden_state[:, 0].numpy()
    assert np.abs(got - want).max() <= 1e-4

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(out), device="cpu")
    assert np.abs(st.encode(SENTENCES) - want).max() <= 1e-4
    card = (out / "README.md").read_text()
    assert "| STSB |" in card and "Protocol:" in card and "python -m sgcl_jax.export" in card
    # The exported model is the trained one, not the guide it started from.
    guide = sgcl_jax.Encoder(enc.config, load_pretrained_guide(trained), enc.tokenizer, max_length=32)
    assert np.abs(guide.encode(SENTENCES) - want).max() > 1e-3

    hf_only = tmp_path / "hf"
    assert export.main(["--checkpoint", str(trained), "--out", str(hf_only), "--format", "hf"]) == 0
    assert (hf_only / "model.safetensors").exists() and not (hf_only / "modules.json").exists()


def load_pretrained_guide(workdir):
    import json

    from sgcl_jax.trainer import load_guide

    return load_guide(json.loads((workdir / "config.json").read_text())["model"]).params


def test_round_trip_minilm_bitwise(tmp_path):
    out = tmp_path / "minilm"
    assert export.main(["--checkpoint", "minilm", "--out", str(out), "--format", "hf"]) == 0
    a, b = load_pretrained("minilm"), load_pretrained(str(out))
    fa, fb = (dict(sgcl_jax.pretrained.flatten(p.params)) for p in (a, b))
    assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)
    src = load_file(str(resolve("minilm") / "model.safetensors"))
    dst = load_file(str(out / "model.safetensors"))
    assert np.array_equal(src["pooler.dense.weight"], dst["pooler.dense.weight"])


def test_refusals(trained, tmp_path, monkeypatch, capsys):
    empty_workdir = tmp_path / "w"
    empty_workdir.mkdir()
    (empty_workdir / "config.json").write_text("{}")
    assert export.main(["--checkpoint", str(empty_workdir), "--out", str(tmp_path / "o1")]) == 1
    assert "without checkpoints" in capsys.readouterr().err

    seeds = tmp_path / "seeds"
    (seeds / "seed_1" / "checkpoints").mkdir(parents=True)
    assert export.main(["--checkpoint", str(seeds), "--out", str(tmp_path / "o2")]) == 1
    assert "multi-seed workdir" in capsys.readouterr().err

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("user data")
    assert export.main(["--checkpoint", str(trained), "--out", str(busy)]) == 1
    assert "--overwrite" in capsys.readouterr().err and (busy / "keep.txt").exists()

    # A mapping bug that changes one tensor must be caught by the PyTorch check, and nothing is left behind.
    real = export.state_dict_from_params

    def broken(params, pooler=None):
        sd = real(params, pooler)
        bias = sd["encoder.layer.1.output.dense.bias"].copy()
        bias[0] += 0.05  # one element: a uniform shift would be undone by the LayerNorm that follows
        sd["encoder.layer.1.output.dense.bias"] = bias
        return sd

    monkeypatch.setattr(export, "state_dict_from_params", broken)
    assert export.main(["--checkpoint", str(trained), "--out", str(tmp_path / "bad")]) == 1
    assert "export refused" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.staging-*"))
    monkeypatch.undo()
    assert export.main(["--checkpoint", str(trained), "--out", str(busy), "--overwrite"]) == 0
    assert not (busy / "keep.txt").exists()


def test_load_encoder_api():
    enc = sgcl_jax.load_encoder("minilm")
    v = enc.encode(SENTENCES, batch_size=2, normalize=True)
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    mean = enc.encode(SENTENCES[:2], pooling="mean")
    assert not np.allclose(mean, enc.encode(SENTENCES[:2]))


def test_export_one_checkpoint_folder(trained, tmp_path):
    (best,) = [p for p in (trained / "best").iterdir() if p.name.isdigit()]
    out = tmp_path / "from_best"
    assert export.main(["--checkpoint", str(best), "--out", str(out), "--format", "hf"]) == 0
    from_workdir = sgcl_jax.load_encoder(str(trained), max_length=32).encode(SENTENCES)
    assert np.abs(sgcl_jax.load_encoder(str(out), max_length=32).encode(SENTENCES) - from_workdir).max() <= 1e-5
    latest = max((p for p in (trained / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    enc = sgcl_jax.load_encoder(str(latest), max_length=32)
    assert enc.encode(SENTENCES).shape == (4, 32)
    from sgcl_jax.checkpointing import restore_params

    with pytest.raises(FileNotFoundError, match="no checkpoint checkpoints/9999"):
        restore_params(trained, None, "latest", 9999)
