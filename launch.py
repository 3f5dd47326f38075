"""Refine-IQA on Ray: the entry point.

    python launch.py conf=NAME|PATH [key.sub=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python launch.py conf=stage2

Reads the config (conf/NAME.yaml, or a YAML file anywhere, with the parents it names),
applies the overrides, prints the resolved config and saves it in the run directory
(run.output_dir/run.name) with the files it came from, prepares the model (conf=tiny
builds the embedded tiny model on the spot) and runs the configured stage.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

HELP = """\
usage: python launch.py [conf=]NAME|PATH [key.sub=value ...] [--dry-run]

Runs Refine-IQA training (Stage-1 perception or Stage-2 scoring) on Ray.

  conf=NAME        a packaged config, conf/NAME.yaml (default: tiny)
  conf=PATH        a config file anywhere (a .yaml/.yml suffix or a "/"), e.g.
                   conf=experiments/mine.yaml. A config names its parents with
                   `defaults: [...]`: packaged names, sibling files of the same folder
                   (tried first) or paths; conf/base.yaml declares every key.
  --dry-run        every check a run makes before it starts (config, data, each
                   sample's prompt tokens against rollout.max_model_len, resources node
                   by node) and the plan (roles, nodes, estimated memory, the longest
                   prompt), starting no actor; exit status 1 with one line per problem
  key.sub=value    override one key, e.g. train.lr=1e-5 rollout.n=4 run.name=try1.
                   Values are YAML (1e-5 is a float, [1,1,0] a list, null is None) and must
                   have the type of base.yaml's default. Unknown keys are an error that names
                   the closest valid key.

configs: {configs}

The resolved config is printed and saved as <run.output_dir>/<run.name>/config.yaml,
headed by the files it was merged from and the overrides. Examples:
  python launch.py conf=tiny                           # embedded tiny model, CPU, minutes
  python launch.py conf=stage1 model.path=/models/Qwen2.5-VL-7B-Instruct
  python launch.py conf=stage2 model.path=outputs/stage1-stage1/export
  python launch.py conf=experiments/mine.yaml         # mine.yaml: defaults: [tiny] ...
"""


def parse_argv(argv: list[str]) -> tuple[str, list[str], bool]:
    """(the config named by `conf=NAME|PATH` or a first bare argument, default tiny; the
    overrides; whether --dry-run was asked for)."""
    name, overrides, dry = "tiny", [], False
    for k, arg in enumerate(argv):
        if arg == "--dry-run":
            dry = True
        elif arg.startswith(("conf=", "--conf=")):
            name = arg.split("=", 1)[1]
        elif k == 0 and "=" not in arg and not arg.startswith("-"):
            name = arg   # `python launch.py stage2 --dry-run`
        else:
            overrides.append(arg)
    return name, overrides, dry


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


def train(cfg, model_path: str, out: Path) -> None:
    """Set up the run - its data, its actors (cluster.start), its loop (driver.trainer) -
    and run the steps."""
    from cluster.start import start_actors
    from driver.experience_maker import reward_plugins
    from driver.trainer import Trainer
    from driver.training_data import check_resumable, run_data
    from driver.validation import best_metric

    data = run_data(cfg, model_path)   # every sample checked: refusals before any actor
    check_resumable(cfg, out, data.fingerprint)   # refusals come before any actor starts
    best, plugins = best_metric(cfg), reward_plugins(cfg)
    running = start_actors(cfg, model_path, engines=True, learners=True)
    Trainer(cfg, out, data, running, best, plugins).fit()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from cluster.resources import ResourceError
    from conf import ConfigError, available_configs, load_config_with_sources, save_config
    from driver.run_dir import RunDirError, RunLock, start_fresh
    from driver.training_data import DataError

    if any(a in ("-h", "--help", "help") for a in argv):
        print(HELP.format(configs=", ".join(available_configs())))
        return 0
    name, overrides, dry = parse_argv(argv)
    try:
        cfg, sources = load_config_with_sources(name, overrides)
        from omegaconf import OmegaConf

        print(f"# resolved config: conf={name} {' '.join(overrides)}".rstrip())
        print(f"# from: {', '.join(str(p) for p in sources)}")
        shown = OmegaConf.to_container(cfg)
        # The prompt templates are long; the saved config.yaml has them in full.
        shown["prompts"] = f"<{len(cfg.prompts)} templates from conf/prompts.yaml>"
        print(textwrap.indent(OmegaConf.to_yaml(shown), "  "))
        out = run_dir(cfg)
        if dry:   # checks and the plan; the run directory is left as it is
            model_path = prepare_model(cfg)
            print(f"# model: {model_path}")
            from driver.dry_run import dry_run

            return dry_run(cfg, model_path, out)
        lock = RunLock(out)   # held until this process ends: one launch per run directory
        if not cfg.run.resume:
            moved = start_fresh(out, cfg.run.overwrite)
            if moved:
                print(f"# the old run in {out} was moved to {moved}")
                lock.release()
                lock = RunLock(out)
        saved = save_config(cfg, out / "config.yaml", sources, overrides)
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
