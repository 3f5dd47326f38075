"""LoRA against full fine-tuning on conf=tiny, side by side: step time, generation, the
update's compute, the weight push (bytes and seconds), the learner's peak memory and the
reward.

Runs `python launch.py conf=tiny` (real Ray, vLLM, DeepSpeed) on one seed: full
fine-tuning (the config's lr), and `lora.rank=8` (its own lr, default 5e-3: LoRA moves
fewer weights and needs a larger step) with each way of pushing it: the adapter, which the
engines serve through vLLM's LoRA support (lora.push=adapter), and the merged weights, to
plain engines (lora.push=merged). --rounds rounds, the order rotated every round so that
a load that comes and goes on a shared machine hits all alike; figures are medians over
the steps after --skip and over the rounds. The first round's reward curves are drawn in
a PNG beside the JSON.

    python benchmarks/bench_lora.py [--steps 40] [--rounds 2] [--rank 8] [--lr 5e-3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_step import combine, plot_rewards, run_tiny, summarise  # noqa: E402
from benchmarks.report import Column, report  # noqa: E402
from driver import metrics as M  # noqa: E402

EDGE = 10   # steps averaged for the reward at the start and the end of a run


def extra_figures(records: list[dict], skip: int) -> dict:
    """What bench_step's summary does not hold: push bytes, peak memory, reward edges."""
    kept = [r for r in records if r[M.STEP] > skip]
    scores = [r[M.SCORE.name("mean")] for r in records]
    return {"push_mb": statistics.median(r[M.PUSH_BYTES] for r in kept) / 1e6,
            "peak_gb": max(r[M.PEAK_MEMORY] for r in records),
            "reward_first": statistics.mean(scores[:EDGE]),
            "reward_last": statistics.mean(scores[-EDGE:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--steps", type=int, default=40, help="steps per run (default 40)")
    parser.add_argument("--skip", type=int, default=4,
                        help="first steps left out of the medians (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="run.seed of every run")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    parser.add_argument("--rank", type=int, default=8, help="lora.rank (default 8)")
    parser.add_argument("--lr", type=float, default=5e-3, help="LoRA's train.lr (5e-3)")
    parser.add_argument("--out", default="outputs/bench/lora.json", help="JSON output path")
    args = parser.parse_args(argv)
    if args.steps <= max(args.skip, 2 * EDGE) or args.rounds < 1 or args.rank < 1:
        parser.error(f"--steps must exceed --skip and {2 * EDGE}; --rounds, --rank >= 1")

    from conf import load_config

    cfg = load_config("tiny")
    rollouts = cfg.train.batch_size * cfg.rollout.n
    lora = [f"lora.rank={args.rank}", f"train.lr={args.lr}"]
    runs = {"full": [], "lora, adapter push": lora,
            "lora, merged push": [*lora, "lora.push=merged"]}
    per_run, curves = [], {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        for k in range(args.rounds):
            for label in list(runs)[k % len(runs):] + list(runs)[:k % len(runs)]:
                load = os.getloadavg()[0]
                name = "".join(c if c.isalnum() else "_" for c in label)
                records = run_tiny(Path(tmp), f"{name}_{k}", args.steps, args.seed, runs[label])
                per_run.append({**summarise(label, records, args.skip, rollouts),
                                **extra_figures(records, args.skip), "round": k,
                                "load_1m": load})
                curves.setdefault(label, [(r[M.STEP], r[M.SCORE.name("mean")])
                                          for r in records])
    rows = [combine(label, [r for r in per_run if r["run"] == label]) for label in runs]
    columns = [Column("run", "run"), Column("step s", "step_s", ".3f"),
               Column("gen", "gen_s", ".3f"), Column("update", "update_s", ".3f"), Column("(compute)", "update_model_s", ".3f"),
               Column("push s", "push_s", ".3f"), Column("push MB", "push_mb", ".3f"),
               Column("learner GB", "peak_gb", ".2f"),
               Column(f"reward first {EDGE}", "reward_first", ".3f"),
               Column(f"last {EDGE}", "reward_last", ".3f")]
    full = rows[0]
    notes = [f"{r['run']} / full: step time {r['step_s'] / full['step_s']:.2f}x, generation "
             f"{r['gen_s'] / full['gen_s']:.2f}x, update "
             f"{r['update_model_s'] / full['update_model_s']:.2f}x, push bytes "
             f"{r['push_mb'] / full['push_mb']:.4f}x, push time "
             f"{r['push_s'] / full['push_s']:.2f}x, learner peak memory "
             f"{r['peak_gb'] / full['peak_gb']:.2f}x" for r in rows[1:]]
    notes += [f"  round {r['round']} {r['run']}: step {r['step_s']:.3f} s, load "
              f"{r['load_1m']:.1f}" for r in per_run]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = plot_rewards(curves, out.with_suffix(".png"),
                       f"conf=tiny: full fine-tuning vs LoRA rank {args.rank} (same seed)")
    notes.append(f"reward curves: {png}")
    report("lora", rows, columns, out, title=f"conf=tiny, full fine-tuning vs LoRA: "
           f"{args.steps} steps per run, medians after step {args.skip}",
           extra={"runs": per_run, "reward_curves": curves,
                  "wall_s": time.perf_counter() - start}, notes=notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
