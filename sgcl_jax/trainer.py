"""`train_and_evaluate(config, workdir)`: the training loop, dev selection, early stopping, checkpoints, results."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sgcl_jax import checkpointing, data, evaluators, runs, scoring, sharding
from sgcl_jax.bookkeeping import Records, RunState, StepTimer
from sgcl_jax.config import Config
from sgcl_jax.encoder import SentenceEncoder
from sgcl_jax.evaluators import Evaluator, StsbDev
from sgcl_jax.files import write_json
from sgcl_jax.identity import IDENTITY, check_identity, identity, identity_mismatch, read_identity
from sgcl_jax.interrupts import Interrupts, Stopped
from sgcl_jax.model import ModelSpec, load_guide, trained_bert
from sgcl_jax.train_step import create_train_state, jit_train_step, state_shardings

log = logging.getLogger(__name__)


class DivergenceError(FloatingPointError):
    """A step's loss or gradient norm was not finite; the message says which step and what to change."""


# ------------------------------------------------------------------------------------------ one run


def _check_finite(state: Any, ckpt: checkpointing.Checkpoints, cfg: Config, loss: float | None = None) -> None:
    """Stops the run at a non-finite step, after in-flight saves finish (all of them hold finite states)."""
    bad = int(state.first_nonfinite)
    if bad < 0 and (loss is None or math.isfinite(loss)):
        return
    ckpt.wait()
    latest = ckpt.latest_step()
    raise DivergenceError(
        f"step {bad if bad >= 0 else int(state.step)}: the loss or gradient norm is not finite"
        f"{f' (loss {loss})' if loss is not None else ''}; training stopped and nothing from that step on was "
        f"saved (newest good checkpoint: {f'step {latest}' if latest is not None else 'none'}). Lower "
        f"optim.lr (now {cfg.optim.lr}), raise objective.tau (now {cfg.objective.tau}) or check the data.")


def train_one(cfg: Config, workdir: Path) -> dict[str, Any]:
    """Trains `cfg.seed` in `workdir` (resuming from its newest checkpoint) and returns the final results."""
    proc0 = jax.process_index() == 0

    # -- everything that can fail on bad input happens before the run folder is touched
    guide_model = load_guide(cfg.model)
    spec = ModelSpec.from_config(cfg, guide_model.config)
    sentences, shared = data.load_sentences(cfg.data)
    overlap = data.test_set_overlap(sentences, cfg.data.data_dir or None)
    if overlap:
        log.info("training sentences overlap evaluation test sets %s: unsupervised SG-BERT trains on the STS-B "
                 "sentences on purpose (as the paper does); no labels are used", overlap)
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.model)
    sharding.check_batch(cfg.data.batch_size, mesh)
    sharding.log_mesh(mesh, cfg.data.batch_size)
    batches = data.Batches(sentences, guide_model.tokenizer, cfg.data.batch_size, cfg.seed, cfg.model.max_length,
                           cfg.data.buckets, jax.process_index(), jax.process_count(), shared,
                           None if shared else sharding.max_over_processes)
    total = cfg.train.num_steps or cfg.data.num_epochs * batches.steps_per_epoch
    run_identity = {**identity(cfg), "guide.fingerprint": guide_model.fingerprint(),
                    "data.fingerprint": data.fingerprint(sentences) if shared else "per-process"}
    setup = Setup(cfg, workdir, guide_model, spec, batches, total, run_identity, StsbDev.from_config(cfg),
                  evaluators.from_config(cfg, workdir), mesh)

    resuming = _check_resume(workdir, run_identity)  # before the folder changes in any way, lock included
    with runs.RunLock(workdir) if proc0 else contextlib.nullcontext(), Interrupts() as interrupts:
        trainer = Trainer(setup, interrupts, resuming)
        with contextlib.closing(trainer):
            step = trainer.fit()
        return trainer.results(step)


def _check_resume(workdir: Path, run_identity: dict[str, Any]) -> bool:
    """Whether the folder holds this run's checkpoints to resume from; refuses another run's folder, whether or not
    one of its checkpoints finished (identity.json is written before anything else of a run)."""
    # One answer for all processes, taken before any of them writes: the first to create checkpoints/ would
    # otherwise make a slower one take the resume path alone, and Orbax's collective calls would not match.
    has_checkpoints = runs.is_run(workdir)
    has_run = sharding.max_over_processes(int(has_checkpoints or (workdir / checkpointing.BEST).is_dir()))
    meta = checkpointing.Checkpoints(workdir, writable=False).read_meta() if has_checkpoints else None
    saved = read_identity(workdir) or (meta or {}).get("identity")
    if saved is not None:
        check_identity(workdir, saved, run_identity)
    elif has_run:
        raise runs.RunError(f"{workdir}: holds checkpoints of a run whose identity cannot be read (no "
                            f"{IDENTITY}, no readable checkpoint metadata); use a new --workdir")
    return bool(sharding.max_over_processes(int(meta is not None)))


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a seed's run is, prepared (and checked) before its folder is touched."""

    cfg: Config
    workdir: Path
    guide_model: Any  # pretrained.Pretrained: the guide, its tokenizer and architecture
    spec: ModelSpec
    batches: data.Batches
    total: int  # steps in the schedule
    identity: dict[str, Any]
    dev: StsbDev | None  # the model selection; None without an STS-B dev set
    final: list[Evaluator]  # eval.final_tasks, by protocol
    mesh: Any


