"""`train_and_evaluate(config, workdir)`: the training loop, dev selection, early stopping, checkpoints, results."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from sgcl_jax import checkpointing, data, runs, scoring, sharding, sts, tasks
from sgcl_jax.config import Config, identity
from sgcl_jax.encoder import SentenceEncoder
from sgcl_jax.files import write_json, write_text
from sgcl_jax.interrupts import Interrupts, Stopped
from sgcl_jax.model import ModelSpec, load_guide, trained_bert
from sgcl_jax.train_step import create_train_state, jit_train_step, state_shardings

log = logging.getLogger(__name__)


class DivergenceError(FloatingPointError):
    """A step's loss or gradient norm was not finite; the message says which step and what to change."""


# ------------------------------------------------------------------------------------------ run state


@dataclasses.dataclass
class RunState:
    """The bookkeeping beside the train state: dev scores, the best one, and the released early-stopping rule.

    The released code (sentence-transformers' fit as modified by SG-BERT) scores the untrained model first:
    that score is the initial best, and nothing is saved for it. Every `eval_every` steps it scores again; a
    score below the previous one (starting from 0, not from the step-0 score) adds one to a counter that is
    never reset, and the run stops when the counter reaches the patience. The end-of-training evaluation
    may become the best, but does not touch the counter. A non-finite score is never the best.
    """

    step: int = 0
    best_score: float | None = None
    best_step: int | None = None
    prev_score: float = 0.0
    drops: int = 0
    stopped: bool = False
    dev_history: list[list[float]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0  # wall time spent training so far, summed over resumes (dev evaluations included)

    def record_dev(self, step: int, score: float, patience: int, counts: bool = True) -> bool:
        """Records a dev score; True when it is the new best (so it should be saved, unless step is 0)."""
        self.dev_history.append([step, score])
        finite = math.isfinite(score)
        if not finite:
            log.warning("step %d: the dev score is %s (constant embeddings?); it is never the best", step, score)
        if counts and step > 0:
            if score < self.prev_score:
                self.drops += 1
            if self.drops >= patience:
                self.stopped = True
            if finite:
                self.prev_score = score
        if finite and (self.best_score is None or score > self.best_score):
            self.best_score, self.best_step = score, step
            return True
        return False

    def to_json(self) -> dict[str, Any]:
        """The JSON form saved in each checkpoint's meta."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunState:
        """Inverse of `to_json`."""
        return cls(**d)


# ------------------------------------------------------------------------------------------ records


class Records:
    """metrics.jsonl and TensorBoard events, written by process 0 only."""

    def __init__(self, workdir: Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.file = self.tb = None
        if not enabled:
            return
        path = self.path = workdir / runs.METRICS
        if path.exists():
            write_text("".join(f"{x}\n" for x in _kept_lines(path, resume_step)), path)
        self.file = open(path, "a")  # noqa: SIM115 - closed in close()
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tb"))
        except ImportError:  # pragma: no cover - optional
            log.info("tensorboardX not installed: no TensorBoard events")

    def write(self, step: int, values: dict[str, float]) -> None:
        """One JSON line (and TensorBoard scalars) for a step."""
        if not self.enabled:
            return
        try:
            self.file.write(json.dumps({"step": step, **values}) + "\n")
            self.file.flush()
        except OSError as e:
            raise OSError(f"{self.path}: cannot write the run's metrics ({e.strerror or e}). Kept: the checkpoints "
                          "saved so far, intact. Free space (or fix the disk) and run the same command again to "
                          "resume.") from None
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Flushes and closes the files (a failing flush is a warning: it runs while another error propagates)."""
        if self.file:
            try:
                self.file.close()
            except OSError as e:
                log.warning("%s: the last metrics lines were not written (%s)", self.path, e.strerror or e)
        if self.tb is not None:
            self.tb.close()


def _kept_lines(path: Path, resume_step: int) -> list[str]:
    """The lines up to the resumed step; a torn last line (a kill mid-write) is dropped with a warning."""
    lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    kept = []
    for i, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                log.warning("%s:%d: an incomplete last line (a kill mid-write?); dropped", path, i)
                break
            raise ValueError(f"{path}:{i}: not a JSON line; fix or remove the line to resume") from None
        if row.get("step", 0) <= resume_step:
            kept.append(line)
    return kept


# ------------------------------------------------------------------------------------------ one run


def dev_set(cfg: Config) -> sts.Subset | None:
    """STS-B dev (selects the best checkpoint), or None with a warning when the data folder lacks it."""
    try:
        return sts.read_stsb(tasks.data_folder("sts", cfg.data.data_dir or None) / sts.FOLDERS["STSB"], "dev")
    except sts.MissingData as e:
        log.warning("no STS-B dev set (%s): training runs without model selection or early stopping", e)
        return None


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
    dev = dev_set(cfg)

    resuming = _check_resume(workdir, run_identity)  # before the folder changes in any way, lock included
    lock = runs.RunLock(workdir) if proc0 else contextlib.nullcontext()
    with lock, Interrupts() as interrupts:
        return _train_locked(cfg, workdir, guide_model, spec, batches, total, run_identity, dev, mesh, proc0,
                             interrupts, resuming)


def _check_resume(workdir: Path, run_identity: dict[str, Any]) -> bool:
    """Whether the folder holds this run's checkpoints to resume from; refuses another run's folder, whether or not
    one of its checkpoints finished (identity.json is written before anything else of a run)."""
    # One answer for all processes, taken before any of them writes: the first to create checkpoints/ would
    # otherwise make a slower one take the resume path alone, and Orbax's collective calls would not match.
    has_checkpoints = runs.is_run(workdir)
    has_run = sharding.max_over_processes(int(has_checkpoints or (workdir / checkpointing.BEST).is_dir()))
    meta = checkpointing.Checkpoints(workdir, writable=False).read_meta() if has_checkpoints else None
    saved = runs.read_identity(workdir) or (meta or {}).get("identity")
    if saved is not None:
        runs.check_identity(workdir, saved, run_identity)
    elif has_run:
        raise runs.RunError(f"{workdir}: holds checkpoints of a run whose identity cannot be read (no "
                            f"{runs.IDENTITY}, no readable checkpoint metadata); use a new --workdir")
    return bool(sharding.max_over_processes(int(meta is not None)))


def _train_locked(cfg: Config, workdir: Path, guide_model: Any, spec: ModelSpec, batches: data.Batches, total: int,
                  run_identity: dict[str, Any], dev: sts.Subset | None, mesh: Any, proc0: bool,
                  interrupts: Interrupts, resuming: bool) -> dict[str, Any]:
    if proc0:
        write_json(run_identity, workdir / runs.IDENTITY)
        write_json({**cfg.to_dict()}, workdir / runs.CONFIG)

    # -- state: fresh, or the newest checkpoint that restores
    layout = sharding.Layout(mesh, cfg.mesh.fsdp)
    tx, step_fn = jit_train_step(spec, cfg.objective, cfg.optim, total, layout)
    state_sh, guide_sh = state_shardings(spec, tx, layout)
    guide = sharding.put(guide_model.params, guide_sh)
    state = jax.jit(lambda g: create_train_state(spec, g, tx, cfg.seed), out_shardings=state_sh)(guide)
    ckpt = checkpointing.Checkpoints(workdir, keep=cfg.train.keep_checkpoints)
    run = RunState()
    restored = ckpt.restore(state) if resuming else None
    if restored is not None:
        state, meta = restored
        run = RunState.from_json(meta["run"])
        log.info("resumed from step %d (epoch %d, sentence %d)", run.step, *batches.position(run.step))
    # Best checkpoints past the resumed step belong to a future this run will recompute (bitwise the same).
    for stale in [s for s in ckpt.best.all_steps() if s > run.step]:
        ckpt.best.delete(stale)
    records = Records(workdir, proc0, run.step if restored is not None else -1)
    started, seconds_before = time.perf_counter(), run.seconds

    def sentence_encoder(trainable: Any, label: str = "") -> SentenceEncoder:
        """BERT_T (the guide's frozen embeddings + these layers) as this host's evaluation encoder."""
        params = sharding.to_host(trained_bert(trainable, guide)) if trainable is not None else guide_model.params
        return SentenceEncoder(guide_model.config, params, guide_model.tokenizer, cfg.model.max_length,
                               cfg.eval.dtype, cfg.eval.pooling, source=label)

    def dev_eval(step: int, trainable: Any, counts: bool) -> None:
        score = scoring.score_sts(sentence_encoder(trainable), {"dev": [dev]}, batch_size=cfg.eval.batch_size,
                                   progress=False, finite=False)["dev"]["score"]
        if run.record_dev(step, score, cfg.train.patience, counts) and step > 0:
            ckpt.save_best(step, state.params, {"step": step, "dev_score": score, "identity": run_identity})
        records.write(step, {"dev_stsb_spearman": score, "best_dev": run.best_score})
        if run.stopped:
            log.info("early stop at step %d: dev fell below the previous evaluation %d times", step, run.drops)

    def save(step: int) -> None:
        _check_finite(state, ckpt, cfg)
        run.step = step
        run.seconds = seconds_before + time.perf_counter() - started
        ckpt.save(step, state, {"step": step, "seed": cfg.seed, "identity": run_identity, "run": run.to_json()})

    def train_loop() -> int:
        """Steps until the schedule ends or early stopping; returns the last step (its state saved)."""
        nonlocal state
        evaluating = dev is not None and cfg.train.eval_every > 0
        if evaluating and not run.dev_history:
            dev_eval(0, None, counts=False)  # the untrained model: the initial best, never saved (as released)

        # -- loop
        step = run.step
        bar = None
        if proc0 and cfg.train.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=step, desc=f"seed {cfg.seed}", unit="step", dynamic_ncols=True)
        timer = _StepTimer()
        while step < total and not run.stopped:
            batch = sharding.global_batch(batches(step), layout.batch)
            if timer.compiles(batch["input_ids"].shape):
                jax.block_until_ready(state)
                with timer.excluding():
                    state, metrics = jax.block_until_ready(step_fn(state, guide, batch))
            else:
                state, metrics = step_fn(state, guide, batch)
            step += 1
            if step % cfg.train.log_every == 0 or step == total:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                _check_finite(state, ckpt, cfg, values["loss"])
                records.write(step, {**values, "steps_per_s": timer.rate()})
                if bar is not None:
                    bar.set_postfix(loss=f"{values['loss']:.3f}", dev=f"{run.prev_score:.2f}")
            if evaluating and (step % cfg.train.eval_every == 0 or step == total):
                _check_finite(state, ckpt, cfg)
                with timer.excluding():
                    dev_eval(step, state.params, counts=step % cfg.train.eval_every == 0)
            if bar is not None:
                bar.update(1)
            if step % cfg.train.checkpoint_every == 0 or step == total or run.stopped:
                with timer.excluding():
                    save(step)
            signame = interrupts.reached(step)
            if signame:  # preempted or Ctrl-C: save this step (every process the same one), then stop
                if ckpt.latest_step() != step:
                    save(step)
                raise Stopped(signame, step, True, workdir)
        if bar is not None:
            bar.close()
        if ckpt.latest_step() != step:
            save(step)
        return step

    try:
        step = train_loop()
    except KeyboardInterrupt:  # a second Ctrl-C: no save of this step, but the in-flight one completes
        ckpt.wait()
        raise Stopped("SIGINT", ckpt.latest_step(), False, workdir) from None
    finally:  # also on divergence or a stop: in-flight saves complete, files are closed
        ckpt.close()
        records.close()

    # -- final evaluation of the best-on-dev model (and the last state) on every configured task
    def score(trainable: Any, label: str) -> dict[str, Any]:
        return scoring.evaluate(sentence_encoder(trainable, f"{workdir} ({label})"), cfg.eval.final_tasks,
                                 settings=scoring.Settings.from_config(cfg, workdir))

    if run.best_step is None or run.best_step == step:
        best, label = state.params, f"step {step}"
    elif run.best_step == 0:
        best, label = None, "step 0: the untrained model scored best on dev"
    else:
        try:
            restored = checkpointing.restore(workdir, "best", state.params, run.best_step)
            best, label = restored[0], restored[1]["checkpoint"]
        except (checkpointing.Damaged, FileNotFoundError) as e:
            # The training is intact: score the last state and say that the best one is lost.
            log.warning("the best checkpoint is lost (%s): scoring the last state, step %d, instead", e, step)
            best, label = state.params, f"step {step}: the best checkpoint best/{run.best_step} is lost ({e})"
    results = score(best, f"best on dev, {label}")
    results["training"] = {"seed": cfg.seed, "best_step": run.best_step, "best_score": run.best_score,
                           "stopped": run.stopped, "step": step, "total_steps": total}
    if cfg.eval.also_last:
        # The released training.py scores the in-memory model after early stopping, not the best one.
        last = score(state.params, f"last, step {step}") if run.best_step != step else results
        results["last"] = {"step": step, "tasks": last["tasks"], "average": last["average"]}
    # Wall time of the whole run: training over every resume, then the final evaluation(s).
    results["training"]["wall_seconds"] = round(seconds_before + time.perf_counter() - started, 1)
    if proc0:
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


