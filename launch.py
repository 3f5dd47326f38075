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
    """The model to load for `model.path`: "tiny" (the embedded model, built and warmed
    up on the spot), a model directory, a run directory (its export/ or newest
    checkpoint), a checkpoint, or a hub id - resolved as the evaluations resolve it."""
    from conf import ConfigError
    from evals.engines import resolve_eval_model

    try:
        return resolve_eval_model(cfg)
    except FileNotFoundError as exc:
        raise ConfigError(f"model.path: {exc}") from None


def resolve_manifests(cfg) -> tuple[Path, Path | None]:
    """(train, test) manifests: the configured ones, or the embedded mini dataset's."""
    from conf import ConfigError

    train_m, test_m = cfg.data.train_manifest, cfg.data.test_manifest
    if train_m is None:
        from synth.mini_dataset import build_mini_dataset

        mini = build_mini_dataset(Path(cfg.model.cache_dir) / "mini")
        train_m = mini[f"stage{cfg.stage}_train"]
        test_m = test_m or mini[f"stage{cfg.stage}_test"]
    for key, path in (("data.train_manifest", train_m), ("data.test_manifest", test_m)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{key}={path} does not exist: build one with synth.perception "
                              "or synth.iqa_datasets (README), or leave it null for the mini set")
    return Path(train_m), Path(test_m) if test_m else None


def load_samples(manifest: Path) -> list[dict]:
    """Manifest samples with their image paths made absolute."""
    from synth.manifest import read_manifest, resolve_images

    return [{**s, "images": [str(p) for p in resolve_images(s, manifest)]}
            for s in read_manifest(manifest)]


def total_steps(cfg, steps_per_epoch: int) -> int:
    """train.max_steps if set, else epochs x steps per epoch."""
    if cfg.train.max_steps is not None:
        return int(cfg.train.max_steps)
    return int(cfg.train.epochs) * steps_per_epoch


def start_actors(cfg, model_path: str, steps: int):
    """The three named actor groups: scoring actor (Stage-2), rollout engines, learners."""
    from actors.engine_group import EngineGroup
    from actors.scoring_actor import start_scoring_actor
    from actors.vllm_engine import settings_from_config
    from learner.group import LearnerGroup

    scorer = None
    if int(cfg.stage) == 2:
        scorer = start_scoring_actor(settings_from_config(cfg, model_path, "scoring"),
                                     num_cpus=cfg.scoring.num_cpus,
                                     num_gpus=cfg.scoring.num_gpus,
                                     pd_digits=int(cfg.reward.pd_digits),
                                     cpu_slot=int(cfg.rollout.num_engines))  # after engines
    engines = EngineGroup.from_config(cfg, settings_from_config(cfg, model_path, "rollout"),
                                      weight_peers=(scorer,) if scorer else ())
    learners = LearnerGroup(cfg, total_steps=steps, model_path=model_path)
    return scorer, engines, learners


def train(cfg, model_path: str, out: Path) -> None:
    """The stage loop of DESIGN.md: generate, reward, update, push weights, log, save."""
    import time

    from actors.cluster import check_resources, connect
    from actors.data_stream import DataStream
    from actors.experience_maker import ExperienceMaker
    from actors.metrics_log import MetricsLogger, ThinkCollapseWatch
    from actors.prompting import PromptBuilder
    from evals.plot import plot_run

    train_manifest, _ = resolve_manifests(cfg)
    try:
        samples = load_samples(train_manifest)
    except ValueError as exc:
        from conf import ConfigError

        raise ConfigError(str(exc)) from None
    # One optimizer step over batch_size x grad_accum images: the learner weighs every
    # token of them in one update, which is what accumulation over rounds would give.
    per_step = int(cfg.train.batch_size) * int(cfg.train.grad_accum)
    stream = DataStream(samples, per_step, int(cfg.run.seed), bool(cfg.data.shuffle))
    steps = total_steps(cfg, stream.steps_per_epoch)
    check_resources(cfg, connect(cfg))
    scorer, engines, learners = start_actors(cfg, model_path, steps)
    receivers = list(engines.handles) + ([scorer] if scorer else [])
    builder = PromptBuilder(model_path, cfg.model.min_pixels, cfg.model.max_pixels,
                            prompts=cfg.prompts)
    maker = ExperienceMaker(cfg, engines, scorer, builder)
    watch = ThinkCollapseWatch(float(cfg.logging.think_collapse_fraction))

    step, version = 0, 0
    state = learners.load_checkpoint(out) if cfg.run.resume else None
    if state:
        step, version = int(state["step"]), int(state["weights_version"])
        stream.load_state(state["data"])
        watch.early = list(state.get("think_early", []))
        learners.push_weights(receivers, version)   # engines start from model_path
        engines.expect_version(version)
        print(f"# resumed from step {step} ({learners.last_loaded})")
    logger = MetricsLogger(out, cfg_dict(cfg), bool(cfg.logging.wandb),
                           str(cfg.logging.wandb_project), resume_from_step=step)
    from tqdm import tqdm

    bar = tqdm(total=steps, initial=step, desc=f"stage {cfg.stage}", unit="step")
    while step < steps:
        step += 1
        t_step = time.perf_counter()
        epoch, batch = stream.next_batch()
        exp = maker.make(batch)
        t = time.perf_counter()
        stats = learners.step(exp.groups)
        update_s = time.perf_counter() - t
        version += 1
        push = learners.push_weights(receivers, version)
        engines.expect_version(version)
        metrics = {**exp.metrics, "epoch": epoch, "weights/version": version,
                   "actor/pg_loss": stats.get("pg_loss"), "actor/pg_clipfrac": stats.get("clip_frac"),
                   "actor/ppo_kl": stats.get("approx_kl"), "actor/entropy": stats.get("entropy"),
                   "actor/grad_norm": stats.get("grad_norm"), "actor/lr": stats.get("lr"),
                   "timing/update": update_s, "timing/weight_push": push["seconds"],
                   "events/engine_restarts": float(engines.metrics["restarts"]),
                   "events/weight_push_unreachable": push.get("unreachable", 0.0),
                   "data/skipped_samples": float(len(stream.skipped))}
        every = int(cfg.eval.nothink_acc_every)
        if int(cfg.stage) == 2 and every > 0 and (step % every == 0 or step == 1):
            metrics["eval/no_think_answer_acc"] = maker.no_think_accuracy(batch)
        metrics["timing/step"] = time.perf_counter() - t_step
        metrics["perf/tokens_per_sec"] = metrics["rollout/completion_tokens"] / metrics["timing/step"]
        if int(cfg.stage) == 2:
            warning = watch.update(metrics["think_length/mean"])
            if warning:
                logger.alert("think collapse", warning)
        logger.log(step, metrics)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward/final_mean']:.3f}")
        if step % int(cfg.checkpoint.every) == 0 or step == steps:
            learners.save_checkpoint(out, step, {
                "step": step, "weights_version": version, "data": stream.state(),
                "think_early": watch.early})
    bar.close()
    export = learners.export_hf(out / "export")
    logger.close()
    plots = plot_run(out)
    print(f"# done: {steps} steps. metrics: {out / 'metrics.jsonl'}, export: {export}, "
          f"plots: {', '.join(str(p) for p in plots)}")


def cfg_dict(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from actors.cluster import ResourceError
    from conf import ConfigError, available_configs, load_config, save_config

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
        saved = save_config(cfg, out / "config.yaml")
        print(f"# saved to {saved}")
        model_path = prepare_model(cfg)
        print(f"# model: {model_path}")
        train(cfg, model_path, out)
    except ConfigError as exc:
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
