"""Export to PyTorch, the library: a Hugging Face BertModel folder, made a sentence-transformers model through
its own API, verified in PyTorch before it is put in place (the command line is `sgcl_jax.export`).

The folder is written to a temporary sibling, loaded back with transformers (and sentence-transformers),
compared with the JAX encoder on fixed sentences (a 300-token one included), and only then renamed into
place; a max abs difference of the [CLS] embeddings above 1e-4 refuses the export (nothing left at the
target). The target may not be the source folder, inside it or above it, and `overwrite` replaces only an
earlier export (recognised by its marker file), never another kind of folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from sgcl_jax import __version__
from sgcl_jax.encoder import SentenceEncoder
from sgcl_jax.files import staged_dir
from sgcl_jax.pretrained import BUNDLED, Pretrained, load_pretrained, pooler_for_export, state_dict_from_params
from sgcl_jax.runs import is_run, load_run, resolve_checkpoint

log = logging.getLogger(__name__)
FORMATS = ("hf", "sentence-transformers", "both")
TOLERANCE = 1e-4
MARKER = ".sgcl_export.json"
HUB_IDS = {BUNDLED: "sentence-transformers/all-MiniLM-L6-v2"}  # our names of bundled models -> their hub ids
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


def check_target(out: Path, source: Path | None, overwrite: bool) -> None:
    """Refuses an --out that would lose the user's data: the source itself, inside it, above it, or a folder
    that is not an earlier export."""
    out = out.expanduser().resolve()
    if source is not None and source.exists():
        src = source.resolve()
        if out == src or src in out.parents or out in src.parents:
            where = "is" if out == src else "is inside" if src in out.parents else "contains"
            raise ExportError(f"--out {out} {where} the source folder {src}; choose a folder outside it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise ExportError(f"{out}: exists and is not empty; pass --overwrite to replace an earlier export")
        if not (out / MARKER).exists():
            raise ExportError(f"{out}: not an earlier sgcl_jax export (no {MARKER}); --overwrite replaces only "
                              "those. Choose another --out")


def _write_hf(folder: Path, pretrained: Pretrained, bert_params: Any, tokenizer: Any, max_length: int) -> None:
    from safetensors.numpy import save_file

    sd = state_dict_from_params(bert_params, pooler_for_export(pretrained))
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(pretrained.config.to_hf_dict(), indent=2))
    # transformers users who tokenize with truncation=True then cut where the JAX encoder cuts.
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(str(folder))


def base_model_id(source: str) -> str | None:
    """The hub id of a base model name, when known (the bundled MiniLM's, or a hub id itself)."""
    if source in HUB_IDS:
        return HUB_IDS[source]
    if source.count("/") == 1 and not Path(source).expanduser().exists():
        return source
    return None


def _write_sentence_transformers(folder: Path, encoder: SentenceEncoder, base_model: str | None,
                                 config: dict[str, Any] | None) -> None:
    """Makes the HF folder a sentence-transformers model: Transformer + CLS Pooling, saved by ST itself."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    word = Transformer(str(folder), max_seq_length=encoder.max_length)
    pooling = Pooling(encoder.config.hidden_size, pooling_mode=encoder.pooling)
    card = SentenceTransformerModelCardData(
        language="en", license="apache-2.0", model_name=f"SG-BERT ({base_model or 'BERT'}, sgcl_jax)",
        local_files_only=True, tags=["sentence-transformers", "sentence-similarity", "sg-bert", "sgcl_jax",
                                     "contrastive-learning", "unsupervised"])
    if base_model:
        card.base_model = base_model  # set directly: ST would look the id up on the hub, offline here
    model = SentenceTransformer(modules=[word, pooling], model_card_data=card, device="cpu")
    model.save_pretrained(str(folder))


BIBTEX = """@inproceedings{kim-etal-2021-self,
    title = "Self-Guided Contrastive Learning for {BERT} Sentence Representations",
    author = "Kim, Taeuk and Yoo, Kang Min and Lee, Sang-goo",
    booktitle = "Proceedings of the 59th Annual Meeting of the Association for Computational Linguistics and the
                 11th International Joint Conference on Natural Language Processing (Volume 1: Long Papers)",
    year = "2021",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/2021.acl-long.197",
    pages = "2528--2540",
}"""
_POOLING_TEXT = {"cls": "the last-layer [CLS] vector", "mean": "the mean of the last layer's token vectors",
                 "max": "the maximum over the last layer's token vectors"}


def model_card(folder: Path, base_model: str | None, config: dict[str, Any] | None,
               results: dict[str, Any] | None, command: str, st_card: bool, pooling: str = "cls",
               checkpoint: str | None = None) -> None:
    """README.md: the sentence-transformers card (or a plain one) with our training config, the STS results as
    model-index metadata, the evaluation protocol, which checkpoint it is and the paper's BibTeX. No local paths."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    path = folder / "README.md"
    card = ModelCard.load(path) if st_card and path.exists() else ModelCard(
        f"---\n---\n\n# SG-BERT sentence encoder (sgcl_jax)\n\nUse {_POOLING_TEXT[pooling]} of "
        "`AutoModel.from_pretrained(folder)(**tokens).last_hidden_state` (padding masked out).\n")
    data: ModelCardData = card.data
    data.library_name = data.library_name or "transformers"
    data.pipeline_tag = data.pipeline_tag or "feature-extraction"
    data.license = data.license or "apache-2.0"
    if base_model:
        data.base_model = base_model
    data.model_name = data.model_name or "SG-BERT (sgcl_jax)"
    evals = []
    for task, r in ((results or {}).get("tasks") or {}).items():
        if r.get("metric") in ("spearman", "pearson"):
            evals.append(EvalResult(task_type="sentence-similarity", dataset_type=f"sgcl_jax/{Path(task).name}",
                                    dataset_name=Path(task).name, dataset_split="test",
                                    metric_type=f"{r['metric']}_cosine", metric_value=round(r["score"] / 100, 4)))
    if evals:
        data.eval_results = evals
    section = ["", "## SG-BERT training (sgcl_jax)", "",
               "Self-Guided Contrastive Learning (Kim, Yoo and Lee, ACL 2021), trained with "
               f"[sgcl_jax](https://pypi.org/project/sgcl_jax/) {__version__}. The sentence vector is "
               f"{_POOLING_TEXT[pooling]} (the Pooling module's mode is {pooling})."]
    if st_card:
        section += ["", "The usage example's similarity matrix above was computed by this exported model itself, "
                    "when sentence-transformers wrote the card at export."]
    if checkpoint:
        section += ["", f"Exported checkpoint: {checkpoint}."]
        if checkpoint.startswith("step 0"):
            section += ["", "**These are the untrained base model's weights**: no trained checkpoint scored higher "
                        "on STS-B dev than the model training started from, so the run's best is its starting point."]
    if config:
        data_cfg = config.get("data", {})
        files = [Path(f).name for f in data_cfg.get("files") or []]
        section += ["", f"- base model: `{base_model or Path(config['model']['name']).name}`",
                    f"- objective: `{config.get('objective')}`", f"- guide: `{config.get('guide')}`",
                    f"- optimizer: `{config.get('optim')}`",
                    f"- training text: `{data_cfg.get('source')}` {files or ''} (unlabeled), batch "
                    f"{data_cfg.get('batch_size')}, max length {config['model']['max_length']}",
                    f"- seed: {config.get('seed')}"]
    if results and results.get("tasks"):
        section += ["", "| task | score | metric | pairs |", "|---|---|---|---|"]
        section += [f"| {Path(t).name} | {r['score']:.2f} | {r.get('metric', '')} | {r['n']} |"
                    for t, r in results["tasks"].items()]
        protocol = {k: v for k, v in results["protocol"].items() if k != "model"}
        section += ["", "Protocol: " + ", ".join(f"{k}={v}" for k, v in protocol.items())]
    section += ["", "Made with:", "", f"    {command}", ""]
    text = card.text.rstrip()
    cite = f"```bibtex\n{BIBTEX}\n```\n"
    if "### BibTeX\n" in text:  # sentence-transformers' card leaves this section empty for us to fill
        text = text.replace("### BibTeX\n", f"### BibTeX\n\n#### SG-BERT\n\n{cite}", 1)
    else:
        section += ["## Citation", "", cite]
    card.text = text + "\n" + "\n".join(section)
    card.save(path)


def verify(folder: Path, encoder: SentenceEncoder, sentence_transformers: bool) -> dict[str, float]:
    """Loads the folder in PyTorch and checks its sentence vectors against the JAX encoder's (raises above 1e-4)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    want = encoder.encode(CHECK_SENTENCES, show_progress_bar=False)
    model, info = AutoModel.from_pretrained(str(folder), output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise ExportError(f"{folder}: transformers reports {bad}")
    tok = AutoTokenizer.from_pretrained(str(folder))
    enc = tok(CHECK_SENTENCES, padding=True, truncation=True, return_tensors="pt")  # the saved max length
    with torch.no_grad():
        hidden = model.eval()(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None].to(hidden.dtype)
    if encoder.pooling == "cls":
        got = hidden[:, 0].numpy()
    elif encoder.pooling == "mean":
        got = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()
    else:
        got = hidden.masked_fill(mask == 0, float("-inf")).max(1).values.numpy()
    diffs = {"transformers": float(np.abs(got - want).max())}
    if sentence_transformers:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        diffs["sentence_transformers"] = float(np.abs(st.encode(CHECK_SENTENCES) - want).max())
    worst = max(diffs.values())
    if not worst <= TOLERANCE:
        raise ExportError(f"{folder}: exported model differs from the JAX encoder (max abs diff {diffs} > "
                          f"{TOLERANCE}); export refused")
    return diffs


def export(encoder: SentenceEncoder, pretrained: Pretrained, out: str | Path, fmt: str = "both",
           overwrite: bool = False, config: dict[str, Any] | None = None, results: dict[str, Any] | None = None,
           command: str = "", source: Path | None = None, base_model: str | None = None,
           checkpoint: str | None = None) -> dict[str, float]:
    """Writes, verifies and atomically places the export; returns the measured max abs differences."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose from {FORMATS}")
    if encoder.layer not in ("last", -1):
        raise ExportError("only last-layer encoders export (the layer SG-BERT trains)")
    out = Path(out)
    check_target(out, source, overwrite)
    with staged_dir(out) as tmp:
        _write_hf(tmp, pretrained, encoder.params, encoder.tokenizer, encoder.max_length)
        st = fmt in ("sentence-transformers", "both")
        if st:
            _write_sentence_transformers(tmp, encoder, base_model, config)
        model_card(tmp, base_model, config, results, command, st, encoder.pooling, checkpoint)
        diffs = verify(tmp, encoder, st)
        (tmp / MARKER).write_text(json.dumps({"sgcl_jax": __version__, "format": fmt, "command": command,
                                              "max_abs_diff": diffs}, indent=2))
    return diffs


