"""The score fine-tune of benchmarks/readout_ceiling.py: its targets read back as the MOS,
and the teacher-forced loss it and the warm-up train with is the cross-entropy of the
target tokens alone, computed here by hand from the model's logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.readout_ceiling import score_target, table
from learner.cold_start import load_model, target_loss
from rewards.parsing import grammar
from synth.manifest import load_samples
from synth.mini_dataset import build_mini_dataset
from tests.conftest import TEST_CACHE

# The mini set's six MOS values, 4.5 - 0.8 x level for levels 0..5.
MOS_VALUES = (4.5, 3.7, 2.9, 2.1, 1.3, 0.5)


@pytest.mark.parametrize("mode", ["think", "no_think"])
@pytest.mark.parametrize("mos", MOS_VALUES)
def test_score_target_is_a_well_formed_answer_holding_the_mos(mode, mos):
    text = score_target({"mos": mos}, mode, np.random.default_rng(0))
    assert grammar().parse(text, mode) == (pytest.approx(mos), True)


def test_target_loss_is_the_mean_cross_entropy_of_the_target_tokens_only(tiny_model_dir):
    builder, end_id, model = load_model(tiny_model_dir)
    model.eval()
    sample = load_samples(build_mini_dataset(TEST_CACHE / "mini")["stage2_train"])[0]
    inputs = builder.learner_inputs(sample, "no_think")
    target = builder.encode(score_target(sample, "no_think", np.random.default_rng(0)))
    target = target + [end_id]
    with torch.no_grad():
        loss = float(target_loss(model, inputs, target))
        ids = torch.tensor([inputs["prompt_ids"] + target])
        logits = model(input_ids=ids, pixel_values=inputs["pixel_values"],
                       image_grid_thw=inputs["image_grid_thw"],
                       mm_token_type_ids=torch.tensor(
                           [inputs["mm_token_type_ids"] + [0] * len(target)])).logits[0]
    n = len(inputs["prompt_ids"])
    # Token t is predicted at position t - 1; the prompt's tokens are not counted.
    logp = torch.log_softmax(logits[n - 1:-1].double(), dim=-1)
    by_hand = -float(logp[torch.arange(len(target)), torch.tensor(target)].mean())
    assert loss == pytest.approx(by_hand, rel=1e-5)


def test_table_has_a_line_per_seed_and_split():
    values = {f"{m}/{q}": 0.25 for m in ("think", "no_think")
              for q in ("srcc", "eq8_srcc", "answer_acc")}
    md = table([{"seed": 3, "val_photos": ["coffee"], "train": values, "val": values,
                 "test": values}])
    lines = md.splitlines()
    assert len(lines) == 5
    assert lines[2].startswith("| 3 | train | training images (fitted) | 0.25")
    assert lines[3].startswith("| 3 | val | coffee | 0.25")
    assert lines[4].startswith("| 3 | test | test split | 0.25")
