"""Images per second of the scoring evaluation on the tiny model, and the share of that
time spent outside vLLM.

The evaluation (evals.scoring_eval.evaluate_scoring, numeric and Eq. 8 inference) runs on
the mini dataset's Stage-2 images in the no-think mode, then in the think mode, through
a rollout engine and the scoring actor in Ray. The two actors here are the project's own
classes with one addition: they add up the seconds spent inside vLLM's generate call
(`_run`). "Outside vLLM" is everything else of the evaluation's wall time: Ray calls,
prompt building and image loading in the actors, parsing, metrics, report writing.
Engine start-up is not timed; a short warm-up on other images runs first, and the
engines' prefix and image caches are emptied before each mode (as in a one-mode run).
The model is conf=tiny's (warmed up on the answer format), so think answers carry a score
prefix part of the time and Eq. 8 in think mode is exercised.

    .venv/bin/python benchmarks/bench_scoring_eval.py          # prints a table, writes JSON
    .venv/bin/python benchmarks/bench_scoring_eval.py --images 20 --out /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from actors.rollout_engine import RolloutEngine  # noqa: E402
from actors.scoring_actor import ScoringActor  # noqa: E402
from evals.engines import EvalEngines  # noqa: E402


class _TimedRun:
    """Adds up the seconds an engine actor spends inside vLLM's generate (`_run`)."""

    vllm_s = 0.0

    def _run(self, prompts, params):
        start = time.perf_counter()
        try:
            return super()._run(prompts, params)
        finally:
            self.vllm_s += time.perf_counter() - start

    def vllm_seconds(self) -> float:
        return self.vllm_s

    def clear_caches(self) -> None:
        """Drop the prefix and image caches, so a mode does not reuse the previous one's."""
        self._reset_caches()


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
    """EvalEngines that adds up the driver's seconds waiting on engine calls."""

    call_s = 0.0

    def generate(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return super().generate(*args, **kwargs)
        finally:
            self.call_s += time.perf_counter() - start

    def digit_probs(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return super().digit_probs(*args, **kwargs)
        finally:
            self.call_s += time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--images", type=int, default=40,
                        help="images timed per mode (the mini Stage-2 set has 63)")
    parser.add_argument("--warmup", type=int, default=4, help="images of the warm-up run")
    parser.add_argument("--batch-size", type=int, default=16)
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
    # CPU slot 1, as actors.launcher gives the scoring actor after one engine.
    scorer = start_engine_actor(TimedScoringActor, replace(scorer_settings, cpu_slot=1),
                                "bench-scoring-actor", cfg.scoring.num_cpus,
                                pd_digits=cfg.reward.pd_digits)
    ray.get([engine.ready.remote(), scorer.ready.remote()], timeout=900)
    engines = TimedEvalEngines(OneEngine(engine), scorer,
                               sampling=sampling_from_config(cfg, greedy=True),
                               batch_size=args.batch_size)
    rows = []
    try:
        evaluate_scoring(engines, [warm], tmp / "warm", ("no_think", "think"))
        for mode in ("no_think", "think"):
            ray.get([engine.clear_caches.remote(), scorer.clear_caches.remote()])
            before = sum(ray.get([engine.vllm_seconds.remote(), scorer.vllm_seconds.remote()]))
            calls_before = engines.call_s
            start = time.perf_counter()
            payload = evaluate_scoring(engines, [timed], tmp / mode, (mode,))
            wall = time.perf_counter() - start
            inside = sum(ray.get([engine.vllm_seconds.remote(),
                                  scorer.vllm_seconds.remote()])) - before
            calls = engines.call_s - calls_before
            r = next(iter(payload["datasets"].values()))["results"][mode]
            rows.append({"mode": mode, "images": args.images, "wall_s": wall,
                         "images_per_s": args.images / wall, "vllm_s": inside,
                         "outside_vllm_share": max(0.0, 1.0 - inside / wall),
                         # engine calls minus vLLM: Ray, image loading, prompt building
                         "actor_overhead_share": max(0.0, calls - inside) / wall,
                         # the rest: parsing, metrics, JSON / markdown / PNG writing
                         "driver_share": max(0.0, wall - calls) / wall,
                         "numeric_failure_rate": r["numeric"]["failure_rate"]})
    finally:
        engines.group.shutdown()
        ray.kill(scorer, no_restart=True)
        ray.shutdown()

    print(f"scoring evaluation, tiny model, numeric + Eq. 8 inference, "
          f"max_new_tokens={cfg.rollout.max_new_tokens}")
    print(f"{'mode':<9} {'images':>6} {'wall s':>7} {'img/s':>6} {'vLLM s':>7} "
          f"{'outside vLLM':>12} {'(actors+Ray':>11} {'driver)':>8}")
    for r in rows:
        print(f"{r['mode']:<9} {r['images']:>6} {r['wall_s']:>7.2f} {r['images_per_s']:>6.2f} "
              f"{r['vllm_s']:>7.2f} {100 * r['outside_vllm_share']:>11.1f}% "
              f"{100 * r['actor_overhead_share']:>10.1f}% {100 * r['driver_share']:>7.1f}%")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "scoring_eval", "model": "tiny", "conf": "tiny",
        "max_new_tokens": cfg.rollout.max_new_tokens, "batch_size": args.batch_size,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "rows": rows}, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
