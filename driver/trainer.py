"""The stage loop: `fit` runs the steps, `train_step` is one of them.

One step, as the paper's Stage-2 (Stage-1 the same with its own prompts and rewards):

    experience = rollouts -> rewards -> advantages   (driver.experience_maker)
    stats      = learners.step(experience.groups)    (one optimizer step, DeepSpeed)
    push       = sync.publish(learners)              (new weights -> engines and scorer)
    metrics    = the step's catalogue entries        (driver.metrics.step_metrics)

Around the steps: held-out validation and the no-think accuracy on their cadences (timed
apart from the step), metrics.jsonl / wandb / rollouts.jsonl, checkpoints, and recovery.
A learner rank that dies makes a new learner group from the newest checkpoint; resuming a
run and recovering from a learner's death are the same `restore`: the step, the data
position, the think-collapse watch and the weights go back to the checkpoint, and the log
lines of later steps are dropped, since those steps are redone (with no checkpoint, the
start is redone, its validation included).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from driver import metrics as M
from driver.async_rollout import ExperienceAhead
from driver.cadence import due
from driver.experience_maker import ExperienceMaker
from driver.gpu_sharing import GpuSharing
from driver.metrics_sink import MetricsLogger, ThinkCollapseWatch
from driver.plots import plot_run
from driver.rollout_log import RolloutLog
from driver.training_data import RunData
from driver.validation import BestCheckpoint, Validator, test_metrics
from weight_sync.sync import LearnersGone

MAX_LEARNER_RESTARTS = 3   # learner groups restarted from a checkpoint before a run gives up


class LearnerDied(RuntimeError):
    """A learner rank died during an update, a weight push or a checkpoint."""


class Trainer:
    """The run's parts and the loop over its steps. `running` is the cluster.start
    RunningActors of the run (the learners are started here), `best_metric` the val/*
    metric whose best step is kept in <run>/best/ (None: none), `plugins` the reward
    plug-ins (driver.experience_maker.reward_plugins)."""

    def __init__(self, cfg: Any, out: Path, data: RunData, running: Any,
                 best_metric: str | None, plugins: list | None = None) -> None:
        from omegaconf import OmegaConf
        from transformers import AutoTokenizer

        from cluster.resources import requested

        self.cfg, self.out, self.data, self.running = cfg, out, data, running
        self.stream, self.steps, self.sync = data.stream, data.steps, running.sync
        self.step, self.learner_restarts = 0, 0
        self.learners = running.start_learners(self.steps)
        self.sharing = GpuSharing.for_run(cfg, running)   # placement.colocate
        tokenizer = AutoTokenizer.from_pretrained(running.model_path,
                                                  trust_remote_code=cfg.model.trust_remote_code)
        self.maker = ExperienceMaker(cfg, running.engines, self.sync, tokenizer, plugins)
        self.ahead = ExperienceAhead(self.maker, self.stream, cfg.train.async_rollout)
        self.validator = Validator(cfg, running.engines, running.scorer, self.sync, data.val,
                                   check=data.check, skipped=data.val_skipped)
        # eval.final_test: every test sample once, after the last step (never selection)
        self.tester = Validator(cfg, running.engines, running.scorer, self.sync, data.test,
                                check=data.check, skipped=data.test_skipped, cap=False) \
            if cfg.eval.final_test and (data.test or data.test_skipped) else None
        self.best = BestCheckpoint(out, best_metric) if best_metric else None
        self.watch = ThinkCollapseWatch(cfg.logging.think_collapse_fraction)
        self.gpus = requested(cfg)["GPU"]
        self.logger = MetricsLogger(out, OmegaConf.to_container(cfg, resolve=True),
                                    list(cfg.logging.backends), cfg.logging.wandb_project)
        self.rollout_log = RolloutLog(out, cfg.logging.rollouts_per_step,
                                      lambda: self.logger.wandb_run)

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> Path:
        """Run the steps from the newest checkpoint (run.resume) or the start, then export
        the final weights; returns the export's directory."""
        from tqdm import tqdm

        state = self.learners.load_checkpoint(self.out) if self.cfg.run.resume else None
        self.restore(state)
        if state:
            print(f"# resumed from step {self.step} ({self.learners.last_loaded})")
        bar = tqdm(total=self.steps, initial=self.step, desc=f"stage {self.cfg.stage}",
                   unit="step")
        while self.step < self.steps:
            if self.step == 0 and self.validator.due(0, self.steps):   # the starting point
                self.record(0, self.validator.run())
            try:
                drawn, metrics = self.train_step(self.step + 1)
                self.step += 1
                self.rollout_log.log(self.step, self.maker.mode, drawn.batch, drawn.experience)
                self.record(self.step, metrics)
                bar.set_postfix(reward=f"{metrics[M.SCORE.name('mean')]:.3f}")
                if due(self.step, self.cfg.checkpoint.every, always=(self.steps,)):
                    self.save_checkpoint()
            except (LearnerDied, LearnersGone) as died:
                # LearnersGone: a receiver that restarted needs weights that died with the
                # learners, found before the learners' own calls would find them dead.
                self.restart_learners(died)
            bar.n = self.step
            bar.refresh()
        bar.close()
        return self.finish()

    def train_step(self, step: int) -> tuple[Any, dict[str, float]]:
        """One step: this batch's experience, the learners' update, the weights published;
        then the evaluations due at this step. Returns the batch drawn and its metrics."""
        import ray

        start = time.perf_counter()
        drawn = self.ahead.take()   # made during the last update with async_rollout, else now
        try:
            self.ahead.start_next(step < self.steps)   # async_rollout: next batch, old weights
            self.sharing.before_update(self.learners)   # colocated: the GPU to the learners
            t = time.perf_counter()
            stats = self.learners.step(drawn.experience.groups)
            update_s = time.perf_counter() - t
            self.ahead.wait()   # no engine is loaded while it generates
            push = self.sharing.publish(self.sync, self.learners)
        except ray.exceptions.RayActorError as err:
            raise LearnerDied(err) from err
        metrics = M.step_metrics(drawn.experience.metrics, stats, epoch=drawn.epoch,
                                 update_s=update_s, push=push,
                                 step_s=time.perf_counter() - start, gpus=self.gpus)
        metrics.update(self.evaluate(step, drawn.batch))
        if self.cfg.stage == 2:
            warning = self.watch.update(metrics[M.THINK_LENGTH.name("mean")])
            if warning:
                self.logger.alert("think collapse", warning)
        metrics.update(M.event_metrics(self.running.engines.metrics["resends"],
                                       self.sync.counts, len(self.stream.skipped),
                                       self.learner_restarts))
        return drawn, metrics

    def evaluate(self, step: int, batch: list[dict]) -> dict[str, float]:
        """The evaluations due at `step`, each timed apart from the step: the greedy
        no-think accuracy on the batch (Stage-2, the paper's Fig. 5, right), validation,
        and after the last step the final test (eval.final_test)."""
        out: dict[str, float] = {}
        every = self.cfg.eval.nothink_acc_every
        if self.cfg.stage == 2 and due(step, every, always=(1,) if every else ()):
            t = time.perf_counter()
            out[M.NO_THINK_ACC] = self.maker.no_think_accuracy(batch)
            out[M.TIMING_NO_THINK] = time.perf_counter() - t
        if self.validator.due(step, self.steps):
            out.update(self.validator.run())
        if step == self.steps and self.tester is not None:
            out.update(test_metrics(self.tester))
        return out

    def record(self, step: int, metrics: dict[str, float]) -> None:
        """Log a step's metrics and keep its export if it is the best validated so far.
        Logged before the checkpoint: a crash in between redoes the step after a resume
        (its lines are dropped then), rather than leaving a checkpointed step unlogged."""
        self.logger.log(step, metrics)
        if self.best and self.best.improves(metrics):
            with self.sharing.learner_turn(self.learners):
                self.best.update(step, metrics, self.learners)

    # -- checkpoints and recovery -----------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Checkpoint the learners with the loop's state (a half-written one is never
        used: a learner dying here is recovered like one dying in the update)."""
        import ray

        try:
            with self.sharing.learner_turn(self.learners):
                self.learners.save_checkpoint(self.out, self.step, {
                    "step": self.step, "weights_version": self.sync.version,
                    "data": self.ahead.stream_state(),
                    "data_fingerprint": self.data.fingerprint, "think_early": self.watch.early})
        except ray.exceptions.RayActorError as err:
            raise LearnerDied(err) from err

    def restore(self, state: dict | None) -> None:
        """Take the loop to a checkpoint's trainer state (None: the start): step, data
        position, think-collapse watch, the learners' weights in every receiver (and,
        colocated, their states off the GPU), and the logs (the lines of the steps to redo
        are dropped)."""
        state = state or {}
        self.step = state.get("step", 0)
        self.stream.load_state(state.get("data"))
        self.watch.early = list(state.get("think_early", []))
        self.sync.restore(self.learners, state.get("weights_version", 0))
        self.sharing.rest(self.learners)   # colocated: the restored states off the GPU
        kept = self.step if state else -1   # no checkpoint: the start's lines are redone too
        self.logger.rewind(kept)
        self.rollout_log.rewind(kept)

    def restart_learners(self, died: LearnerDied | LearnersGone) -> None:
        """A new learner group from the newest checkpoint (or from model.path without
        one), and the loop restored to it; gives up after MAX_LEARNER_RESTARTS."""
        cause = died.__cause__ or died
        if self.learner_restarts >= MAX_LEARNER_RESTARTS:
            raise RuntimeError(f"the learners died {self.learner_restarts + 1} times; giving "
                               f"up (last: {cause})") from cause
        self.learner_restarts += 1
        print(f"# a learner died ({str(cause).splitlines()[0]}); restarting the learners "
              f"from the newest checkpoint ({self.learner_restarts}/{MAX_LEARNER_RESTARTS})")
        self.ahead.discard()   # made for a step that will be redone
        self.sharing.recover()
        self.learners.shutdown()
        self.learners = self.running.start_learners(self.steps)
        self.restore(self.learners.load_checkpoint(self.out))

    def finish(self) -> Path:
        """Export the final weights, close the sinks, draw the plots."""
        self.ahead.close()
        with self.sharing.learner_turn(self.learners):
            export = self.learners.export_hf(self.out / "export")
        self.logger.close()
        plots = plot_run(self.out)
        best = self.best
        chosen = (f", best: {best.dir} (step {best.step}, {best.metric} {best.value:.4f})"
                  if best and best.step is not None else "")
        print(f"# done: {self.steps} steps. metrics: {self.out / 'metrics.jsonl'}, export: "
              f"{export}{chosen}, plots: {', '.join(str(p) for p in plots)}")
        return export
