"""Shared fixtures: the bundled MiniLM, a tiny random BERT, the tiny run config, the read-only data folders in
../shared (skipped with the reason when absent; CI sets SGCL_REQUIRE_DATA=1 so that they fail instead), file
fixtures in the released formats, and a local HTTP mirror."""

from __future__ import annotations

import os
from pathlib import Path

# One persistent XLA compilation cache for the test process and every subprocess it starts: the tiny model's
# programs are compiled once per run of the suite instead of once per process (set before JAX is imported).
_CACHE = Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax_compilation"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# libtpu (the [tpu] extra, for sgcl_jax.aot) is installed here: without this every test process would first try
# to bring up TPU chips that this machine does not have. The AOT tests describe TPU topologies explicitly.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# No LLVM optimisation: the test programs (tiny models, a few steps each) compile about 3x faster, which outweighs
# the slower MiniLM encoding (about 1.5x) of the few tests that run it (measured on 2 cores). The computation is
# the same; only the machine code is less optimised.
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

import functools  # noqa: E402
import http.server  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import zipfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from sgcl_jax.bert import BertConfig  # noqa: E402

# In case a plugin imported JAX before the variables above were set.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TINY = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=128)


def _shared(env: str, default: Path, probe: str) -> Path:
    """A data folder, or a skip (a failure when SGCL_REQUIRE_DATA is set) naming what is missing."""
    folder = Path(os.environ.get(env) or default).resolve()
    if not (folder / probe).exists():
        message = f"{folder / probe} not found: set {env} to the folder holding {probe} ({default} here)"
        if os.environ.get("SGCL_REQUIRE_DATA"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout's root (train.py, configs/)."""
    return ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The STS data folder ($SGCL_DATA_DIR, else ../shared/data/sts)."""
    return _shared("SGCL_DATA_DIR", SHARED / "sts", "STSBenchmark")


@pytest.fixture(scope="session")
def senteval_dir() -> Path:
    """The SentEval transfer data ($SGCL_SENTEVAL_DIR, else ../shared/data/senteval)."""
    return _shared("SGCL_SENTEVAL_DIR", SHARED / "senteval", "MR")


@pytest.fixture(scope="session")
def nli_file() -> Path:
    """The NLI sentences text ($SGCL_NLI_TEXT's folder, else ../shared/data/nli)."""
    path = os.environ.get("SGCL_NLI_TEXT")
    return _shared("SGCL_NLI_DIR", Path(path).parent if path else SHARED / "nli", "snli_sentences.txt") \
        / "snli_sentences.txt"


@pytest.fixture(scope="session")
def paper_results() -> dict:
    """The paper's result tables ($SGCL_PAPER_RESULTS, else ../shared/paper/results.json), as JSON."""
    import json

    path = os.environ.get("SGCL_PAPER_RESULTS")
    folder = _shared("SGCL_PAPER_DIR", Path(path).parent if path else ROOT.parent / "shared" / "paper", "results.json")
    os.environ.setdefault("SGCL_PAPER_RESULTS", str(folder / "results.json"))  # what sgcl_jax.paper reads
    return json.loads((folder / "results.json").read_text())


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
def tiny_config(data_dir):
    """A factory: configs/tiny.py as a typed Config, progress off, with dotted overrides."""
    sys.path.insert(0, str(ROOT))
    from configs import tiny
    from sgcl_jax.config import Config

    base = Config.from_dict(tiny.get_config()).replace(**{"train.progress": False})

    def make(**overrides):
        return base.replace(**overrides)

    return make


@pytest.fixture(scope="session")
def train_cmd(repo_root):
    """A factory: the command line of a tiny training run into a folder."""

    def make(workdir, *extra):
        return [sys.executable, str(repo_root / "train.py"), "--config", str(repo_root / "configs/tiny.py"),
                "--workdir", str(workdir), "--config.train.progress=False", *extra]

    return make


@pytest.fixture(scope="session")
def subprocess_env(data_dir):
    """Environment for subprocesses: the data folder, CPU, the shared compilation cache, no other JAX settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or "CACHE" in k}
    return {**env, "SGCL_DATA_DIR": str(data_dir), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def write_file(path: Path, text: str | bytes, encoding: str = "utf-8") -> Path:
    """Writes text (or bytes), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


@pytest.fixture(scope="session")
def write():
    """A helper to write fixture files: write(path, text_or_bytes, encoding='utf-8')."""
    return write_file


@pytest.fixture(scope="session")
def make_sts16():
    """A factory: STS16 in the official 2016 naming, with unscored pairs and extra columns, under a root folder."""

    def make(root: Path, subsets: tuple[str, ...] | None = None) -> Path:
        from sgcl_jax import sts

        for k, sub in enumerate(subsets or sts.SUBSETS["STS16"]):
            pairs = [f"sentence {k} {i} a\tsentence {k} {i} b\textra-col\tmore" for i in range(6)]
            gold = ["", "4.0", "3", "", "1.5", "0"]
            write_file(root / "STS16-en-test" / f"STS2016.input.{sub}.txt", "\n".join(pairs) + "\n")
            write_file(root / "STS16-en-test" / f"STS2016.gs.{sub}.txt", "\n".join(gold) + "\n")
        return root

    return make


@pytest.fixture(scope="session")
def make_sick():
    """A factory: SICK-R's test file (header, quotes in sentences) under a root folder."""

    def make(root: Path) -> Path:
        header = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
        rows = [f"{i}\tA \"quoted\" man {i}\tA woman {i}\t{1 + i % 5}.0\tNEUTRAL" for i in range(7)]
        write_file(root / "SICK" / "SICK_test_annotated.txt", header + "\n".join(rows) + "\n")
        return root

    return make


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
    server.server_close()