@dataclasses.dataclass
class Source:
    """What an export is made from: the encoder, the model it came from, and (for a run) its config and scores."""

    encoder: SentenceEncoder
    pretrained: Pretrained
    base_model: str | None
    source: Path
    config: dict[str, Any] | None = None
    results: dict[str, Any] | None = None
    checkpoint: str | None = None


def load_source(checkpoint: str, which: str = "best", max_length: int | None = None) -> Source:
    """A training run (or one of its checkpoints), 'minilm' or a Hugging Face folder, ready to export."""
    src, _, _ = resolve_checkpoint(checkpoint)
    if is_run(src):
        run = load_run(checkpoint, which)
        results = run.scores()  # only scores of exactly these weights
        if results is None:
            log.warning("%s: results.json holds no score of %s; the card carries none", run.workdir,
                        run.meta.get("checkpoint"))
        return Source(run.encoder(max_length=max_length), run.guide, base_model_id(run.config.model.name),
                      Path(run.workdir), run.config.to_dict(), results, run.meta.get("checkpoint"))
    if src.is_dir() and not (src / "config.json").exists():
        raise FileNotFoundError(f"{src}: neither a training run folder (no checkpoints/) nor a model folder")
    pretrained = load_pretrained(checkpoint)
    encoder = SentenceEncoder(pretrained.config, pretrained.params, pretrained.tokenizer,
                              max_length=max_length or 128, source=checkpoint)
    return Source(encoder, pretrained, base_model_id(checkpoint), Path(pretrained.source))
