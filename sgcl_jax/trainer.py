"""`train_and_evaluate(config, workdir)`: the training loop, dev evaluation, early stopping, checkpoints, results."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from sgcl_jax import data, evaluate, sharding, sts
from sgcl_jax.bert import BertConfig
from sgcl_jax.checkpointing import Checkpoints, restore_params
from sgcl_jax.encoder import Encoder
from sgcl_jax.files import write_json
from sgcl_jax.losses import OBJECTIVES
from sgcl_jax.model import DTYPES, ModelSpec, trained_bert
from sgcl_jax.pooling import POOLINGS
from sgcl_jax.pretrained import Pretrained, load_pretrained, random_pretrained
from sgcl_jax.train_step import ObjectiveConfig, OptimConfig, create_train_state, jit_train_step

log = logging.getLogger(__name__)
Config = ml_collections.ConfigDict


# ------------------------------------------------------------------------------------------ set-up


def validate(cfg: Config) -> None:
    """Checks values that a type check cannot, before any work starts."""
    checks = [
        (cfg.objective.name in OBJECTIVES, f"objective.name={cfg.objective.name!r}: choose from {OBJECTIVES}"),
        (cfg.guide.pooling in POOLINGS, f"guide.pooling={cfg.guide.pooling!r}: choose from {POOLINGS}"),
        (cfg.eval.pooling in POOLINGS, f"eval.pooling={cfg.eval.pooling!r}: choose from {POOLINGS}"),
        (cfg.model.dtype in DTYPES, f"model.dtype={cfg.model.dtype!r}: choose from {tuple(DTYPES)}"),
        (cfg.data.batch_size >= 2, f"data.batch_size={cfg.data.batch_size}: a contrastive batch needs >= 2"),
        (cfg.objective.tau > 0, f"objective.tau={cfg.objective.tau}: must be > 0"),
        (all(t in sts.TASKS for t in cfg.eval.final_tasks),
         f"eval.final_tasks={tuple(cfg.eval.final_tasks)}: choose from {sts.TASKS}"),
        (cfg.data.source in ("stsb", "text", "tfds"), f"data.source={cfg.data.source!r}: stsb, text or tfds"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"config: {message}")


def load_guide(model_cfg: Any) -> Pretrained:
    """The guide BERT_F (and tokenizer) from config.model: a name/path, or 'random' with model.random's shape."""
    if model_cfg["name"] == "random":
        random = dict(model_cfg["random"])
        return random_pretrained(BertConfig(**random), seed=model_cfg["init_seed"],
                                 tokenizer_from=model_cfg["tokenizer"])
    return load_pretrained(model_cfg["name"])


def model_spec(cfg: Any, bert: BertConfig) -> ModelSpec:
    """The static model description from a config (a ConfigDict or the JSON dict written to the workdir)."""
    m, g = cfg["model"], cfg["guide"]
    return ModelSpec(bert=bert, head_dim=m["head_dim"], dtype=m["dtype"], guide_pooling=g["pooling"],
                     layer_min=g["layer_min"], layer_max=g["layer_max"], guide_dropout=g["dropout"],
                     remat=m["remat"])


def _dev_set(cfg: Config) -> sts.Subset | None:
    try:
        return sts.read_stsb(sts.default_data_dir(cfg.data.data_dir or None) / sts.FOLDERS["STSB"], "dev")
    except sts.MissingData as e:
        log.warning("no STS-B dev set (%s): training runs without model selection or early stopping", e)
        return None


class _Records:
    """metrics.jsonl and TensorBoard events, written by process 0 only."""

    def __init__(self, workdir: Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        path = workdir / "metrics.jsonl"
        if enabled and path.exists():
            # Lines written after the checkpoint we resume from will be written again: drop them.
            kept = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x)["step"] <= resume_step]
            path.write_text("".join(f"{x}\n" for x in kept))
        self.file = open(path, "a") if enabled else None  # noqa: SIM115 - closed in close()
        self.tb = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(str(workdir / "tb"))
            except ImportError:  # pragma: no cover - optional
                log.info("tensorboardX not installed: no TensorBoard events")

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


# ------------------------------------------------------------------------------------------ one run