class _StepTimer:
    """Training steps per second between two logged steps, leaving out evaluation, saves and compilation."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, ...]] = set()
        self.start, self.excluded, self.steps = time.perf_counter(), 0.0, 0

    @contextlib.contextmanager
    def excluding(self) -> Iterator[None]:
        """Time spent inside does not count."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - t0

    def compiles(self, shape: tuple[int, ...]) -> bool:
        """Whether a step of this shape is the first (its time is mostly compilation); counts the others."""
        new = shape not in self.seen
        self.seen.add(shape)
        self.steps += not new
        return new

    def rate(self) -> float:
        """Steps per second since the last call; call it after a sync (reading the metrics is one)."""
        now = time.perf_counter()
        seconds = now - self.start - self.excluded
        rate = self.steps / seconds if self.steps and seconds > 0 else math.nan
        self.start, self.excluded, self.steps = now, 0.0, 0
        return rate


def add_last(results: dict[str, Any], workdir: Path, cfg: Config) -> dict[str, Any]:
    """Adds the last checkpoint's scores to a finished seed that was trained without eval.also_last."""
    enc = runs.load_run(workdir, "latest").encoder()
    last = scoring.evaluate(enc, cfg.eval.final_tasks, settings=scoring.Settings.from_config(cfg, workdir))
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
    diff = runs.identity_mismatch(saved, identity(cfg))
    if diff:
        raise runs.RunError(f"{workdir}: holds a finished run of another config ({'; '.join(diff)}); "
                            "use a new --workdir")
    return results


def train_and_evaluate(config: Config | ml_collections.ConfigDict | dict, workdir: str | Path) -> dict[str, Any]:
    """Runs every configured seed (config.seeds, else config.seed) and returns the results (mean +- std)."""
    cfg = config if isinstance(config, Config) else Config.from_dict(config)
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
    summary = summarise_seeds(per_seed)
    if jax.process_index() == 0:
        write_json(cfg.to_dict(), workdir / runs.CONFIG)
        write_json(summary, workdir / runs.RESULTS)
        print(scoring.format_table(summary, f"{len(cfg.seeds)} seeds, best-on-dev checkpoints: mean +- std"))
        if "last" in summary:
            print(scoring.format_table({**summary, **summary["last"]}, "the same seeds, last checkpoints"))
    return summary
