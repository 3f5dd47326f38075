"""The README's recipe, end to end on the embedded model, as a user runs it:

1. Stage-1 data: `python -m synth.perception` on photos with COCO-style boxes (the mini
   set's scikit-image photos and box file);
2. Stage-2 data: small fake KonIQ-10k (scores CSV + the official split file) and SPAQ
   (the xlsx) in their official formats, written from the mini set's distorted images,
   turned into train and test manifests with `python -m synth.iqa_datasets ... --only`;
3. `python launch.py conf=tiny_stage1` on the Stage-1 manifests, then `conf=tiny` from the
   Stage-1 run's export with both training manifests and both test manifests;
4. `python -m evals.scoring_eval` on the test split.

Checked: no test image ever appears in a rollout (every rollout is logged here), the val/*
metrics are at the steps eval.every asks for, the best checkpoint is kept, and the
evaluation scored exactly the test samples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from driver import metrics as M
from synth.manifest import load_samples
from tests.conftest import REPO, TEST_CACHE
from tests.test_iqa_datasets import write_xlsx

pytestmark = pytest.mark.slow


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


def _fake_iqa(root: Path, samples: list[dict]) -> None:
    """KonIQ-10k and SPAQ label files (official names and columns) over `samples`' images:
    KonIQ MOS on 1-5 with the mini set's own split, SPAQ MOS on 0-100 (split seeded by
    the reader). The labels invert synth.iqa_datasets' rescaling, so the manifests carry
    the mini set's synthetic MOS again."""
    koniq, spaq = samples[0::2], samples[1::2]
    (root / "koniq" / "1024x768").mkdir(parents=True)
    rows, sets = ['"image_name","c1","c2","c3","c4","c5","c_total","MOS","SD","MOS_zscore"'], \
        ["image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set"]
    for k, s in enumerate(koniq):
        name = f"{k:05d}.jpg"
        Image.open(s["images"][-1]).convert("RGB").save(root / "koniq" / "1024x768" / name,
                                                        quality=95)
        raw = 1 + 4 * s["mos"] / 5
        rows.append(f'"{name}",0,0,0,0,0,100,{raw:.4f},0.5,50')
        sets.append(f"{name},0,0,0,0,0,100,{25 * (raw - 1):.2f},0.5,"
                    f"{'test' if s['split'] == 'test' else 'training'}")
    (root / "koniq" / "koniq10k_scores_and_distributions.csv").write_text("\n".join(rows))
    (root / "koniq" / "koniq10k_distributions_sets.csv").write_text("\n".join(sets))
    (root / "spaq" / "TestImage").mkdir(parents=True)
    table = [["Image name", "MOS", "Brightness"]]
    for k, s in enumerate(spaq):
        name = f"{k + 1:05d}.jpg"
        Image.open(s["images"][-1]).convert("RGB").save(root / "spaq" / "TestImage" / name,
                                                        quality=95)
        table.append([name, round(20 * s["mos"], 3), 50])
    write_xlsx(root / "spaq" / "MOS and Image attribute scores.xlsx", [table])


