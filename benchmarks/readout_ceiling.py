"""How much of the synthetic MOS can the embedded model's own answer carry, given labels?

A diagnostic for `make reproduce`'s question "does RL read out what the eye sees?": the
model RL starts from is fine-tuned with the score as a supervised target (teacher-forced
cross-entropy of `[think]..[/think][answer]Score:<MOS>[/answer]` and its no-think form,
the MOS written with one decimal), then evaluated exactly as the RL runs' final test is:
`python -m evals.scoring_eval` on the mini set's test split, greedy, think and no-think,
numeric and Eq. 8. Supervision is the most direct signal a model can get about the score:
a Stage-2 run learns from a scalar reward over a few hundred images instead. So:

  SFT well above the RL rows   the eye and the language side can carry the score; the
                               RL readout is what falls short
  SFT about as low as RL       the model is the limit, whatever the training signal:
                               its eye's reach to unseen photos, or the language side
                               that reads it (`--model` with a larger language side,
                               built the same way, tells the two apart)

The fine-tuned models are measured and thrown away: nothing here feeds the embedded model
or any RL run, and labels of the TRAINING photos only are used. Each seed carves its
validation photo out of the training photos by the rule the RL runs use (`data.val_fraction`
of conf/repro_stage2.yaml, `driver.data_splits.carve`), trains on the rest, and reports
96 of its own training images read back ("fitted"), validation and test; settings are
compared on validation, the test photos are read for the report.

    .venv/bin/python benchmarks/readout_ceiling.py                  # ~10 min on 2 cores
    .venv/bin/python benchmarks/readout_ceiling.py --seeds 1 --steps 300

Writes outputs/bench/readout_ceiling.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere

from evals.report import write_json  # noqa: E402

TRAIN_READ = 96      # training images read back (the test split's size)
COLUMNS = [(mode, q) for mode in ("think", "no_think")
           for q in ("srcc", "eq8_srcc", "answer_acc")]


@dataclass(frozen=True)
class FineTune:
    """The score fine-tune's settings (the warm-up's optimizer: AdamW, cosine to 0)."""

    steps: int = 1500        # x 4 images: ~7 passes over the ~870 training images
    batch_size: int = 4
    lr: float = 5e-4
    train_vision: bool = False   # the language side only, as RL with model.freeze_vision


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/readout_ceiling.py",
                                description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2],
                   help="carves the validation photo and orders the examples")
    p.add_argument("--steps", type=int, default=FineTune.steps, help="optimizer steps per seed")
    p.add_argument("--batch-size", type=int, default=FineTune.batch_size)
    p.add_argument("--lr", type=float, default=FineTune.lr, help="AdamW, cosine to 0")
    p.add_argument("--train-vision", action="store_true",
                   help="train the vision tower too (default: the language side only, as "
                        "the RL runs do with model.freeze_vision=true)")
    p.add_argument("--model", type=Path, default=None,
                   help="the model to fine-tune (default: the embedded model, model.path=tiny)")
    p.add_argument("--out-dir", type=Path, default=REPO / "outputs/bench/readout_ceiling")
    p.add_argument("--json", type=Path, default=REPO / "outputs/bench/readout_ceiling.json")
    p.add_argument("--cache-dir", type=Path, default=REPO / ".cache/refine-iqa",
                   help="model.cache_dir: the embedded model and the mini set")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "lr"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    return args


def score_target(sample: dict, mode: str, rng: np.random.Generator) -> str:
    """The supervised answer: the sample's MOS with one decimal, after a stock think."""
    from conf import prompts as P
    from learner.cold_start import THINKS

    return P.score_answer(f"{float(sample['mos']):.1f}", mode, str(rng.choice(THINKS)))


def fine_tune(start: Path, samples: list[dict], out: Path, settings: FineTune,
              seed: int) -> dict:
    """A copy of `start` trained on `samples`' scores (think and no-think alike); returns
    the first and last losses."""
    import shutil

    import torch
    from tqdm import tqdm

    from conf import prompts as P
    from learner.cold_start import load_model, target_loss

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(start, out)
    builder, end_id, model = load_model(out)
    model.train()
    if not settings.train_vision:
        model.model.visual.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    cosine = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / settings.steps)))
    rng = np.random.default_rng([seed, 29])
    cache: dict[tuple[str, str], dict] = {}
    losses = []
    for _ in tqdm(range(settings.steps), desc=f"score fine-tune, seed {seed}", unit="step",
                  mininterval=5.0):
        opt.zero_grad()
        total = 0.0
        for _ in range(settings.batch_size):
            sample = samples[int(rng.integers(len(samples)))]
            mode = str(rng.choice(P.MODES))
            key = (str(sample["id"]), mode)
            if key not in cache:
                cache[key] = builder.learner_inputs(sample, mode)
            target = builder.encode(score_target(sample, mode, rng)) + [end_id]
            loss = target_loss(model, cache[key], target) / settings.batch_size
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        cosine.step()
        losses.append(total)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    return {"loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:]))}


def evaluate(model: Path, manifest: Path, out: Path, cache_dir: Path) -> dict[str, float]:
    """`python -m evals.scoring_eval` on every sample of `manifest` (greedy, think and
    no-think, numeric and Eq. 8: what a run's final test calls), into `out`; returns
    `read_scoring(out)`."""
    cmd = [sys.executable, "-m", "evals.scoring_eval", "--model", str(model), "--conf",
           "repro_stage2", "--manifest", str(manifest), "--split", "all", "--out", str(out),
           f"model.cache_dir={cache_dir}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # a local cluster
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "eval.log", "w") as log:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"evaluating {model} failed (exit {done.returncode}); see "
                           f"{out / 'eval.log'}")
    return read_scoring(out)


