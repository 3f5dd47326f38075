"""Refine-IQA on Ray: the entry point.

    python launch.py conf=NAME [key.sub=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python launch.py conf=stage2

Reads conf/NAME.yaml (with the parents it names), applies the overrides, prints the
resolved config and saves it in the run directory (run.output_dir/run.name), prepares the
model (conf=tiny builds the embedded tiny model on the spot) and runs the configured stage.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

HELP = """\
usage: python launch.py conf=NAME [key.sub=value ...]

Runs Refine-IQA training (Stage-1 perception or Stage-2 scoring) on Ray.

  conf=NAME        the config file conf/NAME.yaml (default: tiny). A config names its
                   parents with `defaults: [...]`; conf/base.yaml declares every key.
  key.sub=value    override one key, e.g. train.lr=1e-5 rollout.n=4 run.name=try1.
                   Values are YAML (1e-5 is a float, [1,1,0] a list, null is None) and must
                   have the type of base.yaml's default. Unknown keys are an error that names
                   the closest valid key.

configs: {configs}

The resolved config is printed and saved as <run.output_dir>/<run.name>/config.yaml.
Examples:
  python launch.py conf=tiny                           # embedded tiny model, CPU, minutes
  python launch.py conf=stage1 model.path=/models/Qwen2.5-VL-7B-Instruct
  python launch.py conf=stage2 model.path=outputs/stage1-stage1/export
