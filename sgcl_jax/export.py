"""Export to PyTorch: a Hugging Face BertModel folder and/or a sentence-transformers folder, verified in PyTorch.

    python -m sgcl_jax.export --checkpoint runs/default --out exported/sg-minilm --format both

The folder is written to a temporary sibling, loaded back with transformers (and sentence-transformers),
compared with the JAX encoder on fixed sentences, and only then renamed into place; a max abs difference
of the [CLS] embeddings above 1e-4 refuses the export (non-zero exit, nothing left at --out).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sgcl_jax.encoder import Encoder
from sgcl_jax.files import staged_dir
from sgcl_jax.pretrained import Pretrained, pooler_for_export, state_dict_from_params

FORMATS = ("hf", "sentence-transformers", "both")
TOLERANCE = 1e-4
CHECK_SENTENCES = [
    "A man is playing a guitar.",
    "Two dogs run across a snowy field while their owner watches.",
    "",
    "The stock market fell sharply on Tuesday after the announcement.",
    "Ein Satz, der nicht englisch ist.",
    " ".join(["long"] * 300),
]


class ExportError(RuntimeError):
    """The export could not be written or did not reproduce the JAX encoder."""


def _write_hf(folder: Path, pre: Pretrained, bert_params: Any, tokenizer: Any) -> None:
    from safetensors.numpy import save_file

    sd = state_dict_from_params(bert_params, pooler_for_export(pre))
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(pre.config.to_hf_dict(), indent=2))
    tokenizer.save_pretrained(str(folder))


def _write_sentence_transformers(folder: Path, hidden: int, max_length: int) -> None:
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}], indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length,
                                                                  "do_lower_case": False}))


def model_card(source: str, config: dict[str, Any] | None, results: dict[str, Any] | None, command: str) -> str:
    """README.md for the exported folder: base model, training config, STS results with their protocol."""
    lines = ["# SG-BERT sentence encoder (exported by sgcl_jax)", "",
             "Self-Guided Contrastive Learning (Kim, Yoo and Lee, ACL 2021), trained with sgcl_jax (JAX/Flax).",
             "Use the last-layer [CLS] vector (the sentence-transformers Pooling module here is set to CLS).", "",
             f"- source: `{source}`"]
    if config:
        m, d = config.get("model", {}), config.get("data", {})
        lines += [f"- base model: `{m.get('name')}`", f"- objective: `{config.get('objective')}`",
                  f"- guide: `{config.get('guide')}`", f"- optimizer: `{config.get('optim')}`",
                  f"- training data: source `{d.get('source')}` {d.get('files') or ''} "
                  f"(STS-B: the unlabeled sentences of train/dev/test), batch {d.get('batch_size')}",
                  f"- seed: {config.get('seed')}"]
    if results and results.get("tasks"):
        lines += ["", "## STS results", "", "| task | score | pairs |", "|---|---|---|"]
        lines += [f"| {t} | {r['score']:.2f} | {r['n']} |" for t, r in results["tasks"].items()]
        if results.get("average") is not None:
            lines.append(f"| average | {results['average']:.2f} | |")
        lines += ["", "Protocol: " + ", ".join(f"{k}={v}" for k, v in results["protocol"].items())]
    lines += ["", "## How this folder was made", "", f"    {command}", ""]
    return "\n".join(lines)


def verify(folder: Path, encoder: Encoder, sentence_transformers: bool) -> dict[str, float]:
    """Loads the folder in PyTorch and compares [CLS] embeddings with the JAX encoder; raises above 1e-4."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    want = encoder.encode(CHECK_SENTENCES, progress=False)
    model, info = AutoModel.from_pretrained(str(folder), output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise ExportError(f"{folder}: transformers reports {bad}")
    tok = AutoTokenizer.from_pretrained(str(folder))
    enc = tok(CHECK_SENTENCES, padding=True, truncation=True, max_length=encoder.max_length, return_tensors="pt")
    with torch.no_grad():
        got = model.eval()(**enc).last_hidden_state[:, 0].numpy()
    diffs = {"transformers": float(np.abs(got - want).max())}
    if sentence_transformers:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(folder), device="cpu")
        diffs["sentence_transformers"] = float(np.abs(st.encode(CHECK_SENTENCES) - want).max())
    worst = max(diffs.values())
    if not worst <= TOLERANCE:
        raise ExportError(f"{folder}: exported model differs from the JAX encoder (max abs diff {diffs} > "
                          f"{TOLERANCE}); export refused")
    return diffs


def export(encoder: Encoder, pre: Pretrained, out: str | Path, fmt: str = "both", overwrite: bool = False,
           config: dict[str, Any] | None = None, results: dict[str, Any] | None = None,
           command: str = "") -> dict[str, float]:
    """Writes, verifies and atomically places the export; returns the measured max abs differences."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose from {FORMATS}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty; pass --overwrite to replace it")
    with staged_dir(out) as tmp:
        _write_hf(tmp, pre, encoder.params, encoder.tokenizer)
        st = fmt in ("sentence-transformers", "both")
        if st:
            _write_sentence_transformers(tmp, pre.config.hidden_size, encoder.max_length)
        (tmp / "README.md").write_text(model_card(encoder.source, config, results, command))
        return verify(tmp, encoder, st)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI."""
    ap = argparse.ArgumentParser(prog="python -m sgcl_jax.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a training workdir, one of its checkpoint folders "
                    "(<workdir>/best/<step>, <workdir>/checkpoints/<step>), or 'minilm' / a HF folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--format", default="both", choices=FORMATS)
    ap.add_argument("--which", default="best", choices=("best", "latest"))
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)

    from sgcl_jax import checkpointing
    from sgcl_jax.pretrained import load_pretrained

    config = results = None
    try:
        src, which, step = checkpointing.resolve_checkpoint(args.checkpoint)
        if checkpointing.is_workdir(src):
            pre, params = checkpointing.load_trained_bert(src, which or args.which, step)
            config = json.loads((src / "config.json").read_text())
            results = json.loads((src / "results.json").read_text()) if (src / "results.json").exists() else None
            max_length = config["model"]["max_length"]
        elif src.is_dir() and (src / "config.json").exists() and not (src / "model.safetensors").exists() \
                and not (src / "pytorch_model.bin").exists():
            raise FileNotFoundError(f"{src}: a workdir without checkpoints (has training run here?)")
        elif src.is_dir() and not (src / "config.json").exists():
            raise FileNotFoundError(f"{src}: neither a training workdir (no checkpoints/) nor a model folder")
        else:
            pre = load_pretrained(args.checkpoint)
            params, max_length = pre.params, 128
        encoder = Encoder(pre.config, params, pre.tokenizer, max_length=max_length, source=args.checkpoint)
        command = "python -m sgcl_jax.export " + " ".join(sys.argv[1:] if argv is None else argv)
        diffs = export(encoder, pre, args.out, args.format, args.overwrite, config, results, command)
    except (OSError, ValueError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"exported to {args.out} ({args.format}); verified in PyTorch, max abs diff of [CLS]: {diffs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
