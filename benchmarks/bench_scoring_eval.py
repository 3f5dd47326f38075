"""Images per second of the scoring evaluation on the tiny model, and the share of its
wall time spent outside vLLM (goal: at most 10%).

The evaluation (evals.scoring_eval.evaluate_scoring, numeric and Eq. 8 inference) runs on
the mini dataset's Stage-2 images in the no-think mode, then in the think mode, through
a rollout engine and the scoring actor in Ray. The two actors here are the project's own
classes with one addition: they note when they are inside vLLM's generate call (`_run`).
The rollout engine and the scoring actor work at the same time, so "inside vLLM" is the
wall time during which at least one of them is in vLLM (the union of their intervals,
on the machine's monotonic clock), and "outside vLLM" the rest of the wall time, split in
- actors+Ray: an engine call is in flight but neither actor is in vLLM (Ray, image
  loading and prompt building in the actors, results travelling back);
- driver: no engine call is in flight (parsing, metrics, JSON / markdown / PNG writing
  that the actors' work does not hide).
The JSON rows also hold head_s (before the first vLLM call: the first batch's inputs
built in the actors) and tail_s (after the last: the last summary and scatter plot, the
reports), which do not grow with --images, and each repetition's wall time.
Engine start-up is not timed; a short warm-up on other images runs first, and the
engines' prefix and image caches are emptied before each mode (as in a one-mode run).
The model is conf=tiny's (warmed up on the answer format), so think answers carry a score
prefix part of the time and Eq. 8 in think mode is exercised.

    .venv/bin/python benchmarks/bench_scoring_eval.py          # prints a table, writes JSON
    .venv/bin/python benchmarks/bench_scoring_eval.py --images 20 --out /tmp/b.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from actors.rollout_engine import RolloutEngine  # noqa: E402
from actors.scoring_actor import ScoringActor  # noqa: E402
from benchmarks.report import Column, report  # noqa: E402
from evals.engines import EvalEngines  # noqa: E402

GOAL = 0.10   # the most of the evaluation's wall time that may be spent outside vLLM

Interval = tuple[float, float]


def covered(intervals: list[Interval], start: float, end: float) -> float:
    """Seconds of [start, end] covered by at least one of `intervals` (their union)."""
    total, reach = 0.0, start
    for a, b in sorted(intervals):
        a, b = max(a, reach), min(b, end)
        if b > a:
            total += b - a
            reach = b
    return total


class _TimedRun:
    """Notes the (start, end) of every call into vLLM's generate (`_run`)."""

    vllm_spans: list[Interval]   # set in __init__ (mixed in before an EngineHost)

    def __init__(self, *args, **kwargs):
        self.vllm_spans = []
        super().__init__(*args, **kwargs)

    def _run(self, prompts, params):
        start = time.monotonic()
        try:
            return super()._run(prompts, params)
        finally:
            self.vllm_spans.append((start, time.monotonic()))

    def vllm_intervals(self) -> list[Interval]:
        """The intervals noted so far (and forgets them)."""
        spans, self.vllm_spans = self.vllm_spans, []
        return spans

    def clear_caches(self) -> None:
        """Drop the prefix and image caches, so a mode does not reuse the previous one's."""
        self.reset_caches()


class TimedRolloutEngine(_TimedRun, RolloutEngine):
    """The project's RolloutEngine, timed."""


class TimedScoringActor(_TimedRun, ScoringActor):
    """The project's ScoringActor, timed."""


class OneEngine:
    """EngineGroup's `generate` for one engine (the group only cuts the batch in chunks)."""

    def __init__(self, handle):
        self.handle = handle

    def generate(self, samples, mode, n, sampling):
        import ray

        return ray.get(self.handle.generate.remote(samples, mode, n, sampling))

    def shutdown(self):
        import ray

        ray.kill(self.handle, no_restart=True)


