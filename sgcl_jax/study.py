"""The paper's experiments and our recipe study, each a list of variants (config overrides of one base config)
trained over seeds, summarised as mean +- std with the paper's numbers beside ours.

ablation: Table 5 (SG-OPT against OPT2, OPT1 and SG, tau 0.1 / 0.001, lambda 0 / 1, no projection head), with a
sign table: the direction of the paper's change against ours, and whether ours is outside two standard errors.
domain: Figure 4 (training on STS-B's sentences against NLI sentences), with the paper's drops.
recipe: candidates toward an encoder better than the base model's best pooling, selected on STS-B dev only.
transfer: Table 4 (the paper's Appendix A.3 variant on SentEval's seven tasks) beside the untrained poolings.

Each variant trains in <workdir>/<variant>/seed_<s> and resumes there; a finished seed is not trained again, so the
same command again only completes what is missing, then prints and saves <workdir>/<experiment>.{json,md}.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sgcl_jax import evaluators, paper, scoring, tasks
from sgcl_jax.config import Config, ConfigError
from sgcl_jax.encoder import SentenceEncoder
from sgcl_jax.files import read_json, write_json, write_text
from sgcl_jax.model import load_guide
from sgcl_jax.tables import format_study
from sgcl_jax.trainer import finished_results, summarise_seeds, train_and_evaluate

log = logging.getLogger(__name__)
EXPERIMENTS = ("ablation", "domain", "recipe", "transfer")
NLI_ENV = "SGCL_NLI_TEXT"
_SHARED_NLI = Path("shared") / "data" / "nli" / "snli_sentences.txt"


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named set of dotted config overrides, with a note on what it changes."""

    name: str
    overrides: dict[str, Any]
    note: str = ""


# Table 5 of the paper, as overrides of the base config (its rows are matched to the paper's by these overrides).
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
_MEAN = {"model.pooling": "mean", "eval.pooling": "mean"}
# Toward an encoder that beats the base model's own sentence vector; chosen by the mean STS-B dev score only.
RECIPE = (
    Variant("SG-OPT", {}, note="the paper's recipe: trained and scored [CLS]"),
    Variant("SG", {"objective.name": "sg"}, note="the SG objective"),
    Variant("mean", _MEAN, note="BERT_T's mean pooling trained and scored (the base model's own sentence vector)"),
    Variant("mean-skip2", {**_MEAN, "guide.layer_min": 2}, note="... and guide layers 0-1 left out of the views"),
    Variant("mean-max", {**_MEAN, "guide.pooling": "max"}, note="... and max pooling of the views"),
    Variant("mean-lr2e-5", {**_MEAN, "optim.lr": 2e-5}, note="... at a smaller learning rate"),
    Variant("mean-lambda1", {**_MEAN, "objective.lam": 1.0}, note="... held closer to the guide"),
)
# What the untrained base model scores, measured in the same study: the bar a recipe must clear.
UNTRAINED_POOLINGS = ("cls", "mean")


def nli_file() -> Path:
    """The NLI training text: $SGCL_NLI_TEXT, else the shared SNLI sentences beside the checkout or the cwd."""
    if os.environ.get(NLI_ENV):
        return Path(os.environ[NLI_ENV]).expanduser()
    for root in (Path(__file__).resolve().parents[2], Path("..")):
        if (root / _SHARED_NLI).is_file():
            return root / _SHARED_NLI
    raise FileNotFoundError(f"no NLI training text: set ${NLI_ENV} (one sentence a line, .gz allowed) or pass "
                            "--nli_file")


def variants(experiment: str, nli: str | os.PathLike | None = None) -> tuple[Variant, ...]:
    """The variants of one experiment; the first is the reference its changes are measured against."""
    if experiment == "ablation":
        return ABLATION
    if experiment == "recipe":
        return RECIPE
    text = {"data.source": "text", "data.files": (str(nli or nli_file()),)}
    if experiment == "domain":
        return (Variant("SG-OPT", {}, note="trained on the 17,256 STS-B sentences (the reference)"),
                Variant("NLI", text, note=f"trained on {Path(text['data.files'][0]).name}"))
    if experiment == "transfer":
        # The paper's Appendix A.3: NLI text, the lowest guide layers out of the views (how many is not stated),
        # mean pooling of the views; its sentence vector is still the trained [CLS].
        senteval = {**text, "guide.pooling": "mean", "eval.final_tasks": tasks.TRANSFER_TASKS,
                    "eval.classifier": "logreg", "eval.kfold": 10}
        return (Variant("A.3-skip2", {**senteval, "guide.layer_min": 2}, note="guide layers 2..L"),
                Variant("A.3-skip4", {**senteval, "guide.layer_min": 4}, note="guide layers 4..L"))
    raise ValueError(f"unknown experiment {experiment!r}: choose from {', '.join(EXPERIMENTS)}")


