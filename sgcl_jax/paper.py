"""The paper's own numbers (Kim, Yoo and Lee 2021), read from its result tables as printed, to set beside ours.

The tables live in a JSON file (`shared/paper/results.json` next to a checkout, or $SGCL_PAPER_RESULTS); they are
read, never retyped. Without the file the paper's columns print as "n/a": ours do not depend on it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
ENV = "SGCL_PAPER_RESULTS"
# Next to a checkout (../shared, as CI and the tests see it) or under the working directory's parent.
_CANDIDATES = (Path(__file__).resolve().parents[2] / "shared" / "paper" / "results.json",
               Path("..") / "shared" / "paper" / "results.json")


def results_path() -> Path | None:
    """The paper's results file: $SGCL_PAPER_RESULTS, else the shared folder beside the checkout, else None."""
    if os.environ.get(ENV):
        path = Path(os.environ[ENV]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"${ENV}={path}: no such file")
        return path
    return next((p for p in _CANDIDATES if p.is_file()), None)


@functools.cache
def _load(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        log.warning("the paper's result tables were not found (set $%s): its columns print as n/a", ENV)
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: the paper's result tables cannot be read ({e})") from None


def tables() -> dict[str, Any] | None:
    """Every table of the paper's results file, or None when the file is absent."""
    return _load(results_path())


def source() -> str | None:
    """The file's citation line (which paper, which version)."""
    t = tables()
    path = results_path()
    # The file's place relative to the shared folder: a report travels, this machine's paths do not.
    return None if t is None else f"{t.get('source', 'the paper')} ({Path(*path.parts[-3:])})"


def ablation(overrides: dict[str, Any]) -> dict[str, Any] | None:
    """Table 5's row whose config overrides are exactly these: {"variant", "avg7", "delta"}; None if none."""
    t = tables()
    if t is None:
        return None
    for row in t["table5_ablation_bert_base"]["rows"]:
        if row.get("overrides", {}) == dict(overrides):
            return {"variant": row["variant"], "avg7": row["avg7"], "delta": row["delta"]}
    return None


def _mean(cell: Any) -> float:
    return float(cell["mean"] if isinstance(cell, dict) else cell)


def sts_row(backbone: str, row: str) -> dict[str, float] | None:
    """Table 1's row (e.g. "bert-base", "sg-opt (cls)") as {task: mean score, "avg": ...}; None if absent."""
    t = tables()
    found = None if t is None else t["table1_sts_spearman"]["rows"].get(backbone, {}).get(row)
    return None if found is None else {k: _mean(v) for k, v in found.items()}


def domain_drop() -> dict[str, float] | None:
    """Figure 4: SG-OPT's drop when trained on NLI sentences instead of STS-B's, {"STSB", "avg7"}."""
    t = tables()
    return None if t is None else {k: float(v) for k, v in t["figure4_domain_shift"]["sg-opt"].items()}


def transfer_rows(backbone: str = "bert-base") -> dict[str, dict[str, float]]:
    """Table 4's rows of one backbone, {row name: {task: accuracy, "avg": ...}}; empty without the file."""
    t = tables()
    if t is None:
        return {}
    return {name: {k: float(v) for k, v in row.items()} for name, row in t["table4_senteval_accuracy"]["rows"].items()
            if name.startswith(backbone + " ")}