def _judged_images(manifests: list[Path]) -> set[str]:
    return {str(Path(s["images"][-1]).resolve()) for m in manifests for s in load_samples(m)}


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_the_two_stage_recipe(tmp_path):
    from synth.mini_dataset import ASSET, build_mini_dataset

    mini = build_mini_dataset(TEST_CACHE / "mini")
    photos = Path(mini["stage2_train"]).parent / "photos"
    s1data, iqa, out = tmp_path / "perception", tmp_path / "iqa", tmp_path / "runs"
    _run("-m", "synth.perception", "--images", str(photos), "--annotations", str(ASSET),
         "--out", str(s1data), "--test-size", "0.25", "--seed", "0", "--workers", "1",
         "--quiet")
    _fake_iqa(tmp_path / "raw", load_samples(mini["stage2_train"])
              + load_samples(mini["stage2_test"]))
    for name, labels, images, extra in (
            ("koniq10k", "koniq/koniq10k_scores_and_distributions.csv", "koniq/1024x768",
             ["--split-file", str(tmp_path / "raw/koniq/koniq10k_distributions_sets.csv")]),
            ("spaq", "spaq/MOS and Image attribute scores.xlsx", "spaq/TestImage", [])):
        for split in ("train", "test"):
            _run("-m", "synth.iqa_datasets", name, "--labels", str(tmp_path / "raw" / labels),
                 "--images", str(tmp_path / "raw" / images), "--out",
                 str(iqa / f"{name}_{split}.jsonl"), "--only", split, "--quiet", *extra)
    common = [f"run.output_dir={out}", f"model.cache_dir={TEST_CACHE}", "ray.dashboard=false",
              "logging.rollouts_per_step=100"]   # every rollout logged: the leak check
    _run("launch.py", "conf=tiny_stage1", "run.name=s1", "train.max_steps=2", "eval.every=1",
         f"data.train_files={s1data / 'stage1_train.jsonl'}",
         f"data.test_files={s1data / 'stage1_test.jsonl'}", *common)
    train2 = [iqa / "koniq10k_train.jsonl", iqa / "spaq_train.jsonl"]
    test2 = [iqa / "koniq10k_test.jsonl", iqa / "spaq_test.jsonl"]
    stage2 = _run("launch.py", "conf=tiny", "run.name=s2", f"model.path={out / 's1'}",
                  "train.max_steps=3", "eval.every=2", "checkpoint.every=3",
                  "eval.final_test=true",
                  f"data.train_files=[{','.join(map(str, train2))}]",
                  f"data.test_files=[{','.join(map(str, test2))}]", *common)
    assert f"# model: {out / 's1' / 'export'}" in stage2.stdout   # Stage-2 from Stage-1
    report = tmp_path / "eval"
    _run("-m", "evals.scoring_eval", "--model", str(out / "s2"), "--conf", "tiny",
         "--manifest", *map(str, test2), "--out", str(report), "--batch-size", "32")

    # No test image in any rollout of either stage.
    for run, tests in ((out / "s1", [s1data / "stage1_test.jsonl"]), (out / "s2", test2)):
        seen = {str(Path(r["image"]).resolve()) for r in _lines(run / "rollouts.jsonl")}
        assert seen and not seen & _judged_images(tests), run
    assert _judged_images(train2) >= {str(Path(r["image"]).resolve())
                                      for r in _lines(out / "s2" / "rollouts.jsonl")}
    # Validation at 0 and every eval.every steps, and after the last.
    for run, steps, key in ((out / "s1", [0, 1, 2], M.VAL_ACC_MEAN),
                            (out / "s2", [0, 2, 3], M.VAL_SCORING[("think", "srcc")])):
        metrics = _lines(run / "metrics.jsonl")
        assert [r["step"] for r in metrics if key in r] == steps, run
        assert all(r[M.VAL_SAMPLES] > 0 for r in metrics if key in r)
        assert (run / "best" / "COMPLETE").is_file()
    best = json.loads((out / "s2" / "best" / "COMPLETE").read_text())
    assert (best["metric"], best["split"]) == ("val/srcc", "val")   # chosen on val, not test
    # The test split was read once, after the last step, under test/*.
    s2 = _lines(out / "s2" / "metrics.jsonl")
    assert [r["step"] for r in s2 if M.TEST_OF[M.VAL_SCORING[("think", "srcc")]] in r] == [3]
    assert s2[-1][M.TEST_OF[M.VAL_SAMPLES]] == sum(len(load_samples(m)) for m in test2)
    # The evaluation scored the test split: every test sample, nothing else.
    results = json.loads((report / "results.json").read_text())
    assert results["split"] == "test"
    assert results["images"] == sum(len(load_samples(m)) for m in test2)
    # A resume with another batch size is refused before any actor starts.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    again = subprocess.run(
        [sys.executable, "launch.py", "conf=tiny", "run.name=s2", f"model.path={out / 's1'}",
         "train.max_steps=4", "train.batch_size=2",
         f"data.train_files=[{','.join(map(str, train2))}]",
         f"data.test_files=[{','.join(map(str, test2))}]", *common],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "samples_per_step 4 -> 2" in again.stderr