def train_one(cfg: Config, workdir: Path, seed: int) -> dict[str, Any]:
    """Trains one seed in `workdir` (resuming from its newest checkpoint) and returns the final results."""
    proc0 = jax.process_index() == 0
    workdir.mkdir(parents=True, exist_ok=True)
    if proc0:
        write_json({**cfg.to_dict(), "seed": seed}, workdir / "config.json")

    # -- model, data, mesh
    pre = load_guide(cfg.model)
    spec = model_spec(cfg, pre.config)
    spec.layers  # noqa: B018 - validates the layer range now, not inside jit
    sentences, shared = data.load_sentences(cfg.data)
    overlap = data.test_set_overlap(sentences, cfg.data.data_dir or None)
    if overlap:
        log.warning("training sentences overlap evaluation test sets %s: unsupervised SG-BERT trains on the "
                    "STS-B sentences on purpose (as the paper does); no labels are used", overlap)
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.model)
    sharding.check_batch(cfg.data.batch_size, mesh)
    batches = data.Batches(sentences, pre.tokenizer, cfg.data.batch_size, seed, cfg.model.max_length,
                           tuple(cfg.data.buckets), jax.process_index(), jax.process_count(), shared,
                           None if shared else sharding.max_over_processes)
    total = cfg.train.num_steps or cfg.data.num_epochs * batches.steps_per_epoch
    repl, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)

    # -- state: fresh, or the newest checkpoint
    guide = sharding.put_replicated(pre.params, mesh)
    tx, step_fn = jit_train_step(spec, ObjectiveConfig(**cfg.objective), OptimConfig(**cfg.optim), total,
                                 repl, repl, bsh)
    state = jax.jit(lambda g: create_train_state(spec, g, tx, seed), out_shardings=repl)(guide)
    ckpt = Checkpoints(workdir, keep=cfg.train.keep_checkpoints)
    fingerprint = pre.fingerprint()
    meta = {"step": 0, "seed": seed, "guide_fingerprint": fingerprint, "guide_source": pre.source,
            "best_score": None, "best_step": None, "prev_score": None, "counter": 0, "stopped": False,
            "dev_history": []}
    old = ckpt.read_meta()
    if old is not None:
        if old.get("guide_fingerprint") != fingerprint:
            raise ValueError(f"{workdir}: holds checkpoints of another model (guide fingerprint "
                             f"{old.get('guide_fingerprint')} from {old.get('guide_source')}; config.model gives "
                             f"{fingerprint} from {pre.source}). Use a new workdir.")
        state, meta = ckpt.restore(state)
        log.info("resumed from step %d (epoch %d, sentence %d)", meta["step"], *batches.position(meta["step"]))

    dev = _dev_set(cfg)
    records = _Records(workdir, proc0, int(meta["step"]))

    def encoder(trainable: Any, label: str = "") -> Encoder:
        """BERT_T (the guide's frozen embeddings + these trained layers) as an evaluation encoder on this host."""
        return Encoder(pre.config, sharding.to_host(trained_bert(trainable, guide)), pre.tokenizer,
                       cfg.model.max_length, cfg.model.dtype, cfg.eval.pooling, source=label)

    def dev_score() -> float:
        return evaluate.score_tasks(encoder(state.params), {"dev": [dev]}, batch_size=cfg.eval.batch_size,
                                    progress=False)["dev"]["score"]

    # -- loop
    step = int(meta["step"])
    bar = None
    if proc0 and cfg.train.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc=f"seed {seed}", unit="step", dynamic_ncols=True)
    t0, last_loss = time.perf_counter(), math.nan
    while step < total and not meta["stopped"]:
        batch = sharding.global_batch(batches(step), bsh)
        state, metrics = step_fn(state, guide, batch)
        step += 1
        if step % cfg.train.log_every == 0 or step == total:
            values = {k: float(v) for k, v in jax.device_get(metrics).items()}
            last_loss = values["loss"]
            if not math.isfinite(last_loss):
                raise FloatingPointError(f"step {step}: loss is {last_loss}; lower optim.lr or check the data")
            values["steps_per_s"] = cfg.train.log_every / max(time.perf_counter() - t0, 1e-9)
            t0 = time.perf_counter()
            records.write(step, values)
        if dev is not None and cfg.train.eval_every and (step % cfg.train.eval_every == 0 or step == total):
            score = dev_score()
            meta["dev_history"].append([step, score])
            # The released code's early stopping: count every drop below the previous evaluation, never reset.
            if meta["prev_score"] is not None and score < meta["prev_score"]:
                meta["counter"] += 1
            meta["prev_score"] = score
            if meta["best_score"] is None or score > meta["best_score"]:
                meta["best_score"], meta["best_step"] = score, step
                ckpt.save_best(step, state.params, {"step": step, "dev_score": score,
                                                    "guide_fingerprint": fingerprint})
            records.write(step, {"dev_stsb_spearman": score, "best_dev": meta["best_score"]})
            if meta["counter"] >= cfg.train.patience:
                meta["stopped"] = True
                log.info("early stop at step %d: dev fell %d times", step, meta["counter"])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}", dev=f"{(meta['prev_score'] or math.nan):.2f}")
        if step % cfg.train.checkpoint_every == 0 or step == total or meta["stopped"]:
            meta["step"] = step
            ckpt.save(step, state, meta)
    if bar is not None:
        bar.close()
    meta["step"] = step
    if ckpt.latest_step() != step:
        ckpt.save(step, state, meta)
    ckpt.close()
    records.close()

    # -- final evaluation of the best-on-dev checkpoint (and the last state) on every available task
    def score(params: Any, label: str) -> dict[str, Any]:
        return evaluate.evaluate(encoder(params, f"{workdir} ({label})"), tuple(cfg.eval.final_tasks),
                                 cfg.data.data_dir or None,
                                 batch_size=cfg.eval.batch_size, download=cfg.eval.download)

    # Restored laid out like the live params, so this works on every process of a multi-host run too.
    best = restore_params(workdir, state.params, "best")[0] if meta["best_step"] is not None else state.params
    results = score(best, "best")
    results["training"] = {k: meta[k] for k in ("seed", "best_step", "best_score", "stopped", "step")}
    results["training"]["total_steps"] = total
    if cfg.eval.also_last:
        # The released training.py scores the in-memory model after early stopping, not the best one.
        last = score(state.params, "last") if meta["best_step"] != step else results
        results["last"] = {"step": step, "tasks": last["tasks"], "average": last["average"]}
    if proc0:
        write_json(results, workdir / "results.json")
        print(evaluate.format_table(results, f"seed {seed}, best dev step {meta['best_step']}"))
        if "last" in results:
            print(f"last checkpoint (step {step}): average {results['last']['average']:.2f}")
    return results


