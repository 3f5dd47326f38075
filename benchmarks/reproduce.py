"""`make reproduce`: the paper's experiments in miniature, on the embedded model and a CPU.

First the probes (benchmarks/perception_probe.py, one number each): the teacher
(EfficientNet-Lite0), the model RL starts from (its vision tower, and its language side
where it writes the score), and the FR oracle (the label's ceiling).
Then every row is one or two `python launch.py` runs per seed (real Ray, vLLM,
DeepSpeed), read back from their own metrics.jsonl: each run's final test (`test/*`,
eval.final_test, once after the last step), never its validation (photos carved from the
training photos, which only steer `best/`):

  base            the tiny model with its eye, after its warm-up, no RL: `python -m
                  evals.scoring_eval` on the same test split, with the same greedy
                  evaluation code (so the same for any seed)
  stage2          Stage-2 only, think + PD reward (conf/repro_stage2.yaml)      Table 3
  stage2 subset   Stage-2 on the learnability subset: the classes whose per-class probe
                  of the start model reads >= 0.7 on the training photos (the three best
                  when fewer than two do), the same held-out photos
  stage1->stage2  Stage-1 (conf/repro_stage1.yaml), then Stage-2 from its export Table 5
  stage2 w/o PD   Stage-2 with reward.lambdas=[1,1,0]                  Fig. 2 / Fig. 5
  fine-tune       not RL: the start model trained on the training photos' labels
                  (benchmarks/readout_ceiling.py), read the same way: how far the
                  model's own answer can follow the MOS when it is told the answer

Numbers are on the mini set's test split: two photos (chelsea, camera) that no training
image of either stage comes from, with the SYNTHETIC MOS 4.5 - 0.8 x level (not human
opinion; synth/mini_dataset.py). Per row: SRCC / PLCC of the numeric answers and of Eq. 8,
think and no-think; answer accuracy (|s - MOS| < 0.5); the think length (tokens) over the
first and last 5 steps; the greedy no-think accuracy on the training batch (Fig. 5 right)
at the start and end; Stage-1's perception accuracy on its validation photos (start ->
end) and on the test photos (end); the wall time. Each value is
the mean over the seeds with [min, max] beside it.

    .venv/bin/python benchmarks/reproduce.py                    # > 44 min on 2 cores
    .venv/bin/python benchmarks/reproduce.py --stage2-steps 60 --stage1-steps 30  # ~44 min
    .venv/bin/python benchmarks/reproduce.py --reuse            # redo the table and plots

Writes outputs/bench/reproduce.json and, under outputs/bench/reproduce/: table.md, the
plots (think length with / without PD, think vs no-think accuracy, held-out SRCC), the
runs (runs/<row>-s<seed>/) and their logs (logs/).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere

from benchmarks.perception_probe import AT_SCORE, probe  # noqa: E402
from benchmarks.readout_ceiling import FineTune, evaluate, read_scoring, run_seed  # noqa: E402
from benchmarks.reproduce_report import markdown, plots, rows_by_name  # noqa: E402
from driver import metrics as M  # noqa: E402
from driver.plots import read_metrics  # noqa: E402
from evals.report import write_json  # noqa: E402

SUBSET_MIN_SRCC = 0.7   # a class joins the learnability subset at this per-class probe SRCC
SCORING = [(mode, q) for mode in ("think", "no_think")
           for q in ("srcc", "plcc", "eq8_srcc", "eq8_plcc", "answer_acc", "parse_fail")]
EDGE_STEPS = 5   # steps averaged for "start" and "end" of a training curve


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/reproduce.py",
                                description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="run.seed of each run")
    p.add_argument("--stage2-steps", type=int, default=None,
                   help="train.max_steps of the Stage-2 runs (default: conf/repro_stage2.yaml)")
    p.add_argument("--stage1-steps", type=int, default=None,
                   help="train.max_steps of the Stage-1 runs (default: conf/repro_stage1.yaml)")
    p.add_argument("--fine-tune-steps", type=int, default=FineTune.steps,
                   help="optimizer steps of the score fine-tune row (4 images each)")
    p.add_argument("--out-dir", type=Path, default=REPO / "outputs/bench/reproduce")
    p.add_argument("--json", type=Path, default=REPO / "outputs/bench/reproduce.json")
    p.add_argument("--cache-dir", type=Path, default=REPO / ".cache/refine-iqa",
                   help="model.cache_dir: the tiny model, its warm-up and the mini set")
    p.add_argument("--reuse", action="store_true",
                   help="keep runs that finished before (same name) instead of redoing them")
    args = p.parse_args(argv)
    if args.fine_tune_steps < 1:
        p.error(f"--fine-tune-steps must be >= 1, got {args.fine_tune_steps}")
    return args


# -- running ------------------------------------------------------------------------------
def launch(conf: str, name: str, seed: int, overrides: list[str], args) -> float:
    """Run `launch.py conf=<conf>` as run `name`; returns its wall seconds."""
    runs, logs = args.out_dir / "runs", args.out_dir / "logs"
    run_dir, timing = runs / name, runs / name / "wall_s.json"
    if args.reuse and timing.is_file() and (run_dir / "export").is_dir():
        return float(json.loads(timing.read_text())["wall_s"])
    shutil.rmtree(run_dir, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "launch.py", f"conf={conf}", f"run.output_dir={runs}",
           f"run.name={name}", f"run.seed={seed}", f"model.cache_dir={args.cache_dir}",
           "ray.dashboard=false", *overrides]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local cluster
    start = time.perf_counter()
    with open(logs / f"{name}.log", "w") as log:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"run {name} failed (exit {done.returncode}); see "
                           f"{logs / f'{name}.log'}")
    timing.write_text(json.dumps({"wall_s": wall, "command": cmd}, indent=1))
    return wall


def subset_manifests(mini: dict, classes: list[str], out_dir: Path) -> dict[str, str]:
    """Stage-2 manifests of the learnability subset: the images of `classes` and the clean
    crops, of the training and of the test photos (the same held-out photos)."""
    from synth.manifest import load_samples, write_manifest

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in ("train", "test"):
        keep = [s for s in load_samples(mini[f"stage2_{split}"])
                if s["meta"]["level"] == 0 or s["meta"]["class"] in classes]
        paths[split] = str(out_dir / f"stage2_{split}.jsonl")
        write_manifest(paths[split], keep)
    return paths


def prepare(args) -> dict:
    """The mini set and the start model (built once, cached); the probes (teacher, start
    model, FR oracle); the learnability subset, picked by the start model's per-class
    probe on training photos; how well the warm-up names the held-out images' class."""
    from learner.checkpoint import resolve_model_path
    from learner.cold_start import class_accuracy, summary
    from synth.manifest import load_samples
    from synth.mini_dataset import build_mini_dataset
    from synth.tiny_model import build_tiny_model

    start = time.perf_counter()
    model = resolve_model_path("tiny", args.cache_dir)
    mini = build_mini_dataset(args.cache_dir / "mini")
    sizes = {k: len(load_samples(v)) for k, v in mini.items() if k != "cached"}
    warm_wall = time.perf_counter() - start
    held_out = class_accuracy(model, load_samples(mini["stage2_test"]))
    linear = probe({"vision (random)": build_tiny_model(args.cache_dir),
                    "start model": model}, mini["stage2_train"], mini["stage2_test"],
                   at_score={AT_SCORE: model})
    per_class = linear["class_cv_srcc"]
    classes = [c for c, v in per_class.items() if v >= SUBSET_MIN_SRCC]
    if len(classes) < 2:   # too few clear the bar: the three best, and the table says so
        classes = sorted(per_class, key=per_class.get, reverse=True)[:3]
    return {"model": str(model), "warmup": summary(model), "warmup_wall_s": warm_wall,
            "warmup_class_acc_test": held_out["class_acc"],
            "warmup_class_images_test": held_out["images"], "mini_sizes": sizes,
            "linear_probe": linear, "subset_classes": classes,
            "subset": subset_manifests(mini, classes, args.out_dir / "subset")}