def parse_variant(spec: str) -> Variant:
    """'name:key=value,key=value' -> Variant (values are Python literals, else strings)."""
    import ast

    name, _, rest = spec.partition(":")
    if not name or not rest:
        raise ValueError(f"--variant {spec!r}: expected 'name:key=value[,key=value...]'")
    overrides = {}
    for item in re.split(r",(?=[\w.]+=)", rest):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--variant {spec!r}: {item!r} is not key=value")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()
    return Variant(name.strip(), overrides)


def select(found: Sequence[Variant], only: Sequence[str]) -> list[Variant]:
    """The named variants in the order given; an unknown name is refused."""
    by_name = {v.name: v for v in found}
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise ValueError(f"--only: unknown variant(s) {unknown}; known: {', '.join(by_name)}")
    return [by_name[n] for n in only]


def slug(name: str) -> str:
    """A folder name for a variant."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "variant"


def variant_configs(base: Config, found: Sequence[Variant], seeds: Sequence[int]) -> list[Config]:
    """Each variant's validated config; an unknown or invalid override is refused before anything runs."""
    out = []
    for v in found:
        try:
            out.append(base.replace(**v.overrides, seeds=tuple(seeds)))
        except ConfigError as e:
            raise ConfigError(f"variant {v.name!r}: {e}") from None
    return out


def run_experiment(name: str, base: Config, found: Sequence[Variant], workdir: str | Path,
                   seeds: Sequence[int], train: bool | Sequence[str] = True) -> dict[str, Any]:
    """Trains (or resumes, or skips when finished) the variants' seeds, then builds, prints and saves the table.
    `train`: True trains every variant, a list of names only those (in its order), False none. The table always
    holds every variant with a finished seed, so training a few never drops the others from <experiment>.{json,md}."""
    workdir = Path(workdir)
    configs = dict(zip([v.name for v in found], variant_configs(base, found, seeds), strict=True))
    names = list(configs)
    if len(names) != len(found) or len(set(map(slug, names))) != len(names):
        raise ValueError(f"variant names must differ: {[v.name for v in found]}")
    to_train = found if train is True else select(found, train) if train else []
    for v in to_train:
        log.info("experiment %s: variant %s (%s)", name, v.name, v.overrides or "the base config")
        train_and_evaluate(configs[v.name], workdir / slug(v.name))
    # The table holds the asked seeds of every variant, trained now or before (a variant folder's own summary
    # covers all its finished seeds, which may be more).
    summaries = {}
    for v in found:
        cfg, folder = configs[v.name], workdir / slug(v.name)
        done = {s: r for s in seeds if (r := finished_results(cfg.replace(seed=s, seeds=()), folder / f"seed_{s}"))}
        if done:
            summaries[v.name] = summarise_seeds(done)
    found = [v for v in found if v.name in summaries]
    if not found:
        raise ValueError(f"{workdir}: no finished seed of any variant to report")
    baselines = {}
    if name in ("recipe", "transfer"):
        baselines = {p: untrained(configs[names[0]], p, workdir) for p in UNTRAINED_POOLINGS}
    table = build_table(name, found, summaries, baselines)
    write_json(table, workdir / f"{name}.json")
    text = format_study(table)
    write_text(text + "\n", workdir / f"{name}.md")
    print(text)
    return table


def untrained_file(pooling: str, task_names: Sequence[str]) -> str:
    """The cache file of one pooling and task set: the recipe (STS) and transfer studies share a workdir, and a
    file per pooling alone made each measure again and overwrite the other's."""
    if tuple(task_names) == tasks.STS_TASKS:
        return f"untrained_{pooling}.json"  # the name studies before the transfer study already hold
    group = next((a for a, ts in tasks.ALIASES.items() if tuple(task_names) == ts), None)
    tag = group or hashlib.sha256(",".join(task_names).encode()).hexdigest()[:8]
    return f"untrained_{pooling}_{tag}.json"


def untrained(cfg: Config, pooling: str, workdir: Path) -> dict[str, Any]:
    """The untrained base model under one pooling, on the config's final tasks and STS-B dev (cached in workdir)."""
    task_names = tasks.expand(cfg.eval.final_tasks)
    path = workdir / untrained_file(pooling, task_names)
    wanted = {"model": cfg.model.name, "pooling": pooling, "tasks": list(task_names),
              "settings": dataclasses.asdict(scoring.Settings.from_config(cfg))}
    wanted = json.loads(json.dumps(wanted))  # as the cache file holds it (tuples as lists)
    if path.is_file():
        cached = read_json(path)
        if {k: cached.get(k) for k in wanted} == wanted:
            return cached
    guide = load_guide(cfg.model)
    enc = SentenceEncoder(guide.config, guide.params, guide.tokenizer, cfg.model.max_length, cfg.eval.dtype, pooling,
                          source=f"{cfg.model.name} (untrained)")
    result = evaluators.evaluate(enc, evaluators.from_config(cfg))
    dev = evaluators.StsbDev.from_config(cfg)
    dev_score = None if dev is None else dev.score(enc)
    out = {**wanted, "dev": dev_score, "tasks_scores": {t: r["score"] for t, r in result["tasks"].items()},
           "protocol": result["protocol"]}
    write_json(out, path)
    return out