class Trainer:
    """One seed's run in its folder. It owns the run's state in one place: the train state and its bookkeeping
    (`RunState`), the checkpoints and the records. `fit` is the training loop; `results` scores what it chose."""

    def __init__(self, setup: Setup, interrupts: Interrupts, resuming: bool):
        cfg, workdir = setup.cfg, setup.workdir
        self.setup, self.cfg, self.workdir, self.interrupts = setup, cfg, workdir, interrupts
        self.proc0 = jax.process_index() == 0
        if self.proc0:
            write_json(setup.identity, workdir / IDENTITY)
            write_json(cfg.to_dict(), workdir / runs.CONFIG)

        # -- the train state: fresh, or the newest checkpoint that restores
        self.layout = sharding.Layout(setup.mesh, cfg.mesh.fsdp)
        tx, self.step_fn = jit_train_step(setup.spec, cfg.objective, cfg.optim, setup.total, self.layout)
        state_sh, guide_sh = state_shardings(setup.spec, tx, self.layout)
        self.guide = sharding.put(setup.guide_model.params, guide_sh)
        self.state = jax.jit(lambda g: create_train_state(setup.spec, g, tx, cfg.seed), out_shardings=state_sh)(
            self.guide)
        self.ckpt = checkpointing.Checkpoints(workdir, keep=cfg.train.keep_checkpoints)
        self.run = RunState()
        restored = self.ckpt.restore(self.state) if resuming else None
        if restored is not None:
            self.state, meta = restored
            self.run = RunState.from_json(meta["run"])
            log.info("resumed from step %d (epoch %d, sentence %d)", self.run.step,
                     *setup.batches.position(self.run.step))
        # Best checkpoints past the resumed step belong to a future this run will recompute (bitwise the same).
        for stale in [s for s in self.ckpt.best.all_steps() if s > self.run.step]:
            self.ckpt.best.delete(stale)
        self.records = Records(workdir, self.proc0, self.run.step if restored is not None else -1)
        self.started, self.seconds_before = time.perf_counter(), self.run.seconds

    def close(self) -> None:
        """Waits for in-flight saves and closes the files (also after an error or a stop)."""
        self.ckpt.close()
        self.records.close()

    # -- evaluation and saving

    def encoder(self, trainable: Any, label: str = "") -> SentenceEncoder:
        """BERT_T (the guide's frozen embeddings + these layers; None: the untrained guide) as this host's
        evaluation encoder."""
        g = self.setup.guide_model
        params = sharding.to_host(trained_bert(trainable, self.guide)) if trainable is not None else g.params
        return SentenceEncoder(g.config, params, g.tokenizer, self.cfg.model.max_length, self.cfg.eval.dtype,
                               self.cfg.eval.pooling, source=label)

    def dev_eval(self, step: int, trainable: Any, counts: bool) -> None:
        """Scores STS-B dev, records it, saves a new best and applies the early-stopping rule."""
        cfg, run = self.cfg, self.run
        score = self.setup.dev.score(self.encoder(trainable))
        if run.record_dev(step, score, cfg.train.patience, counts) and step > 0:
            self.ckpt.save_best(step, self.state.params, {"step": step, "dev_score": score,
                                                          "identity": self.setup.identity})
        self.records.write(step, {"dev_stsb_spearman": score, "best_dev": run.best_score})
        if run.stopped:
            log.info("early stop at step %d: dev fell below the previous evaluation %d times", step, run.drops)

    def save(self, step: int) -> None:
        """A checkpoint of the train state and the run's bookkeeping at `step` (never a non-finite one)."""
        _check_finite(self.state, self.ckpt, self.cfg)
        self.run.step = step
        self.run.seconds = self.seconds_before + time.perf_counter() - self.started
        self.ckpt.save(step, self.state, {"step": step, "seed": self.cfg.seed, "identity": self.setup.identity,
                                          "run": self.run.to_json()})

    # -- the loop

    def fit(self) -> int:
        """Steps until the schedule ends, early stopping or a signal; returns the last step (its state saved).
        A first Ctrl-C stops at the next step boundary with a save; a second one at once, after the in-flight
        save completes."""
        try:
            return self._loop()
        except KeyboardInterrupt:
            self.ckpt.wait()
            raise Stopped("SIGINT", self.ckpt.latest_step(), False, self.workdir) from None

    def _loop(self) -> int:
        cfg, run, total = self.cfg, self.run, self.setup.total
        evaluating = self.setup.dev is not None and cfg.train.eval_every > 0
        if evaluating and not run.dev_history:
            self.dev_eval(0, None, counts=False)  # the untrained model: the initial best, never saved (as released)
        step = run.step
        bar = None
        if self.proc0 and cfg.train.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=step, desc=f"seed {cfg.seed}", unit="step", dynamic_ncols=True)
        timer = StepTimer()
        while step < total and not run.stopped:
            batch = sharding.global_batch(self.setup.batches(step), self.layout.batch)
            if timer.compiles(batch["input_ids"].shape):
                jax.block_until_ready(self.state)
                with timer.excluding():
                    self.state, metrics = jax.block_until_ready(self.step_fn(self.state, self.guide, batch))
            else:
                self.state, metrics = self.step_fn(self.state, self.guide, batch)
            step += 1
            if step % cfg.train.log_every == 0 or step == total:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                _check_finite(self.state, self.ckpt, cfg, values["loss"])
                rate = timer.rate()  # NaN when every step since the last line compiled: left out, not logged
                self.records.write(step, {**values, **({"steps_per_s": rate} if math.isfinite(rate) else {})})
                if bar is not None:
                    bar.set_postfix(loss=f"{values['loss']:.3f}", dev=f"{run.prev_score:.2f}")
            if evaluating and (step % cfg.train.eval_every == 0 or step == total):
                _check_finite(self.state, self.ckpt, cfg)
                with timer.excluding():
                    self.dev_eval(step, self.state.params, counts=step % cfg.train.eval_every == 0)
            if bar is not None:
                bar.update(1)
            if step % cfg.train.checkpoint_every == 0 or step == total or run.stopped:
                with timer.excluding():
                    self.save(step)
            signame = self.interrupts.reached(step)
            if signame:  # preempted or Ctrl-C: save this step (every process the same one), then stop
                if self.ckpt.latest_step() != step:
                    self.save(step)
                raise Stopped(signame, step, True, self.workdir)
        if bar is not None:
            bar.close()
        if self.ckpt.latest_step() != step:
            self.save(step)
        return step

    # -- the final evaluation of the best-on-dev model (and the last state) on every configured task

    def results(self, step: int) -> dict[str, Any]:
        """Scores the best-on-dev checkpoint (and the last state) on the final tasks; writes results.json."""
        cfg, run, workdir = self.cfg, self.run, self.workdir

        def score(trainable: Any, label: str) -> dict[str, Any]:
            return evaluators.evaluate(self.encoder(trainable, f"{workdir} ({label})"), self.setup.final)

        params = self.state.params
        if run.best_step is None or run.best_step == step:
            best, label = params, f"step {step}"
        elif run.best_step == 0:
            best, label = None, "step 0: the untrained model scored best on dev"
        else:
            try:
                restored = checkpointing.restore(workdir, "best", params, run.best_step)
                best, label = restored[0], restored[1]["checkpoint"]
            except (checkpointing.Damaged, FileNotFoundError) as e:
                # The training is intact: score the last state and say that the best one is lost.
                log.warning("the best checkpoint is lost (%s): scoring the last state, step %d, instead", e, step)
                best, label = params, f"step {step}: the best checkpoint best/{run.best_step} is lost ({e})"
        results = score(best, f"best on dev, {label}")
        results["training"] = {"seed": cfg.seed, "best_step": run.best_step, "best_score": run.best_score,
                               "stopped": run.stopped, "step": step, "total_steps": self.setup.total,
                               "selected_by": self.setup.dev.protocol()["dev"] if self.setup.dev else
                               "no STS-B dev set: the last state"}
        if cfg.eval.also_last:
            # The released training.py scores the in-memory model after early stopping, not the best one.
            last = score(params, f"last, step {step}") if run.best_step != step else results
            results["last"] = {"step": step, "tasks": last["tasks"], "average": last["average"]}
        # Wall time of the whole run: training over every resume, then the final evaluation(s).
        results["training"]["wall_seconds"] = round(self.seconds_before + time.perf_counter() - self.started, 1)
        if self.proc0:
            write_json(results, workdir / runs.RESULTS)
            print_results(results)
        return results