def add_last(results: dict[str, Any], workdir: Path, cfg: Config) -> dict[str, Any]:
    """Adds the last checkpoint's scores to a finished seed that was trained without eval.also_last."""
    from sgcl_jax.encoder import load_encoder

    enc = load_encoder(str(workdir), which="latest", max_length=cfg.model.max_length, dtype=cfg.model.dtype,
                       pooling=cfg.eval.pooling)
    last = evaluate.evaluate(enc, tuple(cfg.eval.final_tasks), cfg.data.data_dir or None,
                             batch_size=cfg.eval.batch_size)
    results["last"] = {"step": results["training"]["step"], "tasks": last["tasks"], "average": last["average"]}
    if jax.process_index() == 0:
        write_json(results, workdir / "results.json")
    return results


# ------------------------------------------------------------------------------------------ seeds


def summarise_seeds(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Each task as mean +- std (sample std, ddof=1) over seeds; the per-seed scores kept."""
    def spread(results: dict[int, dict[str, Any]]) -> dict[str, Any]:
        first = next(iter(results.values()))
        tasks = {}
        for task in first["tasks"]:
            scores = [r["tasks"][task]["score"] for r in results.values() if task in r["tasks"]]
            tasks[task] = {"score": float(np.mean(scores)), "std": _std(scores), "n": first["tasks"][task]["n"],
                           "per_seed": {str(s): r["tasks"][task]["score"] for s, r in results.items()}}
        averages = [r["average"] for r in results.values()]
        return {"tasks": tasks, "average": float(np.mean(averages)), "average_std": _std(averages)}

    first = next(iter(per_seed.values()))
    summary = {"protocol": {**first["protocol"], "seeds": list(per_seed),
                            "spread": "mean +- std (ddof=1) over seeds", "checkpoint": "best on STS-B dev"},
               **spread(per_seed), "missing": first.get("missing", {}),
               "per_seed": {str(s): r.get("training", {}) for s, r in per_seed.items()}}
    if all("last" in r for r in per_seed.values()):
        summary["last"] = spread({s: r["last"] for s, r in per_seed.items()})
    return summary


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def train_and_evaluate(config: Config, workdir: str | Path) -> dict[str, Any]:
    """Runs every configured seed (config.seeds, else config.seed) and returns the results (mean +- std)."""
    validate(config)
    workdir = Path(workdir)
    seeds = list(config.seeds) or [config.seed]
    if not config.seeds:
        return train_one(config, workdir, config.seed)
    per_seed = {}
    for seed in seeds:
        sub = workdir / f"seed_{seed}"
        done = sub / "results.json"
        if done.exists():
            per_seed[seed] = json.loads(done.read_text())
            if config.eval.also_last and "last" not in per_seed[seed]:
                per_seed[seed] = add_last(per_seed[seed], sub, config)
        else:
            per_seed[seed] = train_one(config, sub, seed)
    summary = summarise_seeds(per_seed)
    if jax.process_index() == 0:
        write_json({**config.to_dict()}, workdir / "config.json")
        write_json(summary, workdir / "results.json")
        print(evaluate.format_table(summary, f"{len(seeds)} seeds, best-on-dev checkpoints: mean +- std"))
        if "last" in summary:
            print(evaluate.format_table({**summary, **summary["last"]}, "the same seeds, last checkpoints"))
    return summary
