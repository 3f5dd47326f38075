"""The tiny training step: its time split, its overhead over the model work, the PD
scorer's cost against generation, and train.async_rollout against the on-policy loop.

Runs `python launch.py conf=tiny` (real Ray, vLLM, DeepSpeed) on the same seed, on-policy
(the default) and with train.async_rollout=true, in --rounds rounds of one run each,
the order swapped every round (A B, B A, ...) so that a load that comes and goes on a
shared machine hits both alike. Validation runs only before the first and after the last
step and the no-think accuracy is off, so every step is a plain training step. From each
run's metrics.jsonl, over the steps after --skip:

  step s        timing_s/step (median), and the wall seconds between two steps' records
                (bookkeeping and logging included)
  phases        generation, PD scoring, rewards, update, weight push (timing_s/*)
  model work    seconds inside vLLM generating (slowest engine), inside vLLM teacher-
                forcing, and the learner's forward + backward + optimizer (slowest rank)
  overhead      step / model work (perf/step_overhead); goal <= 1.10 on-policy
  PD / gen      the step's PD seconds over its generation seconds; goal <= 0.20
  PD/scored     PD seconds per scored rollout over generation seconds per rollout,
                (timing_s/pd_score / scored) / (timing_s/gen / rollouts): what PD would
                cost if every rollout qualified (few do on the tiny run, so the call's
                fixed cost is spread over one or two)

Each figure of a loop is the median over its runs; the async / on-policy step-time ratio
is also given per round. The first round's reward curves (critic/score/mean per step)
are drawn side by side in a PNG beside the JSON.

    python benchmarks/bench_step.py [--steps 40] [--skip 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import Column, report  # noqa: E402
from driver import metrics as M  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OVERHEAD_GOAL, PD_GOAL = 1.10, 0.20
PHASES = {"gen_s": M.TIMING_GEN, "gen_model_s": M.TIMING_GEN_MODEL, "pd_s": M.TIMING_PD,
          "pd_model_s": M.TIMING_PD_MODEL, "reward_s": M.TIMING_REWARD,
          "update_s": M.TIMING_UPDATE, "update_model_s": M.TIMING_UPDATE_MODEL,
          "push_s": M.TIMING_WEIGHTS, "step_s": M.TIMING_STEP, "overhead": M.STEP_OVERHEAD}


def run_tiny(out: Path, name: str, steps: int, seed: int, overrides: list[str]) -> list[dict]:
    """One `launch.py conf=tiny` run; its per-step metric records (step >= 1)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "launch.py", "conf=tiny", f"run.output_dir={out}",
           f"run.name={name}", f"train.max_steps={steps}", f"run.seed={seed}",
           "eval.every=0", "eval.max_samples=8", "eval.nothink_acc_every=0",
           "checkpoint.every=1000", "ray.dashboard=false", *overrides]
    print(f"# {' '.join(cmd[1:])}", flush=True)
    log = out / f"{name}.log"
    with log.open("w") as sink:
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT
                              ).returncode
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"the {name} run failed (exit {code}); the end of {log}:\n"
                         + "\n".join(tail))
    lines = (out / name / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r[M.STEP] >= 1]


def summarise(label: str, records: list[dict], skip: int, rollouts: int) -> dict:
    """Medians of the phases over the steps after `skip`, and the PD / gen ratio."""
    kept = [r for r in records if r[M.STEP] > skip]
    if not kept:
        raise SystemExit(f"{label}: no steps after --skip {skip}; raise --steps")
    row: dict = {"run": label, "steps": len(kept)}
    for key, name in PHASES.items():
        values = [r[name] for r in kept if name in r]
        row[key] = statistics.median(values) if values else None
    by_step = {r[M.STEP]: r for r in records}
    gaps = [by_step[s]["time"] - by_step[s - 1]["time"] for s in by_step
            if s - 1 in by_step and s > skip and M.TIMING_TESTING not in by_step[s]]
    row["wall_per_step_s"] = statistics.median(gaps) if gaps else None
    row["model_s"] = row["gen_model_s"] + (row["pd_model_s"] or 0.0) + row["update_model_s"]
    # PD seconds per scored rollout over generation seconds per rollout, per step
    ratios = [(r[M.TIMING_PD] / (r[M.PD_SCORED_FRAC] * rollouts))
              / (r[M.TIMING_GEN] / rollouts) for r in kept if r[M.PD_SCORED_FRAC] > 0]
    row["pd_scored_over_gen"] = statistics.median(ratios) if ratios else None
    row["pd_over_gen"] = row["pd_s"] / row["gen_s"]
    row["pd_steps"] = len(ratios)
    row["scored_share"] = statistics.mean(r[M.PD_SCORED_FRAC] for r in kept)
    return row


def combine(label: str, runs: list[dict]) -> dict:
    """One loop's row: the median of each figure over its runs."""
    row: dict = {"run": label, "runs": len(runs)}
    for key, value in runs[0].items():
        if key not in (*row, "round") and isinstance(value, int | float):
            values = [r[key] for r in runs if r.get(key) is not None]
            row[key] = statistics.median(values) if values else None
    return row