def read_scoring(out: Path) -> dict[str, float]:
    """A scoring evaluation's folder read into {"<mode>/<q>": value} by the function the
    runs' validation uses (`headline`); NaN where a value is undefined."""
    from conf import load_config
    from evals.scoring_eval import headline

    (dataset,) = json.loads((out / "results.json").read_text())["datasets"].values()
    records = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    mos = [r["mos"] for r in records]
    eps = load_config("repro_stage2").reward.eps
    values = {}
    for mode in ("think", "no_think"):
        got = headline(dataset["results"][mode], [r[f"{mode}_numeric"] for r in records],
                       mos, eps)
        values.update({f"{mode}/{q}": math.nan if v is None else float(v)
                       for q, v in got.items()})
    return values


def run_seed(seed: int, mini: dict, start: Path, out: Path, cache_dir: Path,
             settings: FineTune) -> dict:
    """Carve, fine-tune, evaluate on training images, validation and test: one seed's
    record, also written to `out`/record.json."""
    from conf import load_config
    from driver.data_splits import carve
    from synth.manifest import load_samples, write_manifest

    fraction = load_config("repro_stage2").data.val_fraction   # the RL runs' own carve
    train, val = carve(load_samples(mini["stage2_train"]), fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    val_manifest, seen_manifest = out / "stage2_val.jsonl", out / "stage2_seen.jsonl"
    write_manifest(val_manifest, val)
    # How well the labels were fitted: as many of the training images as the test split
    # holds, drawn with the seed.
    pick = np.random.default_rng([seed, 31]).permutation(len(train))[:TRAIN_READ]
    write_manifest(seen_manifest, [train[i] for i in sorted(pick)])
    began = time.perf_counter()
    losses = fine_tune(start, train, out / "model", settings, seed)
    record = {"seed": seed, "train_images": len(train), "val_images": len(val),
              "val_photos": sorted({s["meta"]["photo"] for s in val}), **losses,
              "train": evaluate(out / "model", seen_manifest, out / "eval-train", cache_dir),
              "val": evaluate(out / "model", val_manifest, out / "eval-val", cache_dir),
              "test": evaluate(out / "model", Path(mini["stage2_test"]), out / "eval-test",
                               cache_dir)}
    record["wall_s"] = time.perf_counter() - began
    write_json(out / "record.json", record)
    return record


def table(records: list[dict]) -> str:
    """One line per seed and split: SRCC numeric / Eq. 8 and accuracy, think and no-think."""
    head = ["seed", "split", "photos"] + [f"{m} {q}" for m, q in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        for split in ("train", "val", "test"):
            photos = {"train": "training images (fitted)", "val": ", ".join(r["val_photos"]),
                      "test": "test split"}[split]
            cells = [f"{r[split][f'{m}/{q}']:.2f}" for m, q in COLUMNS]
            lines.append("| " + " | ".join([str(r["seed"]), split, photos, *cells]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out_dir, args.cache_dir = args.out_dir.resolve(), args.cache_dir.resolve()
    from learner.checkpoint import resolve_model_path
    from synth.mini_dataset import build_mini_dataset

    start = (args.model.resolve() if args.model
             else Path(resolve_model_path("tiny", args.cache_dir)))
    if not (start / "config.json").is_file():
        print(f"error: --model {start}: not a model directory (no config.json)",
              file=sys.stderr)
        return 2
    mini = build_mini_dataset(args.cache_dir / "mini")
    settings = FineTune(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        train_vision=args.train_vision)
    records = [run_seed(seed, mini, start, args.out_dir / f"seed{seed}", args.cache_dir,
                        settings) for seed in args.seeds]
    md = table(records)
    print(md)
    write_json(args.json, {
        "benchmark": "readout_ceiling", "date": date.today().isoformat(),
        "settings": {**asdict(settings), "start_model": str(start)},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "seeds": records,
        "test_min": {f"{m}/{q}": min(r["test"][f"{m}/{q}"] for r in records)
                     for m, q in COLUMNS},
        "table_md": md})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
