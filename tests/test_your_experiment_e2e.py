"""A user's own experiment, end to end on the real stack (Ray, vLLM, DeepSpeed): a config
file in a folder of its own (`defaults: [tiny]`), training data in a parquet (images
inside) and a CSV (image paths), both with other column names and a 0-100 score, a test
CSV, a reward plug-in from a file of the user's, three steps.

What must hold: the run validates on the validation split carved from the training files
(val/*), never on the test images; the plug-in's mean is logged; no test image appears in
any rollout or validation; best/ records that it was chosen on val; the test split is read
once, after the last step (test/*).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from driver import metrics as M
from tests.conftest import REPO, TEST_CACHE

pytestmark = pytest.mark.slow


def _png_bytes(path: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_config_file_data_files_and_a_reward_plugin(tmp_path, embedded_model_built):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synth.manifest import load_samples
    from synth.mini_dataset import build_mini_dataset

    mini = build_mini_dataset(TEST_CACHE / "mini")
    train = load_samples(mini["stage2_train"])[:48]
    # 5 test images, 8 validated (eval.max_samples of 12 carved): a run that validated on
    # the test file would log 5 validation samples, not 8.
    test = load_samples(mini["stage2_test"])[:5]
    data = tmp_path / "data"
    data.mkdir()
    # Scores on 0-100: mos = 5 x q / 100, so q = 20 x mos (the rescale is checked below).
    half = len(train) // 2
    pq.write_table(pa.table({
        "picture": [{"bytes": _png_bytes(s["images"][0]), "path": None} for s in train[:half]],
        "quality": [20 * s["mos"] for s in train[:half]],
        "photo_id": [s["id"] for s in train[:half]]}), data / "part1.parquet")
    (data / "part2.csv").write_text("picture,quality,photo_id\n" + "".join(
        f"{s['images'][0]},{20 * s['mos']},{s['id']}\n" for s in train[half:]))
    (data / "test.csv").write_text("picture,quality,photo_id\n" + "".join(
        f"{s['images'][0]},{20 * s['mos']},{s['id']}\n" for s in test))
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "my_rewards.py").write_text(
        "def brevity(sample, completion, answer):\n"
        "    return max(0.0, 1.0 - len(completion.split()) / 64)\n")
    (exp / "mine.yaml").write_text(f"""defaults: [tiny]
train:
  max_steps: 3
data:
  train_files: [{data / 'part1.parquet'}, {data / 'part2.csv'}]
  test_files: {data / 'test.csv'}
  image_key: picture
  mos_key: quality
  id_key: photo_id
  mos_range: [0, 100]
  val_fraction: 0.25
eval:
  every: 2
  max_samples: 8
reward:
  plugins: [{exp / 'my_rewards.py'}:brevity]
run:
  output_dir: {tmp_path / 'out'}
  name: mine
model:
  cache_dir: {TEST_CACHE}
ray:
  dashboard: false
logging:
  rollouts_per_step: 100
""")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "launch.py", f"conf={exp / 'mine.yaml'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "out" / "mine"
    saved = (run / "config.yaml").read_text().splitlines()
    assert saved[-1].strip() and any(line == f"# merged from: {exp / 'mine.yaml'}"
                                     for line in saved)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    validated = [r for r in records if M.VAL_SCORING[("think", "srcc")] in r]
    assert [r["step"] for r in validated] == [0, 2, 3]
    # the carved split: 12 of the 48 training images (0.25), capped at eval.max_samples 8
    assert all(r[M.VAL_SAMPLES] == 8 for r in validated)
    steps = [r for r in records if r["step"] > 0]
    assert all("reward/brevity/mean" in r for r in steps)
    assert [r["step"] for r in records if M.TEST_OF[M.VAL_SAMPLES] in r] == [3]
    assert records[-1][M.TEST_OF[M.VAL_SAMPLES]] == len(test)
    # No test image in a rollout; every rollout image is a training one (the parquet's
    # were written as PNGs under the cache: matched by id instead of path).
    rolled = {json.loads(x)["sample_id"] for x in (run / "rollouts.jsonl").read_text()
              .splitlines()}
    assert rolled and rolled <= {s["id"] for s in train}
    assert not rolled & {s["id"] for s in test}
    best = json.loads((run / "best" / "COMPLETE").read_text())
    assert (best["metric"], best["split"]) == ("val/srcc", "val")
    assert Path(run / "export" / "config.json").is_file()