def print_results(results: dict[str, Any]) -> None:
    """One seed's results table (best-on-dev checkpoint) and the last checkpoint's average."""
    training = results.get("training", {})
    print(scoring.format_table(results, f"seed {training.get('seed')}, best dev step {training.get('best_step')}"))
    if "last" in results:
        print(f"last checkpoint (step {results['last']['step']}): "
              f"{scoring.format_average(results['last']['average'])}")


def add_last(results: dict[str, Any], workdir: Path, cfg: Config) -> dict[str, Any]:
    """Adds the last checkpoint's scores to a finished seed that was trained without eval.also_last."""
    enc = runs.load_run(workdir, "latest").encoder()
    last = evaluators.evaluate(enc, evaluators.from_config(cfg, workdir))
    results["last"] = {"step": results["training"]["step"], "tasks": last["tasks"], "average": last["average"]}
    if jax.process_index() == 0:
        write_json(results, workdir / runs.RESULTS)
    return results


# ------------------------------------------------------------------------------------------ seeds


def summarise_seeds(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Each task as mean +- std (sample std, ddof=1) over seeds; the per-seed scores kept."""
    def spread(results: dict[int, dict[str, Any]]) -> dict[str, Any]:
        first = next(iter(results.values()))
        tasks = {}
        for task, r0 in first["tasks"].items():
            scores = [r["tasks"][task]["score"] for r in results.values() if task in r["tasks"]]
            tasks[task] = {**{k: v for k, v in r0.items() if k not in ("score", "std", "subsets", "per_seed")},
                           "score": float(np.mean(scores)), "std": _std(scores),
                           "per_seed": {str(s): r["tasks"][task]["score"] for s, r in results.items()}}
        averages = [r["average"]["score"] for r in results.values() if r.get("average")]
        average = ({**first["average"], "score": float(np.mean(averages)), "std": _std(averages)}
                   if averages else None)
        return {"tasks": tasks, "average": average}

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


def finished_results(cfg: Config, workdir: Path) -> dict[str, Any] | None:
    """A finished run's results when its folder holds this very run (same identity), else None; a folder
    holding a different run is refused."""
    results = runs.read_results(workdir, damaged_ok=True)
    if results is None:
        return None
    saved = identity(runs.read_config(workdir))
    diff = identity_mismatch(saved, identity(cfg))
    if diff:
        raise runs.RunError(f"{workdir}: holds a finished run of another config ({'; '.join(diff)}); "
                            "use a new --workdir")
    return results


def finished_seeds(cfg: Config, workdir: Path, skip: Collection[int] = ()) -> dict[int, dict[str, Any]]:
    """The results of every finished seed_<s> folder in workdir (but the seeds in `skip`, already read) that
    holds this config's run; folders of another config are left out (with a warning), not refused: nobody
    asked for them."""
    found = {}
    for sub in workdir.glob("seed_*"):
        if not (sub.name[5:].isdigit() and sub.is_dir()):
            continue
        seed = int(sub.name[5:])
        if seed in skip:
            continue
        try:
            done = finished_results(cfg.replace(seed=seed, seeds=()), sub)
        except runs.RunError as e:
            log.warning("left out of the summary: %s", e)
            continue
        if done is not None:
            found[seed] = done
    return found


def train_and_evaluate(config: Config | Mapping[str, Any], workdir: str | Path) -> dict[str, Any]:
    """Runs every configured seed (config.seeds, else config.seed) and returns the results (mean +- std)."""
    cfg = Config.from_dict(config)  # checked whole: the flag parser sets fields one by one, unchecked
    workdir = Path(workdir)
    if not cfg.seeds:
        done = finished_results(cfg, workdir)
        if done is not None:
            log.info("%s: already trained; its results are shown again (python -m sgcl_jax.evaluate --model %s "
                     "scores it again)", workdir, workdir)
            if jax.process_index() == 0:
                print_results(done)
        return done or train_one(cfg, workdir)
    per_seed = {}
    for seed in cfg.seeds:
        seed_cfg, sub = cfg.replace(seed=seed, seeds=()), workdir / f"seed_{seed}"
        done = finished_results(seed_cfg, sub)
        if done is not None and cfg.eval.also_last and "last" not in done:
            done = add_last(done, sub, seed_cfg)
        per_seed[seed] = done or train_one(seed_cfg, sub)
    # The folder's summary covers every finished seed of this config, so a call for one more seed (--seeds 3)
    # does not overwrite the summary of seeds 1-2 with seed 3 alone.
    per_seed = dict(sorted({**per_seed, **finished_seeds(cfg, workdir, skip=per_seed)}.items()))
    summary = summarise_seeds(per_seed)
    if jax.process_index() == 0:
        write_json(cfg.replace(seeds=tuple(per_seed)).to_dict(), workdir / runs.CONFIG)
        write_json(summary, workdir / runs.RESULTS)
        print(scoring.format_table(summary, f"{len(per_seed)} seeds, best-on-dev checkpoints: mean +- std"))
        if "last" in summary:
            print(scoring.format_table({**summary, **summary["last"]}, "the same seeds, last checkpoints"))
    return summary
