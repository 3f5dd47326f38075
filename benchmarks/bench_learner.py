"""Seconds per learner step, and the share of a step spent outside forward/backward/optimizer.

For each learner world size (default 1 and 2 ranks) on the embedded tiny model: start the
LearnerGroup, build one batch like the tiny config's (prompts x rollouts with images and
random completions), then time `steps` rounds of [learner step + weight push to a stand-in
receiver that loads the weights into a transformers model]. Reported per world size:

  step_s       wall seconds of `LearnerGroup.step` seen by the driver
  compute_s    the slowest rank's forward + backward + optimizer seconds
  push_s       wall seconds of `push_weights` (gather, bucketing, Ray transfer, load)
  overhead     (step_s - compute_s + push_s) / (step_s + push_s): the share of a training
               round outside forward/backward/optimizer (goal: < 0.10)

    python benchmarks/bench_learner.py --steps 5 --out outputs/bench/learner.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import Column, report  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conf", default="tiny", help="config name (default: tiny)")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2],
                        help="learner world sizes to time (default: 1 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds per world size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--prompts", type=int, default=None,
                        help="prompts per step (default: conf train.batch_size)")
    parser.add_argument("--rollouts", type=int, default=None,
                        help="completions per prompt (default: conf rollout.n)")
    parser.add_argument("--completion-len", type=int, default=None,
                        help="tokens per completion (default: conf rollout.max_new_tokens)")
    parser.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    parser.add_argument("--out", default="outputs/bench/learner.json", help="JSON output path")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    return parser.parse_args(argv)


def make_batch(cfg, model_dir: str, prompts: int, rollouts: int, length: int, seed: int = 0):
    """Prompt groups as the driver sends them (images on disk, sizes vary; the prompt ids
    the engines would feed) with random completions of `length` tokens."""
    import tempfile

    import numpy as np
    from PIL import Image

    from learner.experience import Completion, PromptGroup
    from model_inputs.prompting import PromptBuilder

    builder = PromptBuilder(model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    folder = Path(tempfile.mkdtemp(prefix="bench-learner-"))
    rng = np.random.RandomState(seed)
    vocab = len(builder.tokenizer)
    groups = []
    for p in range(prompts):
        size = 56 + 28 * (p % 4)
        path = folder / f"{p}.png"
        Image.fromarray((rng.rand(size, size, 3) * 255).astype("uint8")).save(path)
        sample = {"id": f"bench-{p}", "task": "score", "question": None, "images": [str(path)]}
        completions = [
            Completion(rng.randint(20, vocab, size=length).tolist(), [0.0] * length,
                       float(rng.randn()))
            for _ in range(rollouts)
        ]
        prompt_ids = builder.learner_inputs(sample, "think")["prompt_ids"]
        groups.append(PromptGroup(sample, "think", prompt_ids, completions))
    return groups


def make_receiver(model_dir: str):
    """A stand-in rollout engine: loads pushed buckets into a transformers model."""
    import ray
    import torch

    class Receiver:
        def __init__(self, path):
            from transformers import AutoModelForImageTextToText

            self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)

        def update_weights(self, version, handles):
            state = {name: t for handle in handles for name, t in ray.get(handle).items()}
            self.model.load_state_dict(state, strict=True)
            return version

    return ray.remote(num_cpus=0.25)(Receiver).remote(model_dir)


def bench_world(args, world: int, receiver, model_dir: str) -> dict:
    from tqdm import tqdm

    from conf import load_config
    from learner.group import LearnerGroup
    from weight_sync.sync import WeightSync

    cfg = load_config(args.conf, [*args.overrides, f"learner.num_learners={world}"])
    prompts = args.prompts or cfg.train.batch_size
    rollouts = args.rollouts or cfg.rollout.n
    length = args.completion_len or cfg.rollout.max_new_tokens
    groups = make_batch(cfg, model_dir, prompts, rollouts, length)
    start = time.perf_counter()
    group = LearnerGroup(cfg, total_steps=args.warmup + args.steps, model_path=model_dir,
                         name_prefix=f"bench-learner-w{world}")
    setup_s = time.perf_counter() - start
    rows = []
    sync = WeightSync()
    sync.register("receiver", receiver)
    try:
        for grp, logprobs in zip(groups, group.compute_logprobs(groups)):
            for comp, values in zip(grp.completions, logprobs):
                comp.old_logprobs = values
        for i in tqdm(range(args.warmup + args.steps), desc=f"{world} rank(s)", leave=False):
            stats = group.step(groups)
            push = sync.publish(group)
            if i >= args.warmup:
                rows.append({"step_s": stats["step_s"], "compute_s": stats["compute_s"],
                             "push_s": push["gather_s"] + push["deliver_s"],
                             "push_bytes": push["bytes"], "push_buckets": push["buckets"],
                             "loss": stats["loss"]})
    finally:
        group.shutdown()
    step_s = sum(r["step_s"] for r in rows)
    compute_s = sum(r["compute_s"] for r in rows)
    push_s = sum(r["push_s"] for r in rows)
    return {
        "world": world, "zero_stage": cfg.learner.zero_stage, "setup_s": setup_s,
        "sequences": prompts * rollouts, "completion_len": length,
        "step_s_median": statistics.median(r["step_s"] for r in rows),
        "compute_s_median": statistics.median(r["compute_s"] for r in rows),
        "push_s_median": statistics.median(r["push_s"] for r in rows),
        "push_mb": rows[0]["push_bytes"] / 2**20, "push_buckets": rows[0]["push_buckets"],
        "overhead_fraction": (step_s - compute_s + push_s) / (step_s + push_s),
        "push_fraction": push_s / (step_s + push_s),
        "rounds": rows,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    import ray

    from conf import load_config
    from learner.checkpoint import resolve_model_path

    cfg = load_config(args.conf, args.overrides)
    model_dir = resolve_model_path(cfg.model.path, cfg.model.cache_dir)
    ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False,
             log_to_driver=False)
    try:
        receiver = make_receiver(model_dir)
        results = [bench_world(args, w, receiver, model_dir) for w in args.worlds]
    finally:
        ray.shutdown()
    notes = []
    if len(results) > 1:
        notes.append(f"step time, {results[-1]['world']} vs {results[0]['world']} ranks: "
                     f"{results[-1]['step_s_median'] / results[0]['step_s_median']:.2f}x")
    report("learner", results, [
        Column("ranks", "world", "d"), Column("ZeRO", "zero_stage", "d"),
        Column("seqs", "sequences", ".0f"), Column("step s", "step_s_median", ".3f"),
        Column("compute s", "compute_s_median", ".3f"), Column("push s", "push_s_median", ".3f"),
        Column("push MB", "push_mb", ".2f"), Column("overhead", "overhead_fraction", ".1%")],
        args.out, notes=notes, extra={"conf": args.conf, "overrides": args.overrides})
    return results


if __name__ == "__main__":
    main()