# ------------------------------------------------------------------------------------------ the table


def _spread(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "per_seed": []}
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            "n": len(vals), "per_seed": vals}


def _per_seed_average(results: dict[str, Any], seeds: Sequence[int], task_names: Sequence[str]) -> list[float]:
    return [float(np.mean([results["tasks"][t]["per_seed"][str(s)] for t in task_names])) for s in seeds]


def build_table(name: str, found: Sequence[Variant], summaries: dict[str, dict[str, Any]],
                baselines: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Rows in the paper's layout, each over seeds: per-task scores, the task average (best-on-dev and last
    checkpoint), its change against the first variant with the standard error of that change, the dev score,
    best steps and wall time; with the paper's numbers where the paper has the row."""
    first = summaries[found[0].name]
    task_names = [t for t in first["tasks"] if all(t in summaries[v.name]["tasks"] for v in found)]
    rows = []
    for v in found:
        s = summaries[v.name]
        seeds = _seeds(s)
        training = [s["per_seed"][str(seed)] for seed in seeds]
        row = {"name": v.name, "overrides": v.overrides, "note": v.note, "seeds": seeds,
               "tasks": {t: {"score": s["tasks"][t]["score"], "std": s["tasks"][t].get("std")} for t in task_names},
               "best": _spread(_per_seed_average(s, seeds, task_names)),
               "last": _spread(_per_seed_average(s["last"], seeds, task_names)) if "last" in s else None,
               "dev": _spread([t.get("best_score") for t in training]),
               "best_steps": [t.get("best_step") for t in training],
               "wall_seconds": [t.get("wall_seconds") for t in training]}
        if name == "ablation":
            row["paper"] = paper.ablation(v.overrides)
        rows.append(row)
    ref = rows[0]
    for row in rows:
        row["delta"] = _delta(row["best"], ref["best"])
        row["last_delta"] = _delta(row["last"], ref["last"]) if row["last"] and ref["last"] else None
    seeds = sorted({seed for r in rows for seed in r["seeds"]})
    table = {"experiment": name, "seeds": seeds, "reference": ref["name"], "tasks": task_names, "rows": rows,
             "protocol": first["protocol"], "missing": first.get("missing", {}), "paper_source": paper.source()}
    if baselines:
        table["untrained"] = {
            p: {"dev": b["dev"], "average": float(np.mean([b["tasks_scores"][t] for t in task_names])),
                "tasks": {t: b["tasks_scores"][t] for t in task_names}} for p, b in baselines.items()}
    if name == "recipe":
        table["selection"] = _selection(table)
    if name == "domain" and len(rows) > 1:
        table["drop"] = {"STSB": _delta(_task_spread(summaries[rows[0]["name"]], "STSB"),
                                        _task_spread(summaries[rows[1]["name"]], "STSB")),
                         "average": _delta(rows[0]["best"], rows[1]["best"]), "paper": paper.domain_drop()}
    if name == "transfer":
        table["paper_rows"] = paper.transfer_rows("bert-base")
    return table


def _seeds(summary: dict[str, Any]) -> list[int]:
    """The seeds a variant's summary covers."""
    return [int(s) for s in summary["per_seed"]]


def _task_spread(summary: dict[str, Any], task: str) -> dict[str, Any]:
    if task not in summary["tasks"]:
        return _spread([])
    return _spread([summary["tasks"][task]["per_seed"][str(s)] for s in _seeds(summary)])


def _delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """a - b with the standard error of a difference of two means (independent seeds) and the 2-SE verdict."""
    if a["mean"] is None or b["mean"] is None:
        return None
    value = a["mean"] - b["mean"]
    se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
    return {"value": value, "se": se, "outside_2se": bool(abs(value) > 2 * se) if se > 0 else None}


def _selection(table: dict[str, Any]) -> dict[str, Any]:
    """The candidate with the highest mean STS-B dev score, and whether its test average beats the base model's
    best pooling (the untrained pooling whose test average is highest; reported, never used to choose)."""
    scored = [r for r in table["rows"] if r["dev"]["mean"] is not None]
    chosen = max(scored, key=lambda r: r["dev"]["mean"]) if scored else None
    untrained_rows = table.get("untrained", {})
    bar_pooling = max(untrained_rows, key=lambda p: untrained_rows[p]["average"]) if untrained_rows else None
    bar = untrained_rows[bar_pooling]["average"] if bar_pooling else None
    out = {"by": "mean STS-B dev score over seeds", "chosen": chosen and chosen["name"],
           "bar": bar, "bar_pooling": bar_pooling}
    if chosen is not None and bar is not None:
        out["test"] = chosen["best"]
        out["beats"] = chosen["best"]["mean"] > bar
        out["margin"] = chosen["best"]["mean"] - bar
    return out
