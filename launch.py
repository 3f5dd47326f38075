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
    """The model directory or hub id to load; builds the embedded tiny model if asked."""
    from conf import ConfigError

    path = str(cfg.model.path)
    if path == "tiny":
        from synth.tiny_model import build_tiny_model

        return str(build_tiny_model(cfg.model.cache_dir))
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ConfigError(
                f"model.path={path} exists but has no config.json: point it at a Hugging Face "
                "model directory (e.g. a run's export/ folder)")
        return str(local)
    if path.count("/") == 1 and not path.startswith((".", "/", "~")):
        return path  # a hub id such as Qwen/Qwen2.5-VL-7B-Instruct; loaded from the HF cache
    raise ConfigError(
        f"model.path={path} is neither a local directory nor a hub id (org/name); "
        "use model.path=tiny for the embedded model")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("# set-up done. The training loop arrives with the launch.py issue; "
          "nothing more to run yet.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