def run_all(args, prep: dict) -> dict[str, list[dict]]:
    """Every run of every row and seed: {row: [{"seed", "runs": {stage: dir}, "wall_s"}]}."""
    from tqdm import tqdm

    s2 = [f"train.max_steps={args.stage2_steps}"] if args.stage2_steps else []
    s1 = [f"train.max_steps={args.stage1_steps}"] if args.stage1_steps else []
    plan = []   # (row, seed, [(stage, conf, name, overrides)])
    for seed in args.seeds:
        subset = [f"data.train_files={prep['subset']['train']}",
                  f"data.test_files={prep['subset']['test']}"]
        plan += [("stage2", seed, [("s2", "repro_stage2", f"stage2-s{seed}", s2)]),
                 ("stage2_subset", seed, [("s2", "repro_stage2", f"stage2-subset-s{seed}",
                                           s2 + subset)]),
                 ("stage2_no_pd", seed, [("s2", "repro_stage2", f"stage2-nopd-s{seed}",
                                          s2 + ["reward.lambdas=[1,1,0]"])]),
                 ("stage1_stage2", seed, [
                     ("s1", "repro_stage1", f"stage1-s{seed}", s1),
                     ("s2", "repro_stage2", f"stage1-stage2-s{seed}",
                      s2 + [f"model.path={args.out_dir / 'runs' / f'stage1-s{seed}'}"])])]
    results: dict[str, list[dict]] = {}
    bar = tqdm(total=sum(len(stages) for _, _, stages in plan), desc="reproduce", unit="run")
    for row, seed, stages in plan:
        entry = {"seed": seed, "runs": {}, "wall_s": 0.0}
        for stage, conf, name, overrides in stages:
            bar.set_postfix_str(name)
            entry["wall_s"] += launch(conf, name, seed, overrides, args)
            entry["runs"][stage] = str(args.out_dir / "runs" / name)
            bar.update(1)
        results.setdefault(row, []).append(entry)
    bar.close()
    return results


