"""sgcl_jax: SG-BERT (Kim, Yoo and Lee, ACL 2021) in JAX/Flax.

    import sgcl_jax
    encoder = sgcl_jax.load_encoder("runs/default")   # or "minilm", a Hugging Face folder
    vectors = encoder.encode(["A man plays a guitar.", "Someone plays music."], normalize_embeddings=True)
"""

from __future__ import annotations

from typing import Any

__all__ = ["SentenceEncoder", "load_encoder", "train_and_evaluate"]
__version__ = "0.2.0"

# Imported on first use, so that `import sgcl_jax.bert` (or a CLI's --help) does not load Orbax and the trainer.
_LAZY = {"SentenceEncoder": "sgcl_jax.encoder", "load_encoder": "sgcl_jax.runs",
         "train_and_evaluate": "sgcl_jax.trainer"}


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sgcl_jax' has no attribute {name!r}")
