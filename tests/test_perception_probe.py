"""The linear probe of `make reproduce` (benchmarks/perception_probe.py): its pieces on
hand-made inputs whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.perception_probe import image_statistics, ridge_srcc, score_position_features


def test_ridge_probe_recovers_a_linear_target_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0, 0.0])
    # An exact linear target: the fit ranks the held-out rows as the target does.
    assert ridge_srcc(x[:150], y[:150], x[150:], y[150:]) > 0.99
    # A target independent of the features: no better than chance on 50 rows
    # (|SRCC| < 0.35 is beyond 2.4 standard errors of 1/sqrt(49)).
    noise = rng.normal(size=200)
    assert abs(ridge_srcc(x[:150], noise[:150], x[150:], noise[150:])) < 0.35


def test_image_statistics_of_flat_and_checkered_images():
    flat = np.full((32, 32, 3), 128, np.uint8)
    stats = image_statistics(flat)
    assert len(stats) == 11
    # Grey mean 128, no spread, no edges, no saturation, nothing clipped, one grey level.
    assert stats[0] == pytest.approx(128.0)
    assert stats[1:8] == pytest.approx([0.0] * 7)
    assert stats[8] == 0.0 and stats[9] == 1.0 and stats[10] == 0.0
    checker = np.indices((32, 32)).sum(0) % 2 * 255
    checker = np.repeat(checker[:, :, None], 3, axis=2).astype(np.uint8)
    stats = image_statistics(checker)
    # Half the pixels black, half white: both clipped shares 0.5, two grey levels, and
    # every horizontal neighbour differs by 255.
    assert stats[7] == stats[8] == pytest.approx(0.5)
    assert stats[9] == 2.0 and stats[10] == pytest.approx(255.0)


def test_fr_oracle_ranks_by_ssim_to_the_clean_crop():
    """Hand-made: one clean crop and three copies with more and more noise, labelled 4, 3,
    2, 1: SSIM falls as the noise grows, so the oracle's SRCC is exactly 1."""
    from benchmarks.perception_probe import fr_oracle

    rng = np.random.default_rng(0)
    clean = rng.integers(60, 200, (32, 32, 3)).astype(np.uint8)
    images = [clean] + [np.clip(clean + rng.normal(0, s, clean.shape), 0, 255).astype(np.uint8)
                        for s in (5, 20, 60)]
    samples = [{"meta": {"photo": "p", "crop": 0, "level": k}} for k in range(4)]
    assert fr_oracle(samples, images, np.array([4.0, 3.0, 2.0, 1.0])) == pytest.approx(1.0)


def test_alpha_is_chosen_on_whole_photo_folds():
    """Folds hold whole photos (a photo never straddles fit and score), and a feature that
    is the label itself is read best with the least shrinkage of ALPHAS."""
    from benchmarks.perception_probe import ALPHAS, choose_alpha, photo_folds

    photos = np.array(["a", "b", "c", "d", "e", "f"] * 10)
    folds = photo_folds(photos)
    assert sum(f.astype(int) for f in folds).tolist() == [1] * 60
    for f in folds:
        assert not set(photos[f]) & set(photos[~f])
    y = np.random.default_rng(1).normal(size=60)
    x = np.c_[y, np.random.default_rng(2).normal(size=(60, 3))]
    assert choose_alpha(x, y, photos) == ALPHAS[0]


def test_the_score_position_is_what_the_output_head_reads_for_the_first_digit(tiny_model_dir):
    """The generation's own next-token logits after "[answer]Score:" equal the output
    head applied to the probed state (computed here by a separate full forward)."""
    import torch

    from conf import prompts as P
    from learner.cold_start import load_model
    from synth.manifest import load_samples
    from synth.mini_dataset import build_mini_dataset
    from tests.conftest import TEST_CACHE

    samples = load_samples(build_mini_dataset(TEST_CACHE / "mini")["stage2_test"])[:2]
    states = score_position_features(tiny_model_dir, samples)
    assert states.shape == (2, 128)   # TinyModelSettings.hidden_size
    builder, _, model = load_model(tiny_model_dir)
    model.eval()
    text = P.score_answer("3.7", "no_think")
    prefix = builder.encode(text[:text.index("3.7")])
    for sample, state in zip(samples, states):
        inputs = builder.learner_inputs(sample, "no_think")
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([inputs["prompt_ids"] + prefix]),
                           pixel_values=inputs["pixel_values"],
                           image_grid_thw=inputs["image_grid_thw"],
                           mm_token_type_ids=torch.tensor(
                               [inputs["mm_token_type_ids"] + [0] * len(prefix)])).logits
            head = model.lm_head(torch.from_numpy(state))
        assert torch.allclose(logits[0, -1], head, atol=1e-5)
    assert not np.allclose(states[0], states[1])   # two images, two states
