"""What can be read from an image about its synthetic MOS: linear probes, no RL.

A ridge regression on standardised features, fit on the mini set's training split and
scored by SRCC on its test split (two photos that no training image comes from). Its
alpha is chosen per feature kind on the training photos alone: three folds of training
photos, each held out in turn (`choose_alpha`). Features of each Stage-2 image:

  image statistics   11 global statistics of the pixels (grey mean / std, Laplacian and
                     high-pass energy, saturation mean / std, clipped shares, grey levels
                     used, horizontal gradient) and their squares
  teacher            EfficientNet-Lite0 (ImageNet, synth/eye.py): mean and std over
                     positions of its stem, the 7 stage ends and the head (4192 numbers)
  vision (random)    the embedded model's vision tower with its random start weights
  start model        the tower of the model RL starts from (the eye distilled from the
                     teacher, then the warm-up, which leaves the tower as it is)
  start model at     the same model's language side where it writes the score: the
  the score          state its output head reads for the first digit, after the no-think
                     prompt and "[answer]Score:" (128 numbers). The digits' logits are a
                     linear function of it: this is how well the model as it stands could
                     rank the images if only its output head were retuned

Each tower is pooled by the teacher's rule: mean and std over positions of every block's
output and of the merger's output (what the language model reads).

Two more readings, both on the test split:
  FR oracle          SSIM of each image to its clean crop (a full-reference measure that no
                     model here has): how far the level-based label itself can be ranked
  per class          a probe per distortion class (its images plus the clean crops), scored
                     on training photos only (the three folds): what `make reproduce`
                     uses to pick the learnability subset, never the test photos

    .venv/bin/python benchmarks/perception_probe.py        # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere

AT_SCORE = "start model at the score"   # the row of score_position_features
ALPHAS = (1.0, 10.0, 100.0, 1000.0, 10000.0)
FOLDS = 3


def image_statistics(pixels: np.ndarray) -> list[float]:
    """The 11 global statistics of an RGB uint8 image (module doc)."""
    import cv2

    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).astype(np.float32)
    hsv = cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV).astype(np.float32)
    laplacian = cv2.Laplacian(grey, cv2.CV_32F)
    high_pass = grey - cv2.GaussianBlur(grey, (5, 5), 1.5)
    return [grey.mean(), grey.std(), np.abs(laplacian).mean(), laplacian.std(),
            np.abs(high_pass).mean(), hsv[..., 1].mean(), hsv[..., 1].std(),
            (grey < 5).mean(), (grey > 250).mean(), float(len(np.unique(grey.astype(np.uint8)))),
            np.abs(np.diff(grey, axis=1)).mean()]


def statistics_features(images: list[np.ndarray]) -> np.ndarray:
    """The image statistics and their squares, one row per image."""
    x = np.array([image_statistics(p) for p in images])
    return np.c_[x, x ** 2]


def vision_features(model_dir: str | Path, images: list[np.ndarray]) -> np.ndarray:
    """A model directory's vision tower, pooled by the probe's rule (module doc)."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from synth.distill import pooled_tower_features

    processor = AutoProcessor.from_pretrained(model_dir).image_processor
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    return pooled_tower_features(model.model.visual.eval(), processor, images)


def score_position_features(model_dir: str | Path, samples: list[dict]) -> np.ndarray:
    """What a model's output head reads where it writes the score's first digit: the
    language model's final (normed) state after the no-think prompt and "[answer]Score:",
    one row per sample. A linear readout of it is what the digits' logits are, so its
    probe bounds what retuning the head alone could rank."""
    import torch

    from conf import prompts as P
    from learner.cold_start import load_model

    builder, _, model = load_model(Path(model_dir))
    model.eval()
    prefix = builder.encode(P.score_answer("0.0", "no_think").split("0.0")[0])
    rows = []
    with torch.no_grad():
        for sample in samples:
            inputs = builder.learner_inputs(sample, "no_think")
            state = model.model(
                input_ids=torch.tensor([inputs["prompt_ids"] + prefix]),
                pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                mm_token_type_ids=torch.tensor([inputs["mm_token_type_ids"]
                                                + [0] * len(prefix)])).last_hidden_state
            rows.append(state[0, -1].numpy())
    return np.stack(rows)


def teacher_features(images: list[np.ndarray]) -> np.ndarray:
    """EfficientNet-Lite0's features, pooled by the probe's rule."""
    from synth.eye import load_weights, pooled_features

    return pooled_features(load_weights(), images)