# -- reading ------------------------------------------------------------------------------
def _mean(values: list) -> float:
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


def _val(record: dict, name: str) -> float:
    value = record.get(name)
    return float(value) if isinstance(value, (int, float)) else float("nan")


def scoring_summary(run_dir: str | Path) -> dict[str, float]:
    """A Stage-2 run's final test (test/*, after its last step) and its training curves'
    start and end."""
    records = read_metrics(Path(run_dir) / "metrics.jsonl")
    test = {key: M.TEST_OF[M.VAL_SCORING[key]] for key in SCORING}
    tested = [r for r in records if test[("think", "srcc")] in r]
    if not tested:
        raise RuntimeError(f"{run_dir}/metrics.jsonl has no final test ({test[('think', 'srcc')]})"
                           ": the rows need eval.final_test=true (conf/tiny.yaml sets it)")
    out = {f"{mode}/{q}": _val(tested[-1], test[(mode, q)]) for mode, q in SCORING}
    steps = [r for r in records if r[M.STEP] > 0]
    think = [r.get(M.THINK_LENGTH.name("mean")) for r in steps]
    nothink = [r[M.NO_THINK_ACC] for r in steps if M.NO_THINK_ACC in r]
    answer = [r.get(M.REWARD_ANSWER.name("mean")) for r in steps]
    out.update({"think_len_start": _mean(think[:EDGE_STEPS]),
                "think_len_end": _mean(think[-EDGE_STEPS:]),
                "train_answer_start": _mean(answer[:EDGE_STEPS]),
                "train_answer_end": _mean(answer[-EDGE_STEPS:]),
                "train_nothink_start": _mean(nothink[:2]),
                "train_nothink_end": _mean(nothink[-2:]),
                "steps": float(len(steps))})
    return out


def perception_summary(run_dir: str | Path) -> dict[str, float]:
    """Stage-1's perception accuracy at its first and last validation and at its final
    test ("test", when eval.final_test ran), and its training multi-choice reward over the
    first and last steps."""
    every = read_metrics(Path(run_dir) / "metrics.jsonl")
    records = [r for r in every if M.VAL_ACC_MEAN in r]
    choice = [r.get(M.REWARD_CHOICE) for r in every if r[M.STEP] > 0]
    out = {"s1_train_choice_start": _mean(choice[:EDGE_STEPS]),
           "s1_train_choice_end": _mean(choice[-EDGE_STEPS:])}
    points = [("start", records[0], lambda name: name), ("end", records[-1], lambda name: name)]
    tested = [r for r in every if M.TEST_OF[M.VAL_ACC_MEAN] in r]
    if tested:
        points.append(("test", tested[-1], M.TEST_OF.get))
    for at, r, named in points:
        out[f"s1_acc_mean_{at}"] = _val(r, named(M.VAL_ACC_MEAN))
        for part in ("class", "severity", "object", "iou"):
            out[f"s1_{part}_{at}"] = _val(r, named(M.VAL_PERCEPTION[("all", part)]))
    return out


