"""Perception-builder throughput: one worker against all cores, on the mini photos.

The five mini-dataset photos (224 px long side, 3 annotated objects each) are copied
under new names until there are --images source photos, then the builder runs twice
into fresh folders, with 1 worker and with --workers, test split 10%. Reported: distorted
images per second of the distortion phase (what the builder prints) and end to end (source
checks included), and the speed-up ratio of the two runs.

    python benchmarks/bench_perception_builder.py --images 96
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth.mini_dataset import ASSET, load_photos  # noqa: E402
from synth.perception import build_perception  # noqa: E402
from synth.perception_plan import Settings  # noqa: E402


def make_sources(folder: Path, n_images: int) -> Path:
    """n_images copies of the mini photos and an annotation file listing their objects."""
    spec = json.loads(ASSET.read_text(encoding="utf-8"))
    photos = load_photos()
    images, annotations = [], []
    for i in range(n_images):
        entry = spec["images"][i % len(spec["images"])]
        name = f"{i:05d}_{entry['file_name']}"
        Image.fromarray(photos[entry["file_name"]]).save(folder / name)
        images.append({"id": i, "file_name": name, "width": entry["width"],
                       "height": entry["height"]})
        annotations += [{**a, "image_id": i} for a in spec["annotations"]
                        if a["image_id"] == entry["id"]]
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def run(n_images: int, workers: int) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        annotations = make_sources(src, n_images)
        for w in sorted({1, workers}):
            s = build_perception(src, annotations, Path(tmp) / f"out{w}",
                                 Settings(test_size=0.1), workers=w, progress=False)
            results[w] = {"workers": w, "distorted_images": s["written_images"],
                          "build_seconds": s["build_seconds"],
                          "total_seconds": s["total_seconds"],
                          "images_per_second": s["images_per_second"],
                          "end_to_end_images_per_second":
                          s["written_images"] / s["total_seconds"]}
    one, many = results[1], results[workers]
    return {"source_images": n_images, "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "runs": list(results.values()),
            "speedup": many["images_per_second"] / one["images_per_second"],
            "end_to_end_speedup": one["total_seconds"] / many["total_seconds"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=96, help="source photos (3 objects each)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="the parallel run")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/perception_builder.json"))
    args = p.parse_args(argv)
    result = run(args.images, args.workers)
    print(f"{'workers':>8} {'images':>7} {'build s':>8} {'img/s':>8} {'img/s e2e':>10}")
    for r in result["runs"]:
        print(f"{r['workers']:>8} {r['distorted_images']:>7} {r['build_seconds']:>8.2f} "
              f"{r['images_per_second']:>8.1f} {r['end_to_end_images_per_second']:>10.1f}")
    print(f"speed-up {result['speedup']:.2f}x (distortion phase), "
          f"{result['end_to_end_speedup']:.2f}x end to end, on {result['cpu_count']} cores")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
