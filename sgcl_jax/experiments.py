"""The paper's experiments as one-command runs, each variant a set of config overrides of one base config.

    python -m sgcl_jax.experiments ablation --config configs/default.py --workdir runs/ablation --seeds 1,2
    python -m sgcl_jax.experiments domain --config configs/default.py --workdir runs/domain
    python -m sgcl_jax.experiments ablation ... --only SG-OPT,no-head --variant "tau-0.05:objective.tau=0.05"

ablation: Table 5 (SG-OPT against OPT2, OPT1 and SG objectives, tau 0.1 / 0.001, lambda 0 / 1, no projection
head). domain: Figure 4 (training on STS-B sentences against NLI sentences). Each variant trains in
<workdir>/<variant>/seed_<s> and resumes there; a finished seed is not trained again, so re-running the same
command only completes what is missing, then prints and saves the table (<workdir>/<experiment>.{json,md}).

The NLI text here is `../shared/data/nli/snli_sentences.txt` (25,741 SNLI dev/test sentences, a same-size
stand-in). For the paper's corpus put the SNLI + MultiNLI training sentences, one per line, in a text file
(`.gz` allowed) and pass `--nli-file that_file` (or set $SGCL_NLI_TEXT).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sgcl_jax import cli
from sgcl_jax.config import Config, ConfigError, load_config_file
from sgcl_jax.files import write_json
from sgcl_jax.interrupts import Stopped
from sgcl_jax.trainer import train_and_evaluate

log = logging.getLogger(__name__)
DEFAULT_NLI = Path(__file__).resolve().parents[2] / "shared" / "data" / "nli" / "snli_sentences.txt"


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named set of dotted config overrides; `paper_delta`: the paper's BERT-base change of the 7-task average."""

    name: str
    overrides: dict[str, Any]
    paper_delta: float | None = None
    note: str = ""


# Table 5 of the paper, as overrides of the base config. The paper's BERT-base deltas could not be retrieved in
# the workplace this was built in (no network); they are left None rather than quoted from memory.
ABLATION = (
    Variant("SG-OPT", {}, note="reference: tau 0.01, lambda 0.1, projection head"),
    Variant("OPT2", {"objective.name": "opt2"}, note="c_i anchors only; h_i in the denominator"),
    Variant("OPT1", {"objective.name": "opt1"}, note="c_i anchors only; other c_j as negatives"),
    Variant("SG", {"objective.name": "sg"}, note="NT-Xent over {c, h}, one sampled view"),
    Variant("tau-0.1", {"objective.tau": 0.1}),
    Variant("tau-0.001", {"objective.tau": 0.001}),
    Variant("lambda-0", {"objective.lam": 0.0}, note="no regulariser"),
    Variant("lambda-1", {"objective.lam": 1.0}),
    Variant("no-head", {"model.head": False}, note="objectives on c and h directly"),
)


def domain_variants(nli_file: str | os.PathLike) -> tuple[Variant, ...]:
    """Figure 4: the same training on STS-B's sentences (in-domain) and on NLI sentences (out of domain)."""
    return (Variant("STS-B", {}, note="the 17,256 STS-B sentences"),
            Variant("NLI", {"data.source": "text", "data.files": (str(nli_file),)},
                    note=f"text of {Path(nli_file).name}"))


def parse_variant(spec: str) -> Variant:
    """'name:key=value,key=value' -> Variant (values are Python literals, else strings)."""
    name, _, rest = spec.partition(":")
    if not name or not rest:
        raise ValueError(f"--variant {spec!r}: expected 'name:key=value[,key=value...]'")
    overrides = {}
    for item in re.split(r",(?=[\w.]+=)", rest):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--variant {spec!r}: {item!r} is not key=value")
        overrides[key.strip()] = _literal(value.strip())
    return Variant(name.strip(), overrides)


