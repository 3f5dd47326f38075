"""What scoring one training step's rewards costs, next to the step itself.

The budget: rewards for a Stage-2 step (B = 64 images x G = 8 rollouts of about 300
tokens) must cost well under 1% of a training step. This times everything rewards/ does in a
step, the way the loop calls it (rewards/batch.py), on synthetic rollouts with a realistic mix
of well-formed and broken outputs, and prints each part's median time and the total as a
fraction of a reference step (1 s, far shorter than any real step) and of a real 7B step
(30 s assumed: tens of seconds on 8 A100s with G = 8 rollouts of up to 1024 tokens).

    .venv/bin/python benchmarks/bench_rewards.py            # prints a table, writes JSON
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from benchmarks.report import Column, report  # noqa: E402
from conf.prompts import score_answer  # noqa: E402
from rewards import (  # noqa: E402
    batch_advantages,
    batch_pd_rewards,
    mos_digits,
    ranking_reward,
    stage2_rewards,
)

WORDS = ["the", "image", "shows", "slight", "blur", "around", "the", "edges", "while",
         "the", "centre", "keeps", "sharp", "detail", "noise", "is", "visible", "in", "dark",
         "regions", "colour", "is", "natural", "exposure", "looks", "balanced", "but",
         "compression", "blocks", "appear", "on", "the", "sky", "so", "overall", "quality"]


def _think(rng: random.Random, tokens: int) -> str:
    # About one token per word for this English vocabulary.
    return " ".join(rng.choice(WORDS) for _ in range(tokens))


def synth_step(batch: int, group: int, tokens: int, seed: int) -> tuple[list[list[str]],
                                                                         list[float]]:
    """B groups of G rollouts: 80% well-formed, the rest each of four broken kinds."""
    rng = random.Random(seed)
    mos = [round(rng.uniform(0, 4.99), 3) for _ in range(batch)]
    texts = []
    for i in range(batch):
        group_texts = []
        for _ in range(group):
            score = mos_digits(min(max(mos[i] + rng.gauss(0, 0.6), 0), 5))
            good = score_answer(score, "think", think=_think(rng, tokens))
            kind = rng.random()
            if kind < 0.80:
                text = good
            elif kind < 0.85:
                text = good.replace(score_answer("", "think").split("]")[1] + "]", "", 1)
            elif kind < 0.90:
                text = good + score_answer("1.0", "no_think")      # two answers
            elif kind < 0.95:
                text = _think(rng, tokens)                         # no tags at all
            else:
                text = good[: len(good) // 2]                      # truncated
            group_texts.append(text)
        texts.append(group_texts)
    return texts, mos


def run_step(texts, mos, z_think, z_ref, with_ranking: bool) -> dict[str, float]:
    """One step's reward work as the loop does it; returns seconds per part."""
    times = {}
    t0 = time.perf_counter()
    first = stage2_rewards(texts, mos)
    t1 = time.perf_counter()
    _ = [mos_digits(m) for m in mos]  # the strings the scoring actor teacher-forces
    t2 = time.perf_counter()
    pd = batch_pd_rewards(z_think, z_ref, scored=first.qualified)
    t3 = time.perf_counter()
    final = first.with_pd(pd)
    t4 = time.perf_counter()
    adv = batch_advantages(final.final, final.qualified)
    t5 = time.perf_counter()
    if with_ranking:
        ranking_reward(final.score, mos)
    t6 = time.perf_counter()
    assert np.isfinite(adv).all()
    times["parse + format + answer"] = t1 - t0
    times["mos_digits"] = t2 - t1
    times["PD (Eqs. 2-4)"] = t3 - t2
    times["final (Eq. 5)"] = t4 - t3
    times["advantages (Eq. 6)"] = t5 - t4
    if with_ranking:
        times["ranking reward"] = t6 - t5
    times["total"] = t6 - t0
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="images per step (B)")
    parser.add_argument("--group", type=int, default=8, help="rollouts per image (G)")
    parser.add_argument("--tokens", type=int, default=300, help="think length in tokens")
    parser.add_argument("--repeats", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-seconds", type=float, default=1.0,
                        help="reference training step to compare with (s)")
    parser.add_argument("--real-step-seconds", type=float, default=30.0,
                        help="assumed real 7B Stage-2 step (s)")
    parser.add_argument("--no-ranking", action="store_true",
                        help="leave out the optional ranking reward")
    parser.add_argument("--json", type=Path,
                        default=Path("outputs/bench/rewards.json"),
                        help="where to write the results")
    args = parser.parse_args(argv)
    if min(args.batch, args.group, args.tokens, args.repeats) < 1 or args.warmup < 0:
        parser.error("batch, group, tokens and repeats must be >= 1, warmup >= 0")

    texts, mos = synth_step(args.batch, args.group, args.tokens, args.seed)
    rng = np.random.default_rng(args.seed)
    z_think = rng.random((args.batch, args.group, 2))
    z_ref = rng.random((args.batch, 2))
    with_ranking = not args.no_ranking
    for _ in range(args.warmup):
        run_step(texts, mos, z_think, z_ref, with_ranking)
    samples: dict[str, list[float]] = {}
    for _ in tqdm(range(args.repeats), desc="reward steps", unit="step"):
        for part, seconds in run_step(texts, mos, z_think, z_ref, with_ranking).items():
            samples.setdefault(part, []).append(seconds)

    chars = statistics.fmean(len(t) for g in texts for t in g)
    check = stage2_rewards(texts, mos)
    rows = []
    for part, values in samples.items():
        median_ms = statistics.median(values) * 1e3
        rows.append({"part": part, "median_ms": median_ms,
                     "p90_ms": float(np.percentile(values, 90)) * 1e3,
                     "of_ref_step": median_ms / 1e3 / args.step_seconds,
                     "of_real_step": median_ms / 1e3 / args.real_step_seconds})
    total = rows[-1]
    n = args.batch * args.group

    title = (f"rewards for one step: B={args.batch} x G={args.group} rollouts, "
             f"~{args.tokens} tokens ({chars:.0f} chars) each; "
             f"{check.fmt.mean():.0%} well-formed; median of {args.repeats} steps")
    budget_met = bool(total["of_ref_step"] < 0.01)
    notes = [f"per rollout: {1e3 * total['median_ms'] / n:.1f} us; budget (1% of the reference "
             f"step): {'met' if budget_met else 'NOT met'}"]
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "mean_chars_per_rollout": chars, "well_formed_fraction": float(check.fmt.mean()),
        "per_rollout_us": 1e3 * total["median_ms"] / n, "budget_met": budget_met,
        "numpy": np.__version__}
    report("rewards", rows, [
        Column("part", "part"), Column("median ms", "median_ms", ".2f"),
        Column("p90 ms", "p90_ms", ".2f"),
        Column(f"of {args.step_seconds:g} s", "of_ref_step", ".3%"),
        Column(f"of {args.real_step_seconds:g} s", "of_real_step", ".4%")],
        args.json, title=title, notes=notes, extra=result)
    result["rows"] = rows
    return result


if __name__ == "__main__":
    main()
