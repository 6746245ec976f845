"""Shared fixtures: the bundled MiniLM, a tiny random BERT, and the STS data folder in ../shared."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from sgcl_jax.bert import BertConfig

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SGCL_DATA_DIR", ROOT.parent / "shared" / "data" / "sts")).resolve()

TINY = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=128)


@pytest.fixture(scope="session")
def minilm():
    """The bundled all-MiniLM-L6-v2, loaded once."""
    from sgcl_jax.pretrained import load_pretrained

    return load_pretrained("minilm")


@pytest.fixture(scope="session")
def tiny():
    """A 2-layer random BERT with MiniLM's tokenizer."""
    from sgcl_jax.pretrained import random_pretrained

    return random_pretrained(TINY, seed=0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The STS data folder (../shared/data/sts); tests that need it fail loudly when it is absent."""
    assert (DATA_DIR / "STSBenchmark").exists(), f"STS data not found at {DATA_DIR} (set SGCL_DATA_DIR)"
    return DATA_DIR


@pytest.fixture()
def mirror(tmp_path, data_dir):
    """A local HTTP server on 127.0.0.1 serving release-shaped files built from ../shared/data/sts."""
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "STS2012-en-test.zip", "w") as z:
        for f in (data_dir / "STS12-en-test").iterdir():
            z.write(f, f"test-gold/{f.name}")  # the release nests its files in a folder
    shutil.copy(data_dir / "STSBenchmark" / "stsbenchmark.tsv.gz", served / "stsbenchmark.tsv.gz")
    (served / "STS2013-en-test.zip").write_bytes(b"not a zip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", served
    server.shutdown()
