"""`python launch.py CONF --dry-run`: every check a run makes before it starts an actor,
and the plan it would follow, without starting one.

What is checked, each problem one line:
- the config (conf/loader.py), the reward plug-ins, `checkpoint.best_metric`;
- the data, as a run checks it before it starts (driver.training_data.run_data):
  manifests, splits, leakage, and every training and held-out sample as the engines will
  read it, its prompt's tokens (image placeholders expanded at the configured pixels, both
  images of a full-reference prompt) against `rollout.max_model_len` less
  `rollout.max_new_tokens`; the samples that would be skipped are counted, and too few
  usable ones for a step is a problem;
- the resources, in the cluster the run would use (joined, or a local one started and
  stopped again): totals, then node by node.

What is printed: the steps and samples, each role with its nodes, CPUs and GPUs, the
estimated memory of each actor (cluster.memory: estimates, labelled so), and the longest
prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def token_budget(cfg: Any) -> int:
    """Prompt tokens a sample may take: the context less the answer's room."""
    return cfg.rollout.max_model_len - cfg.rollout.max_new_tokens


def prompt_lengths(cfg: Any, model_path: str, samples: list[dict]) -> dict[str, int]:
    """Each sample's prompt tokens (model_inputs.prompting.PromptBuilder.prompt_length),
    by id; a sample that cannot be read is left out (the data checks report it)."""
    from tqdm import tqdm

    from model_inputs.prompting import PromptBuilder

    builder = PromptBuilder(model_path, cfg.model.min_pixels, cfg.model.max_pixels,
                            cfg.prompts, cfg.model.trust_remote_code)
    mode = "think" if cfg.stage == 2 else "no_think"
    out = {}
    for sample in tqdm(samples, desc="prompt lengths", unit="sample", leave=False):
        try:
            out[str(sample["id"])] = builder.prompt_length(sample, mode)
        except (ValueError, OSError):
            continue
    return out


def adapter_parameters(cfg: Any, model_dir: Path) -> int:
    """The LoRA adapter's parameters (0 without LoRA), from the model's config alone."""
    import math

    from weight_sync.lora import adapter_shapes

    if cfg.lora.rank == 0:
        return 0
    shapes = adapter_shapes(str(model_dir), cfg.lora, cfg.model.trust_remote_code)
    return sum(math.prod(shape) for shape in shapes.values())


def _size(gib: float) -> str:
    return f"{gib:.1f} GiB" if gib >= 1 or gib == 0 else f"{gib * 1024:.0f} MiB"


def plan_lines(cfg: Any, model_path: str, data: Any, lengths: dict[str, int]) -> list[str]:
    """The printed plan (module docstring)."""
    from cluster.memory import estimate, local_model_dir, num_parameters
    from cluster.resources import layout

    stream = data.stream
    lines = [f"steps: {data.steps}, {stream.batch_size} images per step; usable samples: "
             f"{len(stream.samples) - len(stream.skipped)} training, {len(data.val)} "
             f"validation, {len(data.test)} test ({len(stream.skipped)}, "
             f"{len(data.val_skipped)} and {len(data.test_skipped)} would be skipped, and "
             "counted)"]
    for role in layout(cfg):
        if role.group:   # colocated: in the learners' bundles, with a share of each GPU
            lines.append(f"role {role.name}: beside the {role.group}; engine i in bundle "
                         f"{role.slots}[i], the scoring actor in bundle {role.scorer_slot}; "
                         f"each asks {role.gpu_share:g} of its bundle's GPU")
            continue
        shares = "; ".join(", ".join(f"{v:g} {k}" for k, v in share.items() if v)
                           or "nothing reserved" for share in role.shares)
        where = "bundle" if role.strategy == "PACK" else "node"
        lines.append(f"role {role.name}: {len(role.shares)} {where}(s); actor i in {where} "
                     f"{role.slots}[i]; each {where} gives it {shares}")
    local = local_model_dir(model_path)
    params = num_parameters(local) if local is not None else None
    if params is None:
        lines.append(f"memory and prompt lengths: not estimated ({model_path} is not on this "
                     "machine: not a directory, not in the Hugging Face cache)")
    else:
        lines.append(f"memory, ESTIMATED from {params / 1e9:.3g} B parameters "
                     "(cluster/memory.py says what is counted):")
        lines += [f"  {m.count} x {m.role}: GPU {_size(m.gpu_gib)}, host "
                  f"{_size(m.host_gib)} each ({m.note})"
                  for m in estimate(cfg, params, adapter_parameters(cfg, local))]
    if lengths:
        sid, longest = max(lengths.items(), key=lambda item: item[1])
        lines.append(f"longest prompt: {longest} tokens (sample {sid}); budget "
                     f"{token_budget(cfg)} = rollout.max_model_len {cfg.rollout.max_model_len}"
                     f" - rollout.max_new_tokens {cfg.rollout.max_new_tokens}")
    return lines


def dry_run(cfg: Any, model_path: str, out: Path) -> int:
    """Run the checks and print the plan; returns the exit status (0: ready to run, 1: one
    line per problem printed to stderr)."""
    import sys

    from cluster.connect import connect, node_resources
    from cluster.resources import ResourceError, check_resources
    from conf import ConfigError
    from driver.experience_maker import reward_plugins
    from driver.training_data import DataError, check_resumable, run_data
    from driver.validation import best_metric

    problems: list[str] = []
    data = None
    for check in (lambda: best_metric(cfg), lambda: reward_plugins(cfg)):
        try:
            check()
        except ConfigError as err:
            problems.append(str(err))
    from cluster.memory import local_model_dir

    # A model that is not on this machine (a hub id to be downloaded by the run) cannot
    # count prompt tokens here: the other checks still run.
    local = local_model_dir(model_path) is not None
    try:
        data = run_data(cfg, model_path if local else None)
        check_resumable(cfg, out, data.fingerprint)
    except DataError as err:
        problems.append(str(err))
    usable = ([s for s in data.stream.samples if str(s["id"]) not in data.stream.skipped]
              if data is not None else [])
    lengths = (prompt_lengths(cfg, model_path, usable + data.val + data.test)
               if usable and local else {})
    try:
        check_resources(cfg, connect(cfg, log_to_driver=False), nodes=node_resources())
    except ResourceError as err:
        problems.append(str(err))
    finally:
        import ray

        ray.shutdown()   # a local cluster started for the check goes; a joined one stays
    if data is not None:
        print("\n".join(f"# {line}" for line in plan_lines(cfg, model_path, data, lengths)))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"# dry run: {'ready' if not problems else f'{len(problems)} problem(s)'}; "
          "no actor was started")
    return 1 if problems else 0
