"""Encoder parity with Hugging Face's PyTorch BertModel, bf16 sanity, and strict-loader errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from transformers import BertConfig as HFBertConfig
from transformers import BertModel

from sgcl_jax.bert import Bert
from sgcl_jax.model import DTYPES
from sgcl_jax.pretrained import load_pretrained, resolve, state_dict_from_params
from sgcl_jax.tokenization import tokenize

SENTENCES = [
    "A man is playing a guitar.",
    "",
    " ".join(["supercalifragilistic word"] * 100),  # 200 words: truncated at 128 tokens
    "Two dogs run across the snowy field.",
    "Ein Satz auf Deutsch, with ümlauts and emoji 🙂.",
]


def _torch_hidden(model: BertModel, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v).long() for k, v in batch.items()}, output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states]


def _assert_parity(jax_hidden, torch_hidden, mask, tol=1e-4):
    assert len(jax_hidden) == len(torch_hidden)
    m = mask.astype(bool)
    for i, (a, b) in enumerate(zip(jax_hidden, torch_hidden, strict=True)):
        diff = np.abs(np.asarray(a)[m] - b[m]).max()
        assert diff <= tol, f"hidden state {i}: max abs diff {diff}"


def test_minilm_matches_transformers(minilm):
    batch = tokenize(minilm.tokenizer, SENTENCES, max_length=128)
    assert batch["attention_mask"][2].sum() == 128 and batch["attention_mask"][1].sum() == 2
    ours = Bert(minilm.config).apply({"params": minilm.params}, batch["input_ids"], batch["attention_mask"],
                                            batch["token_type_ids"])
    ref = BertModel.from_pretrained(str(resolve("minilm"))).eval()
    _assert_parity(ours, _torch_hidden(ref, batch), batch["attention_mask"])
    assert len(ours) == minilm.config.num_hidden_layers + 1


def test_random_tiny_bert_with_token_types(tiny):
    batch = tokenize(tiny.tokenizer, SENTENCES, max_length=64)
    rng = np.random.default_rng(0)
    batch["token_type_ids"] = (rng.random(batch["input_ids"].shape) > 0.5).astype(np.int32)
    ours = Bert(tiny.config).apply({"params": tiny.params}, batch["input_ids"], batch["attention_mask"],
                                          batch["token_type_ids"])
    ref = BertModel(HFBertConfig(**tiny.config.to_hf_dict()), add_pooling_layer=False).eval()
    sd = {k: torch.from_numpy(np.array(v)) for k, v in state_dict_from_params(tiny.params).items()}
    ref.load_state_dict(sd, strict=True)
    _assert_parity(ours, _torch_hidden(ref, batch), batch["attention_mask"])


def test_bf16_cls_close_to_fp32(minilm):
    batch = tokenize(minilm.tokenizer, SENTENCES, max_length=128)
    outs = [Bert(minilm.config, DTYPES[d]).apply({"params": minilm.params}, batch["input_ids"],
                                                        batch["attention_mask"])[-1][:, 0].astype(np.float32)
            for d in ("float32", "bfloat16")]
    a, b = (np.asarray(o) for o in outs)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() >= 0.999, cos


@pytest.fixture()
def model_dir(tmp_path, tiny):
    """A tiny checkpoint folder in HF layout that tests can break."""
    d = tmp_path / "model"
    src = resolve("minilm")
    d.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / f, d / f)
    (d / "config.json").write_text(json.dumps(tiny.config.to_hf_dict()))
    return d


def _write(d, sd):
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(d / "model.safetensors"))


def test_loader_reads_old_style_and_prefixed_keys(model_dir, tiny):
    sd = state_dict_from_params(tiny.params)
    old = {("bert." + k).replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
           for k, v in sd.items()}
    old["cls.predictions.bias"] = np.zeros(3, np.float32)
    old["bert.embeddings.position_ids"] = np.arange(128)[None]
    _write(model_dir, old)
    loaded = load_pretrained(str(model_dir))
    got, want = state_dict_from_params(loaded.params), sd
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_loader_errors(model_dir, tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        load_pretrained(str(tmp_path / "nope"))

    sd = state_dict_from_params(tiny.params)
    renamed = dict(sd)
    renamed["encoder.layer.1.output.dense.weightX"] = renamed.pop("encoder.layer.1.output.dense.weight")
    _write(model_dir, renamed)
    with pytest.raises(ValueError, match=r"missing encoder\.layer\.1\.output\.dense\.weight(.|\n)*unexpected "
                                         r"encoder\.layer\.1\.output\.dense\.weightX"):
        load_pretrained(str(model_dir))

    bad_shape = dict(sd)
    bad_shape["encoder.layer.0.intermediate.dense.bias"] = np.zeros(65, np.float32)
    _write(model_dir, bad_shape)
    with pytest.raises(ValueError, match=r"shape of encoder\.layer\.0\.intermediate\.dense\.bias"):
        load_pretrained(str(model_dir))

    _write(model_dir, sd)
    (model_dir / "config.json").write_text(json.dumps({**tiny.config.to_hf_dict(), "model_type": "roberta"}))
    with pytest.raises(ValueError, match="model_type 'roberta' is not supported"):
        load_pretrained(str(model_dir))

    (model_dir / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained(str(model_dir))


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="pass that folder's path"):
        load_pretrained("some-org/some-model-that-is-not-cached")


def test_cls_only_last_layer_equals_full(minilm):
    """The fast path used for [CLS] pooling (last layer computed for position 0 only) changes nothing."""
    batch = tokenize(minilm.tokenizer, SENTENCES, max_length=128)
    args = ({"params": minilm.params}, batch["input_ids"], batch["attention_mask"])
    full = Bert(minilm.config).apply(*args)
    fast = Bert(minilm.config, cls_only=True).apply(*args)
    assert fast[-1].shape[1] == 1
    np.testing.assert_allclose(np.asarray(fast[-1][:, 0]), np.asarray(full[-1][:, 0]), atol=1e-5)
    for a, b in zip(full[:-1], fast[:-1], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
