"""Export: a trained tiny model in both formats loaded in transformers and sentence-transformers, the standard
sentence-transformers files and card, permissions, the round trip from the bundled MiniLM, refusals, and the
self-describing run (max length, dtype, pooling read from the run)."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import sgcl_jax
from sgcl_jax import evaluate, export, pretrained, pytorch_export
from sgcl_jax.model import load_guide
from sgcl_jax.pretrained import flatten, load_pretrained, resolve
from sgcl_jax.runs import read_config

SENTENCES = ["A cat sleeps on the sofa.", "Stocks rallied today.", "", "a b c d e f g", " ".join(["word"] * 60)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
    """A tiny run trained with max length 24, whose dev selection picks a trained step before the last."""
    from sgcl_jax.trainer import train_and_evaluate

    workdir = tmp_path_factory.mktemp("run")
    # Dev peaks at step 3 (16.920, then 16.911 at 6): clear of the last bits, where steps 5 and 10 were not
    # (16.9104 against 16.9101).
    train_and_evaluate(tiny_config(**{"train.num_steps": 10, "train.eval_every": 3, "model.max_length": 24,
                                      "data.buckets": (16,), "optim.lr": 5e-5}), workdir)
    return workdir


def test_export_both_formats_match_jax(trained, tmp_path):
    out = tmp_path / "export"
    assert export.main(["--checkpoint", str(trained), "--out", str(out), "--format", "both"]) == 0
    enc = sgcl_jax.load_encoder(str(trained))
    assert enc.max_length == 24  # the run's own max length, not the default
    want = enc.encode(SENTENCES)

    from transformers import AutoModel, AutoTokenizer

    model, info = AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert not any(info.values()), info
    tok = AutoTokenizer.from_pretrained(str(out))
    with torch.no_grad():  # plain truncation=True cuts where the JAX encoder cuts (the 60-word sentence)
        got = model.eval()(**tok(SENTENCES, padding=True, truncation=True, return_tensors="pt")
                           ).last_hidden_state[:, 0].numpy()
    assert np.abs(got - want).max() <= 1e-4

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(out), device="cpu", local_files_only=True)
    assert np.abs(st.encode(SENTENCES) - want).max() <= 1e-4
    assert st.max_seq_length == 24 and st.similarity_fn_name == "cosine"
    for name in ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json",
                 "1_Pooling/config.json", "model.safetensors", "tokenizer.json", pytorch_export.MARKER):
        assert (out / name).exists(), name
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "cls"
    card = (out / "README.md").read_text()
    meta = card.split("---")[1]
    assert "library_name: sentence-transformers" in meta and "pipeline_tag: sentence-similarity" in meta
    assert "model-index" in meta and "spearman_cosine" in meta and "license: apache-2.0" in meta
    assert "SentenceTransformer(" in card and "| STSB |" in card and "Protocol:" in card
    assert str(trained) not in card and "/tmp" not in card  # no local paths
    # The citation section carries the paper's BibTeX; the example matrix says which model computed it.
    cite = card.split("### BibTeX", 1)[1]
    assert cite.lstrip().startswith("#### SG-BERT") and "Self-Guided Contrastive Learning for {BERT}" in cite
    assert "computed by this exported model itself" in card and "Exported checkpoint: best/" in card
    assert "untrained base model's weights" not in card
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644) for p in out.rglob("*"))
    # The exported model is the trained one, not the guide it started from.
    guide = load_guide(read_config(trained).model)
    assert np.abs(sgcl_jax.SentenceEncoder(guide.config, guide.params, guide.tokenizer, 24).encode(SENTENCES)
                  - want).max() > 1e-3

    hf_only = tmp_path / "hf"
    assert export.main(["--checkpoint", str(trained), "--out", str(hf_only), "--format", "hf"]) == 0
    assert (hf_only / "model.safetensors").exists() and not (hf_only / "modules.json").exists()


def test_a_mean_pooled_run_exports_with_its_pooling(tmp_path, tiny_config):
    """model.pooling=mean trains BERT_T's mean vector; its export pools the same way in sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    from sgcl_jax.trainer import train_and_evaluate

    run = tmp_path / "mean"
    train_and_evaluate(tiny_config(**{"train.num_steps": 4, "train.eval_every": 2, "model.pooling": "mean",
                                      "eval.pooling": "mean"}), run)
    out = tmp_path / "export"
    assert export.main(["--checkpoint", str(run), "--out", str(out)]) == 0
    want = sgcl_jax.load_encoder(str(run)).encode(SENTENCES)
    st = SentenceTransformer(str(out), device="cpu", local_files_only=True)
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "mean"
    assert np.abs(st.encode(SENTENCES) - want).max() <= 1e-4
    assert "the mean of the last layer's token vectors" in (out / "README.md").read_text()