def _literal(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def slug(name: str) -> str:
    """A folder name for a variant."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "variant"


def variant_configs(base: Config, variants: Sequence[Variant], seeds: Sequence[int]) -> list[Config]:
    """Each variant's validated config; an unknown or invalid override is refused before anything runs."""
    out = []
    for v in variants:
        try:
            out.append(base.replace(**v.overrides, seeds=tuple(seeds)))
        except ConfigError as e:
            raise ConfigError(f"variant {v.name!r}: {e}") from None
    return out


def run_experiment(name: str, base: Config, variants: Sequence[Variant], workdir: str | Path,
                   seeds: Sequence[int]) -> dict[str, Any]:
    """Trains (or resumes, or skips when finished) every variant's seeds, then builds, prints and saves the table."""
    workdir = Path(workdir)
    configs = variant_configs(base, variants, seeds)
    names = [v.name for v in variants]
    if len(set(map(slug, names))) != len(names):
        raise ValueError(f"variant names must differ: {names}")
    summaries = {}
    for v, cfg in zip(variants, configs, strict=True):
        log.info("experiment %s: variant %s (%s)", name, v.name, v.overrides or "the base config")
        summaries[v.name] = train_and_evaluate(cfg, workdir / slug(v.name))
    table = build_table(name, variants, summaries, seeds)
    write_json(table, workdir / f"{name}.json")
    text = format_table(table)
    (workdir / f"{name}.md").write_text(text + "\n")
    print(text)
    return table


def build_table(name: str, variants: Sequence[Variant], summaries: dict[str, dict[str, Any]],
                seeds: Sequence[int]) -> dict[str, Any]:
    """Rows in the paper's layout: the [CLS] average over the tasks present (mean +- std over seeds) and its
    change against the first (reference) variant, with per-task scores and the per-seed averages kept."""
    rows = []
    reference = None
    for v in variants:
        s = summaries[v.name]
        avg = s["average"] or {}
        per_seed = [float(np.mean([t["per_seed"][str(seed)] for t in s["tasks"].values()])) for seed in seeds] \
            if s["tasks"] else []
        row = {"name": v.name, "overrides": v.overrides, "note": v.note, "average": avg.get("score"),
               "std": avg.get("std"), "average_tasks": avg.get("tasks", []), "complete": avg.get("complete"),
               "per_seed_average": per_seed, "tasks": {t: {"score": r["score"], "std": r.get("std")}
                                                       for t, r in s["tasks"].items()},
               "last_average": (s.get("last") or {}).get("average", {}).get("score"),
               "paper_delta": v.paper_delta}
        if reference is None:
            reference = row
        row["delta"] = None if row["average"] is None or reference["average"] is None else \
            row["average"] - reference["average"]
        rows.append(row)
    first = summaries[variants[0].name]
    return {"experiment": name, "seeds": list(seeds), "reference": variants[0].name, "rows": rows,
            "protocol": first["protocol"], "missing": first.get("missing", {})}


def format_table(table: dict[str, Any]) -> str:
    """A Markdown table: variant, per-task scores, average +- std, change vs the reference, the paper's change."""
    tasks = list(table["rows"][0]["tasks"])
    head = ["variant", *tasks, "avg", "delta", "paper delta (BERT-base)"]
    lines = [f"{table['experiment']}: [CLS] scores x100, mean +- std over seeds {table['seeds']}",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["rows"]:
        cells = [r["name"]] + [_pm(r["tasks"].get(t, {}).get("score"), r["tasks"].get(t, {}).get("std"))
                               for t in tasks]
        cells += [_pm(r["average"], r["std"]), "-" if r is table["rows"][0] else _signed(r["delta"]),
                  "n/a" if r["paper_delta"] is None else _signed(r["paper_delta"])]
        lines.append("| " + " | ".join(cells) + " |")
    first = table["rows"][0]
    covered = f"average over {', '.join(first['average_tasks'])}"
    if first.get("complete") is False:
        covered += f" (missing: {', '.join(table['missing'])})"
    lines.append(covered)
    return "\n".join(lines)


def _pm(score: float | None, std: float | None) -> str:
    if score is None:
        return "-"
    return f"{score:.2f}" if not std else f"{score:.2f} +- {std:.2f}"


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI."""
    ap = argparse.ArgumentParser(prog="python -m sgcl_jax.experiments", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=("ablation", "domain"), help="which experiment")
    ap.add_argument("--config", default="default", help="base config: a shipped name or a .py file "
                    "(default: %(default)s)")
    ap.add_argument("--workdir", required=True, help="each variant trains in <workdir>/<variant>/seed_<s>")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the config's seed)")
    ap.add_argument("--only", default=None, help="comma-separated variant names to run (the first named is the "
                    "reference of the table)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                    help="add a variant of your own, e.g. 'tau-0.05:objective.tau=0.05'")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the base config for every variant, e.g. train.num_steps=200")
    ap.add_argument("--nli-file", default=os.environ.get("SGCL_NLI_TEXT", str(DEFAULT_NLI)),
                    help="the NLI training text for 'domain' (default: $SGCL_NLI_TEXT, else %(default)s)")
    ap.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        base = load_config_file(args.config)
        base = base.replace(**{k: _literal(v) for k, _, v in (s.partition("=") for s in args.set)})
        variants = list(ABLATION if args.experiment == "ablation" else domain_variants(args.nli_file))
        variants += [parse_variant(v) for v in args.variant]
        if args.only:
            by_name = {v.name: v for v in variants}
            wanted = [n.strip() for n in args.only.split(",") if n.strip()]
            unknown = [n for n in wanted if n not in by_name]
            if unknown:
                raise ValueError(f"--only: unknown variant(s) {unknown}; known: {', '.join(by_name)}")
            variants = [by_name[n] for n in wanted]
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [base.seed]
        run_experiment(args.experiment, base, variants, args.workdir, seeds)
    except Stopped as e:
        return cli.stopped(e)
    except (ValueError, OSError, FloatingPointError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