def base_summary(args, prep: dict) -> dict[str, float]:
    """The start model on the mini test split: `python -m evals.scoring_eval` (greedy,
    think and no-think, numeric and Eq. 8: the code the runs' final test calls), read
    into the rows' keys by the function the runs' validation uses (headline)."""
    from synth.mini_dataset import build_mini_dataset

    out_dir = args.out_dir / "runs" / "base"
    if args.reuse and (out_dir / "results.json").is_file():
        return read_scoring(out_dir)
    manifest = build_mini_dataset(args.cache_dir / "mini")["stage2_test"]
    return evaluate(Path(prep["model"]), Path(manifest), out_dir, args.cache_dir)


def score_fine_tunes(args, prep: dict) -> list[dict]:
    """The score fine-tune row (benchmarks/readout_ceiling.py), one per seed: the start
    model trained on the training photos' labels, read on the test split like a run's
    final test ({"seed", "wall_s", "<mode>/<q>": ...})."""
    from synth.mini_dataset import build_mini_dataset

    mini = build_mini_dataset(args.cache_dir / "mini")
    rows = []
    for seed in args.seeds:
        out = args.out_dir / "runs" / f"score-fine-tune-s{seed}"
        saved = out / "record.json"
        record = (json.loads(saved.read_text()) if args.reuse and saved.is_file() else
                  run_seed(seed, mini, Path(prep["model"]), out, args.cache_dir,
                           FineTune(steps=args.fine_tune_steps)))
        rows.append({"seed": seed, "wall_s": record["wall_s"], **record["test"]})
    return rows


def summarise(results: dict[str, list[dict]], base: dict[str, float],
              more: dict[str, list[dict]] | None = None) -> dict[str, dict]:
    """{row: {"seeds": [per-seed numbers], "mean": {...}, "min": {...}, "max": {...}}};
    `base` is the start model's one evaluation (greedy: no seed), `more` rows read
    elsewhere ({row: [per-seed numbers]})."""
    per_row: dict[str, list[dict]] = {"base": [{"seed": None, **base}], **(more or {})}
    for row, entries in results.items():
        for e in entries:
            numbers = {"seed": e["seed"], "wall_s": e["wall_s"],
                       **scoring_summary(e["runs"]["s2"])}
            if "s1" in e["runs"]:
                numbers.update(perception_summary(e["runs"]["s1"]))
            per_row.setdefault(row, []).append(numbers)
    table = {}
    for row, seeds in per_row.items():
        keys = [k for k in seeds[0] if k != "seed"]
        finite = {k: [s[k] for s in seeds if math.isfinite(s.get(k, math.nan))] for k in keys}
        table[row] = {"seeds": seeds,
                      "mean": {k: _mean(v) for k, v in finite.items()},
                      "min": {k: min(v) if v else math.nan for k, v in finite.items()},
                      "max": {k: max(v) if v else math.nan for k, v in finite.items()}}
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out_dir = args.out_dir.resolve()
    args.cache_dir = args.cache_dir.resolve()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    prep = prepare(args)
    print(f"# warm-up: {prep['model']} ({prep['warmup_wall_s']:.0f} s incl. cache check); "
          f"held-out class naming {prep['warmup_class_acc_test']:.2f} (chance 1/12)")
    print("# held-out SRCC of a linear probe on the synthetic MOS (benchmarks/"
          "perception_probe.py): " + ", ".join(
              f"{k} {v:.2f}" for k, v in prep["linear_probe"]["srcc"].items()))
    print(f"# learnability subset (per-class probe on training photos): "
          f"{', '.join(prep['subset_classes'])}")
    prep_wall = time.perf_counter() - start
    results = run_all(args, prep)
    tuned = score_fine_tunes(args, prep)
    table = summarise(results, base_summary(args, prep), {"score_fine_tune": tuned})
    md = markdown(table, prep)
    # The parts' own wall times, so that a --reuse redraw reports the runs it reused.
    total = prep_wall + sum(e["wall_s"] for entries in [*results.values(), tuned]
                            for e in entries)
    (args.out_dir / "table.md").write_text(md + "\n")
    written = plots(results, args.out_dir)
    print(md)
    print(f"# seeds {args.seeds}; total wall time {total / 60:.1f} min; "
          f"plots: {', '.join(p.name for p in written)}")
    write_json(args.json, {   # NaN (an undefined correlation) becomes null
        "benchmark": "reproduce", "date": date.today().isoformat(), "seeds": args.seeds,
        "total_wall_s": total, "machine": {"platform": platform.platform(),
                                           "python": platform.python_version(),
                                           "cpus": os.cpu_count()},
        "prepare": prep, "rows": table, "rows_by_name": rows_by_name(table, prep),
        "runs": results, "table_md": md})
    print(f"wrote {args.json} and {args.out_dir / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