"""


def parse_argv(argv: list[str]) -> tuple[str, list[str]]:
    """Split `conf=NAME` from the overrides (conf defaults to tiny)."""
    name, overrides = "tiny", []
    for arg in argv:
        if arg.startswith("conf=") or arg.startswith("--conf="):
            name = arg.split("=", 1)[1].removesuffix(".yaml")
        else:
            overrides.append(arg)
    return name, overrides


def run_dir(cfg) -> Path:
    """Where this run writes: config, metrics.jsonl, checkpoints, export, plots, logs."""
    return Path(cfg.run.output_dir) / cfg.run.name


def prepare_model(cfg) -> str:
    """The model `model.path` names (learner.checkpoint.resolve_model_path): "tiny" (the
    embedded model, built and warmed up on the spot), a model directory, a run directory,
    a checkpoint, or a hub id."""
    from conf import ConfigError
    from learner.checkpoint import resolve_model_path

    try:
        return resolve_model_path(cfg.model.path, cfg.model.cache_dir)
    except FileNotFoundError as exc:
        raise ConfigError(f"model.path: {exc}") from None


def manifests(cfg) -> tuple[object, object]:
    """(train, test) manifests as configured, or the embedded mini dataset's of this stage
    when `data.train_manifest` is null."""
    train_m, test_m = cfg.data.train_manifest, cfg.data.test_manifest
    if train_m is None:
        from synth.mini_dataset import build_mini_dataset

        mini = build_mini_dataset(Path(cfg.model.cache_dir) / "mini")
        train_m = str(mini[f"stage{cfg.stage}_train"])
        test_m = test_m or str(mini[f"stage{cfg.stage}_test"])
    return train_m, test_m


def total_steps(cfg, steps_per_epoch: int) -> int:
    """train.max_steps if set, else epochs x steps per epoch."""
    if cfg.train.max_steps is not None:
        return int(cfg.train.max_steps)
    return int(cfg.train.epochs) * steps_per_epoch


def best_metric(cfg) -> str | None:
    """The val/* name conf `checkpoint.best_metric` selects (None: no best/ export)."""
    from conf import ConfigError
    from driver import metrics as M

    name = str(cfg.checkpoint.best_metric)
    if name == "none":
        return None
    if name == "auto":
        return M.BEST_DEFAULT[int(cfg.stage)]
    if not name.startswith("val/") or name not in M.CATALOGUE:
        valid = sorted(n for n in M.CATALOGUE if n.startswith("val/"))
        raise ConfigError(f"checkpoint.best_metric={name} is not a validation metric; "
                          f"choose auto, none or one of {valid}")
    return name


MAX_LEARNER_RESTARTS = 3   # learner groups restarted from a checkpoint before a run gives up


def check_resumable(cfg, out: Path, data_id: dict) -> None:
    """Refuse to resume a run whose data order changed (unless run.resume=force): the
    newest checkpoint's data fingerprint must be this run's."""
    from conf import ConfigError
    from driver.training_data import fingerprint_changes
    from learner.checkpoint import checkpoint_root, newest_resumable

    found = newest_resumable(checkpoint_root(out)) if cfg.run.resume else None
    if found is None or cfg.run.resume == "force":
        return
    newest, state = found
    changes = fingerprint_changes(state.get("data_fingerprint", {}), data_id)
    if changes:
        raise ConfigError(f"the data order differs from {newest}'s ({'; '.join(changes)}): "
                          "resuming would repeat or skip samples. Use another run.name, or "
                          "run.resume=force to continue anyway")


def train(cfg, model_path: str, out: Path) -> None:
    """The stage loop of DESIGN.md: generate, reward, update, publish weights, validate,
    log, save."""
    import functools
    import time

    from tqdm import tqdm
    from transformers import AutoTokenizer

    from actors.engine_settings import MAX_IMAGES_PER_PROMPT
    from actors.launcher import start_vllm_actors
    from actors.prompting import check_sample
    from driver import metrics as M
    from driver.async_rollout import ExperienceAhead
    from driver.cluster import check_resources, connect, requested
    from driver.data_stream import DataStream
    from driver.experience_maker import ExperienceMaker
    from driver.metrics_sink import MetricsLogger, ThinkCollapseWatch
    from driver.placement import Placement, node_resources, roles
    from driver.plots import plot_run
    from driver.rollout_log import RolloutLog
    from driver.training_data import fingerprint, load_training_data
    from driver.validation import BestCheckpoint, Validator
    from learner.checkpoint import should_save
    from learner.group import LearnerGroup
    from weight_sync.sync import WeightSync

    stage2 = int(cfg.stage) == 2
    data = load_training_data(*manifests(cfg), bool(cfg.data.drop_test_split),
                              ("score",) if stage2 else ("choice", "grounding"))
    # One optimizer step over batch_size x grad_accum images: the learner weighs every
    # token of them in one update, which is what accumulation over rounds would give.
    per_step = int(cfg.train.batch_size) * int(cfg.train.grad_accum)
    check = functools.partial(check_sample, mode="think" if stage2 else "no_think",
                              min_pixels=int(cfg.model.min_pixels),
                              max_pixels=int(cfg.model.max_pixels),
                              max_images=MAX_IMAGES_PER_PROMPT, prompts=cfg.prompts)
    stream = DataStream(data.train, per_step, int(cfg.run.seed), bool(cfg.data.shuffle),
                        check=check)
    steps = total_steps(cfg, stream.steps_per_epoch)
    data_id = fingerprint(data.manifests, per_step, bool(cfg.data.shuffle), int(cfg.run.seed),
                          bool(cfg.data.drop_test_split))
    metric = best_metric(cfg)
    best = BestCheckpoint(out, metric) if metric else None
    check_resumable(cfg, out, data_id)   # before any actor starts
    available = connect(cfg)
    import ray  # after connect: a local cluster's loopback setting is read at `import ray`
    check_resources(cfg, available, nodes=node_resources())   # totals, then node by node
    placement = Placement(roles(cfg, scorer=stage2))   # held for the run: restarts reuse it
    sync = WeightSync()   # the one owner of weights versions
    engines, scorer = start_vllm_actors(cfg, model_path, sync, scorer=stage2,
                                        placement=placement)
    learners = LearnerGroup(cfg, total_steps=steps, model_path=model_path,
                            placement=placement)
    tokenizer = AutoTokenizer.from_pretrained(model_path,
                                              trust_remote_code=cfg.model.trust_remote_code)
    maker = ExperienceMaker(cfg, engines, sync, tokenizer)
    validator = Validator(cfg, engines, scorer, sync, data.test)
    watch = ThinkCollapseWatch(float(cfg.logging.think_collapse_fraction))
    devices = requested(cfg)["GPU"]

    step = 0
    state = learners.load_checkpoint(out) if cfg.run.resume else None
    if state:
        step = int(state["step"])
        stream.load_state(state["data"])
        watch.early = list(state.get("think_early", []))
        sync.restore(learners, int(state["weights_version"]))  # engines start from model_path
        print(f"# resumed from step {step} ({learners.last_loaded})")
    learner_restarts = 0

    def restart_learners(cause: BaseException) -> int:
        """A learner rank died: a new learner group from the newest checkpoint (or from
        model_path without one), its weights published to every receiver, the data stream
        and the logs taken back to that step; returns the step to go on from."""
        nonlocal learners, learner_restarts
        ahead.discard()   # made for a step that will be redone
        if learner_restarts >= MAX_LEARNER_RESTARTS:
            raise RuntimeError(f"the learners died {learner_restarts + 1} times; giving up "
                               f"(last: {cause})") from cause
        learner_restarts += 1
        print(f"# a learner died ({str(cause).splitlines()[0]}); restarting the learners "
              f"from the newest checkpoint ({learner_restarts}/{MAX_LEARNER_RESTARTS})")
        learners.shutdown()
        learners = LearnerGroup(cfg, total_steps=steps, model_path=model_path,
                                placement=placement)
        saved = learners.load_checkpoint(out) or {}
        back = int(saved.get("step", 0))
        stream.load_state(saved.get("data") or {"epoch": 0, "position": 0,
                                                 "seed": int(cfg.run.seed),
                                                 "skipped": dict(stream.skipped)})
        watch.early = list(saved.get("think_early", []))
        sync.publish(learners)   # a new version: the engines follow the restored weights
        logger.rewind(back)
        rollout_log.rewind(back)
        return back

    kept = step if state else -1   # lines of later steps (a fresh start: all) are redone
    logger = MetricsLogger(out, cfg_dict(cfg), bool(cfg.logging.wandb),
                           str(cfg.logging.wandb_project), resume_from_step=kept)
    rollout_log = RolloutLog(out, int(cfg.logging.rollouts_per_step), logger.wandb_run, kept)
    if step == 0 and validator.due(0, steps):   # the starting point
        before = validator.run()
        logger.log(0, before)
        if best:
            best.update(0, before, learners)
    nothink_every = int(cfg.eval.nothink_acc_every)
    ahead = ExperienceAhead(maker, stream, bool(cfg.train.async_rollout))
    bar = tqdm(total=steps, initial=step, desc=f"stage {cfg.stage}", unit="step")
    while step < steps:
        step += 1
        t_step = time.perf_counter()
        drawn = ahead.take()   # made during the last update with async_rollout, else now
        epoch, batch, exp = drawn.epoch, drawn.batch, drawn.experience
        try:
            ahead.start_next(step < steps)   # async_rollout: the next batch, old weights
            t = time.perf_counter()
            stats = learners.step(exp.groups)
            update_s = time.perf_counter() - t
            ahead.wait()   # no engine is loaded while it generates
            push = sync.publish(learners)
        except ray.exceptions.RayActorError as err:
            step = restart_learners(err)
            bar.n = step
            continue
        metrics = {**exp.metrics, **M.learner_metrics(stats), M.EPOCH: epoch,
                   M.TIMING_UPDATE: update_s, M.TIMING_UPDATE_MODEL: stats["compute_s"],
                   M.TIMING_WEIGHTS: push["gather_s"] + push["deliver_s"]}
        metrics[M.TIMING_STEP] = time.perf_counter() - t_step
        model_s = (metrics[M.TIMING_GEN_MODEL] + metrics.get(M.TIMING_PD_MODEL, 0.0)
                   + metrics[M.TIMING_UPDATE_MODEL])
        metrics[M.STEP_OVERHEAD] = metrics[M.TIMING_STEP] / max(model_s, 1e-9)
        if stage2 and nothink_every > 0 and (step % nothink_every == 0 or step == 1):
            t = time.perf_counter()   # an evaluation (Fig. 5, right): timed apart
            metrics[M.NO_THINK_ACC] = maker.no_think_accuracy(batch)
            metrics[M.TIMING_NO_THINK] = time.perf_counter() - t
        metrics.update(M.throughput(metrics[M.TOTAL_TOKENS], metrics[M.TIMING_STEP], devices))
        if validator.due(step, steps):   # timed apart from the step (timing_s/testing)
            metrics.update(validator.run())
        if stage2:
            warning = watch.update(metrics[M.THINK_LENGTH.name("mean")])
            if warning:
                logger.alert("think collapse", warning)
        metrics.update({   # recoveries so far, validation's included
            M.RESENDS: engines.metrics["resends"], M.RESTARTS: sync.counts["restarts"],
            M.REPLAYS: sync.counts["replays"], M.REDOS: sync.counts["redos"],
            M.UNREACHABLE: sync.counts["unreachable"], M.SKIPPED: len(stream.skipped),
            M.LEARNER_RESTARTS: learner_restarts})
        # Logged before the checkpoint: a crash in between redoes the step after a resume
        # (its lines are dropped then), rather than leaving a checkpointed step unlogged.
        rollout_log.log(step, maker.mode, batch, exp)
        logger.log(step, metrics)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics[M.SCORE.name('mean')]:.3f}")
        if best:
            best.update(step, metrics, learners)
        if should_save(step, int(cfg.checkpoint.every), step == steps):
            try:
                learners.save_checkpoint(out, step, {
                    "step": step, "weights_version": sync.version, "data": ahead.stream_state(),
                    "data_fingerprint": data_id, "think_early": watch.early})
            except ray.exceptions.RayActorError as err:   # a half-written one is never used
                step = restart_learners(err)
                bar.n = step
    bar.close()
    ahead.close()
    export = learners.export_hf(out / "export")
    logger.close()
    plots = plot_run(out)
    chosen = f", best: {best.dir} (step {best.step}, {best.metric} {best.value:.4f})" \
        if best and best.step is not None else ""
    print(f"# done: {steps} steps. metrics: {out / 'metrics.jsonl'}, export: {export}"
          f"{chosen}, plots: {', '.join(str(p) for p in plots)}")


def cfg_dict(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from conf import ConfigError, available_configs, load_config, save_config
    from driver.cluster import ResourceError
    from driver.run_dir import RunDirError, RunLock, start_fresh
    from driver.training_data import DataError

    if any(a in ("-h", "--help", "help") for a in argv):
        print(HELP.format(configs=", ".join(available_configs())))
        return 0
    name, overrides = parse_argv(argv)
    try:
        cfg = load_config(name, overrides)
        from omegaconf import OmegaConf

        print(f"# resolved config: conf={name} {' '.join(overrides)}".rstrip())
        shown = OmegaConf.to_container(cfg)
        # The prompt templates are long; the saved config.yaml has them in full.
        shown["prompts"] = f"<{len(cfg.prompts)} templates from conf/prompts.yaml>"
        print(textwrap.indent(OmegaConf.to_yaml(shown), "  "))
        out = run_dir(cfg)
        lock = RunLock(out)   # held until this process ends: one launch per run directory
        if not cfg.run.resume:
            moved = start_fresh(out, bool(cfg.run.overwrite))
            if moved:
                print(f"# the old run in {out} was moved to {moved}")
                lock.release()
                lock = RunLock(out)
        saved = save_config(cfg, out / "config.yaml")
        print(f"# saved to {saved}")
        model_path = prepare_model(cfg)
        print(f"# model: {model_path}")
        train(cfg, model_path, out)
    except (ConfigError, DataError, RunDirError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ResourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the newest checkpoint",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
