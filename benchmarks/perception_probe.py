"""What can be read from an image about its synthetic MOS: a linear probe, no RL.

A ridge regression (standardised features, alpha 10, fit on the mini set's training
split, scored by SRCC on its test split: two photos that no training image comes from)
from three kinds of features of each Stage-2 image:

  image statistics  11 global statistics of the pixels (grey mean / std, Laplacian and
                    high-pass energy, saturation mean / std, clipped shares, grey levels
                    used, horizontal gradient) and their squares: what a hand-made
                    no-reference model sees, the data's own difficulty
  vision (base)     the embedded model's vision tower before any training (random
                    weights): mean and std over the image tokens, before and after the
                    patch merger
  vision (warm-up)  the same after the warm-up (learner/cold_start.py)

It bounds what the RL rows of `make reproduce` can reach without the vision tower learning
much more: RL trains the readout of these features, and a few hundred CPU steps move the
features themselves little.

    .venv/bin/python benchmarks/perception_probe.py        # ~1 min; also run by reproduce.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere

ALPHA = 10.0


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


def vision_features(model_dir: str | Path, images: list[np.ndarray]) -> np.ndarray:
    """Mean and std over the image tokens of the vision tower's output, before and after
    the patch merger, one row per image."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    tower = model.model.visual.eval()
    rows = []
    with torch.no_grad():
        for pixels in images:
            inputs = processor.image_processor(images=[Image.fromarray(pixels)],
                                               return_tensors="pt")
            out = tower(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
            merged, tokens = out.pooler_output, out.last_hidden_state
            rows.append(torch.cat([merged.mean(0), merged.std(0), tokens.mean(0),
                                   tokens.std(0)]).numpy())
    return np.array(rows)


def ridge_srcc(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
               y_test: np.ndarray, alpha: float = ALPHA) -> float:
    """SRCC on the test rows of a ridge fit on the training rows (features standardised
    with the training rows' mean and std)."""
    from scipy.stats import spearmanr

    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    a_train = np.c_[(x_train - mean) / std, np.ones(len(x_train))]
    a_test = np.c_[(x_test - mean) / std, np.ones(len(x_test))]
    weights = np.linalg.solve(a_train.T @ a_train + alpha * np.eye(a_train.shape[1]),
                              a_train.T @ y_train)
    return float(spearmanr(a_test @ weights, y_test).statistic)


def probe(base_model: str | Path, warm_model: str | Path, train_manifest: str | Path,
          test_manifest: str | Path) -> dict[str, float]:
    """{feature kind: held-out SRCC of its ridge probe} on the two manifests' images."""
    from synth.images import open_rgb
    from synth.manifest import load_samples, resolve_images

    data = {}
    for split, manifest in (("train", train_manifest), ("test", test_manifest)):
        samples = load_samples(manifest)
        images = [np.asarray(open_rgb(resolve_images(s, manifest)[0])) for s in samples]
        data[split] = (images, np.array([float(s["mos"]) for s in samples]))
    (train_images, y_train), (test_images, y_test) = data["train"], data["test"]

    def stats(images: list[np.ndarray]) -> np.ndarray:
        x = np.array([image_statistics(p) for p in images])
        return np.c_[x, x ** 2]

    out = {"image statistics": ridge_srcc(stats(train_images), y_train, stats(test_images),
                                          y_test)}
    for name, model in (("vision (base)", base_model), ("vision (warm-up)", warm_model)):
        out[name] = ridge_srcc(vision_features(model, train_images), y_train,
                               vision_features(model, test_images), y_test)
    out["train_images"], out["test_images"] = float(len(y_train)), float(len(y_test))
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
    result = probe(build_tiny_model(args.cache_dir), embedded_model(args.cache_dir),
                   mini["stage2_train"], mini["stage2_test"])
    print("| features | held-out SRCC of a ridge probe |\n|---|---|")
    for name in ("image statistics", "vision (base)", "vision (warm-up)"):
        print(f"| {name} | {result[name]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
