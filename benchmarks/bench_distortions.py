"""CPU time of the distortion library: all 36 types x 5 levels on one photo.

The budget: the whole sweep on one 512x512 photo (skimage's astronaut) in under 4 s
of CPU time (time.process_time, which counts every thread of the process, OpenCV's
included). The DepictQA-V2 reference implementation needs about 11.5 s for the same sweep
on this machine (a figure measured when the budget was set, most of it skimage's multi-Otsu with 15 classes). One
untimed warm-up call per type on a small image first, so that one-off costs (codec
plug-ins, OpenCV's first-call set-up) are not charged to whichever type runs first.

    .venv/bin/python benchmarks/bench_distortions.py                # table + JSON
    .venv/bin/python benchmarks/bench_distortions.py --repeats 3    # best of 3 per type
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from benchmarks.report import Column, report  # noqa: E402
from synth.distortions import DISTORTIONS, LEVELS, distort  # noqa: E402

BUDGET_S = 4.0
REFERENCE_S = 11.5


def photo(name: str, size: int) -> np.ndarray:
    """A skimage photo resized (area filter) to size x size."""
    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def time_type(image: np.ndarray, name: str, seed: int) -> float:
    """CPU seconds for the five levels of one type."""
    start = time.process_time()
    for level in LEVELS:
        distort(image, name, level, seed=seed)
    return time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", default="astronaut",
                        help="skimage.data photo to distort (default: astronaut)")
    parser.add_argument("--size", type=int, default=512, help="side in px (default: 512)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time each type this many times and keep the fastest (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="distortion seed (default: 0)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/distortions.json"),
                        help="where to write the JSON (default: outputs/bench/distortions.json)")
    args = parser.parse_args(argv)
    if args.size < 32 or args.repeats < 1:
        parser.error("--size must be at least 32 and --repeats at least 1")

    image = photo(args.photo, args.size)
    warm = photo(args.photo, 64)
    for name in DISTORTIONS:
        distort(warm, name, 1, seed=args.seed)

    per_type = {}
    for name in tqdm(DISTORTIONS, desc="types", unit="type"):
        per_type[name] = min(time_type(image, name, args.seed) for _ in range(args.repeats))
    total = sum(per_type.values())

    rows = [{"type": name, "class": DISTORTIONS[name], "cpu_s": seconds,
             "ms_per_call": 1000 * seconds / len(LEVELS), "share": seconds / total}
            for name, seconds in sorted(per_type.items(), key=lambda item: -item[1])]
    verdict = "within" if total <= BUDGET_S else "OVER"
    notes = [f"total CPU time: {total:.2f} s for {len(per_type)} types x {len(LEVELS)} levels "
             f"on {args.photo} {args.size}x{args.size}",
             f"  / budget {BUDGET_S:.1f} s = {total / BUDGET_S:.2f} ({verdict} budget)   "
             f"reference {REFERENCE_S:.1f} s / ours = {REFERENCE_S / total:.1f}x"]
    report("distortions", rows, [
        Column("type", "type"), Column("class", "class"),
        Column("CPU s / 5 levels", "cpu_s", ".3f"), Column("ms / call", "ms_per_call", ".1f"),
        Column("share", "share", ".1%")], args.out, notes=notes, extra={
        "photo": args.photo, "size": args.size, "repeats": args.repeats,
        "levels": len(LEVELS), "total_cpu_s": total, "budget_cpu_s": BUDGET_S,
        "total_over_budget": total / BUDGET_S, "reference_cpu_s": REFERENCE_S,
        "speedup_over_reference": REFERENCE_S / total, "opencv_threads": cv2.getNumThreads()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
