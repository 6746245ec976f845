"""The study's tables as Markdown: each variant over its seeds with the paper's numbers, then the experiment's own
comparison (the ablation's sign table, the domain drops, the recipe's dev-only selection, the paper's transfer
rows). Reads the table `study.build_table` makes; computes nothing new."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _pm(s: dict[str, Any] | None) -> str:
    return "-" if not s else _cell(s.get("mean"), s.get("std"))


def _cell(score: float | None, std: float | None) -> str:
    return "-" if score is None else (f"{score:.2f}" if not std else f"{score:.2f} +- {std:.2f}")


def _signed(d: dict[str, Any] | float | None) -> str:
    if d is None:
        return "-"
    return f"{d['value']:+.2f}" if isinstance(d, dict) else f"{d:+.2f}"


def _minutes(seconds: Sequence[float | None]) -> str:
    known = [s for s in seconds if s is not None]
    return "-" if not known else f"{np.mean(known) / 60:.1f}"


def format_study(table: dict[str, Any]) -> str:
    """The experiment as Markdown: the variants table, then the experiment's own comparison (signs, drops, the
    recipe's selection, the paper's transfer rows)."""
    name, task_names, rows = table["experiment"], table["tasks"], table["rows"]
    ablation = name == "ablation"
    head = ["variant", "n", *task_names, "avg (best)", "avg (last)", "delta", "dev", "best steps", "min/seed"]
    if ablation:
        head[len(task_names) + 5:len(task_names) + 5] = ["paper avg", "paper delta"]
    lines = [f"{name}: scores x100, best-on-dev checkpoint, mean +- std over each variant's seeds (n); "
             f"delta against {table['reference']}; dev = STS-B dev Spearman (selects the checkpoint)",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], str(len(r["seeds"])), *(_cell(r["tasks"][t]["score"], r["tasks"][t]["std"])
                                                      for t in task_names),
                 _pm(r["best"]), _pm(r["last"]), "-" if r is rows[0] else _signed(r["delta"])]
        if ablation:
            p = r.get("paper")
            cells += ["n/a" if p is None else f"{p['avg7']:.2f}", "n/a" if p is None else _signed(p["delta"])]
        cells += [_pm(r["dev"]), ",".join(str(s) for s in r["best_steps"]), _minutes(r["wall_seconds"])]
        lines.append("| " + " | ".join(cells) + " |")
    for pooling, u in table.get("untrained", {}).items():
        cells = [f"untrained ({pooling})", "-", *(f"{u['tasks'][t]:.2f}" for t in task_names), f"{u['average']:.2f}",
                 "-", "-", "-" if u["dev"] is None else f"{u['dev']:.2f}", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"average over {', '.join(task_names)}" +
                 (f" (missing: {', '.join(table['missing'])})" if table.get("missing") else ""))
    if ablation:
        lines += ["", *_sign_table(rows)]
    if "drop" in table:
        lines += ["", *_drop_lines(table["drop"])]
    if "selection" in table:
        lines += ["", *_selection_lines(table["selection"])]
    if table.get("paper_rows"):
        lines += ["", *_paper_rows(table["paper_rows"], task_names)]
    if table.get("paper_source"):
        lines += ["", f"paper: {table['paper_source']}"]
    return "\n".join(lines)


def _sign_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["Sign table: the paper's change against SG-OPT (BERT-base, 8 seeds) and ours (2 SE: two standard errors "
           "of our difference of means)", "",
           "| variant | paper delta | our delta | 2 SE | same direction | ours outside 2 SE |",
           "|---|---|---|---|---|---|"]
    for r in rows[1:]:
        p, d = r.get("paper"), r["delta"]
        same = "-" if p is None or d is None else ("yes" if (p["delta"] > 0) == (d["value"] > 0) else "no")
        outside = "-" if d is None or d["outside_2se"] is None else ("yes" if d["outside_2se"] else "no")
        two_se = "-" if d is None else f"{2 * d['se']:.2f}"
        out.append(f"| {r['name']} | {'n/a' if p is None else _signed(p['delta'])} | {_signed(d)} | {two_se} | "
                   f"{same} | {outside} |")
    return out


def _drop_lines(drop: dict[str, Any]) -> list[str]:
    p = drop.get("paper") or {}
    out = []
    for key, label, pkey in (("STSB", "STS-B test", "STSB"), ("average", "task average", "avg7")):
        d = drop[key]
        if d is not None:
            out.append(f"drop from STS-B to NLI sentences, {label}: ours {d['value']:+.2f} (2 SE {2 * d['se']:.2f}); "
                       f"the paper's (BERT-base) {p.get(pkey, 'n/a')}")
    return out


def _selection_lines(sel: dict[str, Any]) -> list[str]:
    if sel.get("chosen") is None:
        return ["selection: no candidate has a dev score"]
    out = [f"selected by {sel['by']}: {sel['chosen']}"]
    if "beats" in sel:
        verdict = "beats" if sel["beats"] else "does not beat"
        out.append(f"its test average {_pm(sel['test'])} {verdict} the untrained base model's best pooling "
                   f"({sel['bar_pooling']}: {sel['bar']:.2f}) by {sel['margin']:+.2f}")
    return out


def _paper_rows(rows: dict[str, dict[str, float]], task_names: Sequence[str]) -> list[str]:
    out = ["The paper's Table 4 (BERT-base, SentEval's MLP, 8 seeds):", "",
           "| row | " + " | ".join(task_names) + " | avg |", "|" + "---|" * (len(task_names) + 2)]
    for name, r in rows.items():
        out.append(f"| {name} | " + " | ".join(f"{r.get(t, float('nan')):.2f}" for t in task_names)
                   + f" | {r['avg']:.2f} |")
    return out