def ridge_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                  alpha: float) -> np.ndarray:
    """Predictions for the test rows of a ridge fit on the training rows (features
    standardised with the training rows' mean and std; the intercept is not penalised
    less, as a constant column it is one more feature)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    a_train = np.c_[(x_train - mean) / std, np.ones(len(x_train))]
    a_test = np.c_[(x_test - mean) / std, np.ones(len(x_test))]
    weights = np.linalg.solve(a_train.T @ a_train + alpha * np.eye(a_train.shape[1]),
                              a_train.T @ y_train)
    return a_test @ weights


def ridge_srcc(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
               y_test: np.ndarray, alpha: float = 10.0) -> float:
    """SRCC on the test rows of a ridge fit on the training rows."""
    from scipy.stats import spearmanr

    return float(spearmanr(ridge_predict(x_train, y_train, x_test, alpha), y_test).statistic)


def photo_folds(photos: np.ndarray, folds: int = FOLDS) -> list[np.ndarray]:
    """Boolean masks of `folds` groups of whole photos (sorted names dealt in turn)."""
    names = sorted(set(photos.tolist()))
    return [np.isin(photos, names[k::folds]) for k in range(folds)]


def cross_validated(x: np.ndarray, y: np.ndarray, photos: np.ndarray, alpha: float) -> float:
    """SRCC of out-of-fold predictions, every fold a group of training photos held out."""
    from scipy.stats import spearmanr

    pred = np.zeros(len(y))
    for held in photo_folds(photos):
        pred[held] = ridge_predict(x[~held], y[~held], x[held], alpha)
    return float(spearmanr(pred, y).statistic)


def choose_alpha(x: np.ndarray, y: np.ndarray, photos: np.ndarray) -> float:
    """The alpha of ALPHAS with the best cross-validated SRCC on the training photos."""
    return max(ALPHAS, key=lambda a: cross_validated(x, y, photos, a))


def class_probe(x: np.ndarray, y: np.ndarray, classes: np.ndarray,
                photos: np.ndarray) -> dict[str, float]:
    """{class: cross-validated SRCC of a probe on that class's images and the clean crops},
    on training rows only (the alpha chosen per class by the same folds)."""
    out = {}
    for cls in sorted({c for c in classes.tolist() if c}):
        rows = (classes == cls) | (classes == "")
        out[cls] = max(cross_validated(x[rows], y[rows], photos[rows], a) for a in ALPHAS)
    return out


def fr_oracle(samples: list[dict], images: list[np.ndarray], y: np.ndarray) -> float:
    """SRCC of SSIM to the clean crop of the same photo and crop against the label."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    clean = {(s["meta"]["photo"], s["meta"]["crop"]): im for s, im in zip(samples, images)
             if s["meta"]["level"] == 0}
    ssim = [structural_similarity(clean[(s["meta"]["photo"], s["meta"]["crop"])], im,
                                  channel_axis=2) for s, im in zip(samples, images)]
    return float(spearmanr(ssim, y).statistic)


def load_split(manifest: str | Path) -> tuple[list[dict], list[np.ndarray], np.ndarray]:
    """(samples, RGB images, synthetic MOS) of a Stage-2 manifest."""
    from synth.images import open_rgb
    from synth.manifest import load_samples, resolve_images

    samples = load_samples(manifest)
    images = [np.asarray(open_rgb(resolve_images(s, manifest)[0])) for s in samples]
    return samples, images, np.array([float(s["mos"]) for s in samples])


def _fit(out: dict, name: str, x_train: np.ndarray, y_train: np.ndarray,
         x_test: np.ndarray, y_test: np.ndarray, photos: np.ndarray) -> None:
    """One feature kind's probe into `out`: alpha and SRCC by the training-photo folds,
    held-out SRCC."""
    alpha = choose_alpha(x_train, y_train, photos)
    out["alpha"][name] = alpha
    out["cv_srcc"][name] = cross_validated(x_train, y_train, photos, alpha)
    out["srcc"][name] = ridge_srcc(x_train, y_train, x_test, y_test, alpha)


def probe(models: dict[str, str | Path], train_manifest: str | Path,
          test_manifest: str | Path, teacher: bool = True,
          at_score: dict[str, str | Path] | None = None) -> dict:
    """Held-out SRCC of each feature kind's probe ({"srcc": {kind: value}, "alpha": ...}),
    the FR oracle, and the start model's per-class probe on training photos. `models`
    maps a row name to a model directory (e.g. {"vision (random)": ..., "start model":
    ...}), probed at its vision tower; the per-class probe reads the last of them.
    `at_score` maps a row name to a model directory probed at the score's position
    (`score_position_features`)."""
    train_samples, train_images, y_train = load_split(train_manifest)
    test_samples, test_images, y_test = load_split(test_manifest)
    photos = np.array([s["meta"]["photo"] for s in train_samples])
    kinds = {"image statistics": statistics_features}
    if teacher:
        kinds["teacher"] = teacher_features
    for name, model in models.items():
        kinds[name] = lambda images, model=model: vision_features(model, images)
    out: dict = {"srcc": {}, "alpha": {}, "cv_srcc": {}}
    last = None
    for name, features in kinds.items():
        x_train, x_test = features(train_images), features(test_images)
        last = x_train
        _fit(out, name, x_train, y_train, x_test, y_test, photos)
    for name, model in (at_score or {}).items():
        _fit(out, name, score_position_features(model, train_samples),
             y_train, score_position_features(model, test_samples), y_test, photos)
    classes = np.array([s["meta"]["class"] or "" for s in train_samples])
    out["class_cv_srcc"] = class_probe(last, y_train, classes, photos)
    out["fr_oracle_srcc"] = fr_oracle(test_samples, test_images, y_test)
    out["train_images"], out["test_images"] = len(y_train), len(y_test)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/perception_probe.py",
                                     description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache/refine-iqa")
    args = parser.parse_args(argv)
    from learner.cold_start import embedded_model
    from synth.mini_dataset import build_mini_dataset
    from synth.tiny_model import build_tiny_model

    mini = build_mini_dataset(args.cache_dir / "mini")
    start = embedded_model(args.cache_dir)
    result = probe({"vision (random)": build_tiny_model(args.cache_dir),
                    "start model": start}, mini["stage2_train"], mini["stage2_test"],
                   at_score={AT_SCORE: start})
    print("| features | held-out SRCC | alpha | SRCC on training photos (3 folds) |")
    print("|---|---|---|---|")
    for name, value in result["srcc"].items():
        print(f"| {name} | {value:.2f} | {result['alpha'][name]:g} | "
              f"{result['cv_srcc'][name]:.2f} |")
    print(f"| FR oracle (SSIM to the clean crop) | {result['fr_oracle_srcc']:.2f} | - | - |")
    print("start model, per class on training photos: " + ", ".join(
        f"{k} {v:.2f}" for k, v in result["class_cv_srcc"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