class TimedEvalEngines(EvalEngines):
    """EvalEngines that notes when each engine call (one batch, from the driver's side) is
    in flight."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[Interval] = []

    def _answer_batch(self, *args, **kwargs):
        start = time.monotonic()
        try:
            return super()._answer_batch(*args, **kwargs)
        finally:
            self.calls.append((start, time.monotonic()))

    def _digit_distribution(self, *args, **kwargs):
        start = time.monotonic()
        try:
            return super()._digit_distribution(*args, **kwargs)
        finally:
            self.calls.append((start, time.monotonic()))


def timed_run(engines: TimedEvalEngines, engine, scorer, manifest: Path, out: Path,
              mode: str) -> dict:
    """One timed evaluation of `mode` on fresh caches: its wall time, the union of the
    actors' vLLM intervals and how the rest splits (module docstring)."""
    import ray

    from evals.scoring_eval import evaluate_scoring

    ray.get([engine.clear_caches.remote(), scorer.clear_caches.remote()])
    ray.get([engine.vllm_intervals.remote(), scorer.vllm_intervals.remote()])
    engines.calls = []
    start = time.monotonic()
    payload = evaluate_scoring(engines, [manifest], out, (mode,), split="all")
    end = time.monotonic()
    vllm = [s for spans in ray.get([engine.vllm_intervals.remote(),
                                    scorer.vllm_intervals.remote()]) for s in spans]
    wall, inside = end - start, covered(vllm, start, end)
    busy = covered(vllm + engines.calls, start, end)   # a call in flight or vLLM
    r = next(iter(payload["datasets"].values()))["results"][mode]
    outside = max(0.0, 1.0 - inside / wall)
    n = payload["images"]
    return {"wall_s": wall, "images_per_s": n / wall, "vllm_s": inside,
            # both actors' vLLM seconds added up: > vllm_s when they overlap
            "vllm_sum_s": sum(b - a for a, b in vllm),
            "outside_vllm_share": outside,
            "actor_overhead_share": max(0.0, busy - inside) / wall,
            "driver_share": max(0.0, wall - busy) / wall,
            # where the outside time sits: before the first vLLM call (the first batch's
            # inputs built in the actors), after the last (the last summary and plot)
            "head_s": min(a for a, _ in vllm) - start,
            "tail_s": end - max(b for _, b in vllm),
            "goal": GOAL, "meets_goal": "pass" if outside <= GOAL else "miss",
            "numeric_failure_rate": r["numeric"]["failure_rate"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--images", type=int, default=40,
                        help="images timed per mode (at most the mini Stage-2 images, less --warmup)")
    parser.add_argument("--warmup", type=int, default=4, help="images of the warm-up run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed runs per mode; the one of median wall time is reported "
                             "(a shared machine's noise)")
    parser.add_argument("--out", default="outputs/bench/scoring_eval.json")
    args = parser.parse_args(argv)

    import ray

    from actors.engine_host import start_engine_actor
    from actors.engine_settings import sampling_from_config, settings_from_config
    from conf import load_config
    from evals.scoring_eval import evaluate_scoring
    from learner.checkpoint import resolve_model_path
    from synth.manifest import load_samples, write_manifest
    from synth.mini_dataset import build_mini_dataset

    cfg = load_config("tiny")
    # conf=tiny's model: warmed up on the answer format
    model = resolve_model_path(cfg.model.path, cfg.model.cache_dir)
    mini = build_mini_dataset(cfg.model.cache_dir)
    # Absolute image paths (load_samples), so the subsets can live in a temporary folder.
    pool = [s for m in ("stage2_test", "stage2_train") for s in load_samples(mini[m])]
    if args.images + args.warmup > len(pool):
        parser.error(f"--images + --warmup must be <= {len(pool)} (the mini Stage-2 set)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    warm, timed = tmp / "warmup.jsonl", tmp / "timed.jsonl"
    write_manifest(warm, pool[-args.warmup:])
    write_manifest(timed, pool[:args.images])

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    engine = start_engine_actor(TimedRolloutEngine,
                                replace(settings_from_config(cfg, model, "rollout"), cpu_slot=0),
                                "bench-rollout-engine", cfg.rollout.num_cpus_per_engine)
    scorer_settings = settings_from_config(cfg, model, "scoring")
    # CPU slot 1, as cluster.start gives the scoring actor after one engine.
    scorer = start_engine_actor(TimedScoringActor, replace(scorer_settings, cpu_slot=1),
                                "bench-scoring-actor", cfg.scoring.num_cpus,
                                pd_digits=cfg.reward.pd_digits)
    ray.get([engine.ready.remote(), scorer.ready.remote()], timeout=900)
    engines = TimedEvalEngines(OneEngine(engine), scorer,
                               sampling=sampling_from_config(cfg, greedy=True),
                               batch_size=args.batch_size)
    rows = []
    try:
        evaluate_scoring(engines, [warm], tmp / "warm", ("no_think", "think"), split="all")
        for mode in ("no_think", "think"):
            runs = sorted((timed_run(engines, engine, scorer, timed, tmp / mode, mode)
                           for _ in range(max(1, args.repeat))), key=lambda r: r["wall_s"])
            rows.append({"mode": mode, "images": args.images, **runs[len(runs) // 2],
                         "runs": len(runs), "wall_s_all": [r["wall_s"] for r in runs]})
    finally:
        engines.group.shutdown()
        ray.kill(scorer, no_restart=True)
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    columns = [Column("mode", "mode"), Column("images", "images", "d"),
               Column("wall s", "wall_s", ".2f"), Column("img/s", "images_per_s", ".2f"),
               Column("vLLM s", "vllm_s", ".2f"),
               Column("outside vLLM", "outside_vllm_share", "%"),
               Column("actors+Ray", "actor_overhead_share", "%"),
               Column("driver", "driver_share", "%"),
               Column("goal", "goal", "%"), Column("result", "meets_goal")]
    report("scoring_eval", rows, columns, args.out,
           title=f"scoring evaluation, tiny model, numeric + Eq. 8 inference, "
                 f"max_new_tokens={cfg.rollout.max_new_tokens}, batch {args.batch_size}",
           extra={"model": "tiny", "conf": "tiny", "goal": GOAL,
                  "max_new_tokens": cfg.rollout.max_new_tokens,
                  "batch_size": args.batch_size},
           notes=["vLLM s: wall time with the engine or the scorer inside vLLM (union); "
                  "outside vLLM = actors+Ray (a call in flight, no vLLM) + driver "
                  "(no call in flight)"]
           + [f"{r['mode']}: {1000 * r['head_s']:.0f} ms before the first vLLM call, "
              f"{1000 * r['tail_s']:.0f} ms after the last" for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