def plot_rewards(curves: dict[str, list[tuple[int, float]]], path: Path,
                 title: str = "conf=tiny: on-policy vs train.async_rollout (same seed)") -> Path:
    """The runs' reward per step on one axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, points in curves.items():
        ax.plot(*zip(*points), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(M.SCORE.name("mean"))
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--steps", type=int, default=40,
                        help="steps per run (default 40, conf=tiny's max_steps)")
    parser.add_argument("--skip", type=int, default=4,
                        help="first steps left out of the medians (warm-up; default 4)")
    parser.add_argument("--seed", type=int, default=0, help="run.seed of every run")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of one run per loop, order swapped each round (default 2)")
    parser.add_argument("--only", choices=("sync", "async"), default=None,
                        help="run one of the two (default: both)")
    parser.add_argument("--out", default="outputs/bench/step.json", help="JSON output path")
    args = parser.parse_args(argv)
    if args.steps <= args.skip or args.rounds < 1:
        parser.error("--steps must be larger than --skip, --rounds at least 1")

    from conf import load_config

    cfg = load_config("tiny")
    rollouts = cfg.train.batch_size * cfg.rollout.n
    runs = {"on-policy": [], "async_rollout": ["train.async_rollout=true"]}
    if args.only:
        runs = {k: v for k, v in runs.items() if (k == "async_rollout") == (args.only == "async")}
    per_run, curves = [], {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        for k in range(args.rounds):
            for label in (list(runs) if k % 2 == 0 else list(runs)[::-1]):
                load = os.getloadavg()[0]
                records = run_tiny(Path(tmp), f"{label.replace('-', '_')}_{k}", args.steps,
                                   args.seed, runs[label])
                per_run.append({**summarise(label, records, args.skip, rollouts),
                                "round": k, "load_1m": load})
                curves.setdefault(label, [(r[M.STEP], r[M.SCORE.name("mean")])
                                          for r in records])
    rows = [combine(label, [r for r in per_run if r["run"] == label]) for label in runs]
    columns = [Column("run", "run"), Column("step s", "step_s", ".3f"),
               Column("wall/step", "wall_per_step_s", ".3f"),
               Column("gen", "gen_s", ".3f"), Column("(vLLM)", "gen_model_s", ".3f"),
               Column("PD", "pd_s", ".3f"), Column("(vLLM)", "pd_model_s", ".3f"),
               Column("reward", "reward_s", ".3f"), Column("update", "update_s", ".3f"),
               Column("(compute)", "update_model_s", ".3f"), Column("push", "push_s", ".3f"),
               Column("step/model", "overhead", ".2f"), Column("PD/gen", "pd_over_gen", ".2f"),
               Column("PD/scored", "pd_scored_over_gen", ".2f")]
    notes = []
    by = {r["run"]: r for r in rows}
    if "on-policy" in by:
        r = by["on-policy"]
        met = r["overhead"] <= OVERHEAD_GOAL
        notes.append(f"step overhead (on-policy): {r['overhead']:.2f} (goal <= "
                     f"{OVERHEAD_GOAL:.2f}: {'met' if met else 'missed'})")
        notes.append(f"PD / generation time: {r['pd_over_gen']:.2f} (goal <= {PD_GOAL:.2f}: "
                     f"{'met' if r['pd_over_gen'] <= PD_GOAL else 'missed'}); scored share "
                     f"{r['scored_share']:.3f}")
        if r["pd_scored_over_gen"] is not None:
            notes.append(f"PD per scored rollout / gen per rollout: "
                         f"{r['pd_scored_over_gen']:.2f} over {r['pd_steps']:.0f} steps with "
                         f"scored rollouts (goal <= {PD_GOAL:.2f}: "
                         f"{'met' if r['pd_scored_over_gen'] <= PD_GOAL else 'missed'})")
    if len(by) == 2:
        a, b = by["on-policy"], by["async_rollout"]
        notes.append(f"async_rollout step time: {b['step_s'] / a['step_s']:.2f}x of on-policy "
                     f"(wall per step {b['wall_per_step_s'] / a['wall_per_step_s']:.2f}x)")
        for k in range(args.rounds):
            on, ahead = (next(r for r in per_run if r["round"] == k and r["run"] == label)
                         for label in ("on-policy", "async_rollout"))
            notes.append(f"  round {k}: {ahead['step_s'] / on['step_s']:.2f}x (load "
                         f"{on['load_1m']:.1f} / {ahead['load_1m']:.1f} at the runs' starts)")
        last = {k: statistics.mean(v for _, v in pts[-5:]) for k, pts in curves.items()}
        notes.append("reward, mean of the last 5 steps (round 0): " + ", ".join(
            f"{k} {v:.3f}" for k, v in last.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = plot_rewards(curves, out.with_suffix(".png"))
    notes.append(f"reward curves: {png}")
    report("step", rows, columns, out, title=f"conf=tiny step: B*G = {rollouts} rollouts, "
           f"{args.steps} steps per run, medians after step {args.skip}",
           extra={"goals": {"overhead": OVERHEAD_GOAL, "pd_over_gen": PD_GOAL,
                             "pd_scored_over_gen": PD_GOAL}, "runs": per_run,
                  "reward_curves": curves, "wall_s": time.perf_counter() - start},
           notes=notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