def test_the_bundled_model_card_names_its_hub_id(tmp_path):
    out = tmp_path / "minilm"
    assert export.main(["--checkpoint", "minilm", "--out", str(out), "--format", "both"]) == 0
    meta = (out / "README.md").read_text().split("---")[1]
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in meta
    a, b = load_pretrained("minilm"), load_pretrained(str(out))
    fa, fb = flatten(a.params), flatten(b.params)
    assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)  # bitwise round trip
    src = load_file(str(resolve("minilm") / "model.safetensors"))
    dst = load_file(str(out / "model.safetensors"))
    assert np.array_equal(src["pooler.dense.weight"], dst["pooler.dense.weight"])


def test_evaluate_of_a_run_reproduces_its_results(trained, capsys):
    saved = json.loads((trained / "results.json").read_text())
    assert evaluate.main(["--model", str(trained), "--tasks", "STSB", "--out", str(trained.parent / "re.json")]) == 0
    again = json.loads((trained.parent / "re.json").read_text())
    assert again["tasks"]["STSB"]["score"] == saved["tasks"]["STSB"]["score"]
    assert again["protocol"]["max_length"] == 24 == saved["protocol"]["max_length"]
    # An explicit flag overrides the run's setting, and the override is visible in the protocol.
    assert evaluate.main(["--model", str(trained), "--tasks", "STSB", "--max-length", "32"]) == 0
    assert "max_length=32" in capsys.readouterr().out


def test_refusals(trained, tmp_path, monkeypatch, capsys):
    seeds = tmp_path / "seeds"
    (seeds / "seed_1" / "checkpoints").mkdir(parents=True)
    assert export.main(["--checkpoint", str(seeds), "--out", str(tmp_path / "o2")]) == 1
    assert "multi-seed run folder" in capsys.readouterr().err

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("user data")
    assert export.main(["--checkpoint", str(trained), "--out", str(busy)]) == 1
    assert "--overwrite" in capsys.readouterr().err and (busy / "keep.txt").exists()

    # A mapping bug that changes one tensor must be caught by the PyTorch check, and nothing is left behind.
    real = pretrained.state_dict_from_params

    def broken(params, pooler=None):
        sd = real(params, pooler)
        bias = sd["encoder.layer.1.output.dense.bias"].copy()
        bias[0] += 0.05  # one element: a uniform shift would be undone by the LayerNorm that follows
        sd["encoder.layer.1.output.dense.bias"] = bias
        return sd

    monkeypatch.setattr(pytorch_export, "state_dict_from_params", broken)
    assert export.main(["--checkpoint", str(trained), "--out", str(tmp_path / "bad")]) == 1
    assert "export refused" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.staging-*"))


def test_export_one_checkpoint_folder(trained, tmp_path):
    (best,) = [p for p in (trained / "best").iterdir() if p.name.isdigit()]
    out = tmp_path / "from_best"
    assert export.main(["--checkpoint", str(best), "--out", str(out), "--format", "hf"]) == 0
    from_run = sgcl_jax.load_encoder(str(trained)).encode(SENTENCES)
    assert np.abs(sgcl_jax.load_encoder(str(out), max_length=24).encode(SENTENCES) - from_run).max() <= 1e-5
    latest = max((p for p in (trained / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert sgcl_jax.load_encoder(str(latest)).encode(SENTENCES).shape == (5, 32)


def test_the_card_carries_the_score_of_the_exported_checkpoint(trained, tmp_path):
    results = json.loads((trained / "results.json").read_text())
    best, last = results["tasks"]["STSB"]["score"], results["last"]["tasks"]["STSB"]["score"]
    assert best != last  # the fixture's best-on-dev step is not its last one
    for which, expected in (("best", best), ("latest", last)):
        out = tmp_path / which
        assert export.main(["--checkpoint", str(trained), "--out", str(out), "--which", which, "--format", "hf"]) == 0
        card = (out / "README.md").read_text()
        assert f"| STSB | {expected:.2f} |" in card, (which, card[-1500:])
        other = last if which == "best" else best
        assert f"| STSB | {other:.2f} |" not in card
    # One checkpoint folder that results.json did not score: the card carries no score.
    latest = sorted(int(p.name) for p in (trained / "checkpoints").iterdir() if p.name.isdigit())
    if len(latest) > 1:
        out = tmp_path / "older"
        assert export.main(["--checkpoint", str(trained / "checkpoints" / str(latest[0])), "--out", str(out),
                            "--format", "hf"]) == 0
        assert "| STSB |" not in (out / "README.md").read_text()
