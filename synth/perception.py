"""The Refine-Perception builder: region-distorted photos -> Stage-1 manifests.

Input: a folder of photos and an object annotation file in COCO style. This replaces the
paper's Gemini + DINO step (services this project cannot call). Accepted shape::

    {"images": [{"id": 1, "file_name": "sub/a.jpg", "width": 640, "height": 480}, ...],
     "annotations": [{"image_id": 1, "bbox": [x, y, w, h], "category_id": 3,
                      "name": "red car",          # optional, wins over the category name
                      "distortion": "jpeg", "level": 4}, ...],   # optional: pin them
     "categories": [{"id": 3, "name": "car"}, ...]}   # needed only for unnamed annotations

`file_name` is relative to --images; `bbox` is COCO's [x, y, width, height] in pixels
(floats allowed: the box becomes floor(x), floor(y), ceil(x+w), ceil(y+h)).

Filters: boxes over --max-box-fraction (0.9) of the image, boxes thinner than
--min-box-side px; images with fewer than --min-objects (2, as the paper) distinct object
names; the quality pre-filter (synth.prefilter). Bad input (unreadable/truncated image,
side < 32 px, box outside the image, unknown type or level, ...) skips that item with a
logged reason, recorded in OUT/skipped.jsonl and counted in the summary.

Output in OUT: stage1_train.jsonl, stage1_test.jsonl (format: synth.manifest),
images/<job>.png (distorted), refs/<source>.png (reference, decoded RGB, no EXIF),
sources.jsonl, skipped.jsonl, build_info.json, summary.json. Resumable: rerunning with
the same settings skips samples already in the manifests, and source checks cached in
OUT/sources.jsonl (delete that file to check the sources again, e.g. after repairing an
image).
A sample rejected in the human check (python -m synth.review: OUT/stage1_*.decisions.jsonl)
is never rebuilt, even after it is deleted from the manifest; the summary counts them.

What gets made, and on which side of the train/test split, is planned in
synth.perception_plan; --help prints its rules after this text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, fields
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from synth import perception_plan
from synth.distortions import DISTORTIONS, distort_region
from synth.manifest import STAGE1_VARIANTS, append_samples, existing_ids
from synth.perception_plan import (
    MAX_DRAWS,
    Job,
    Settings,
    assign_splits,
    jobs_to_do,
    make_samples,
    plan_jobs,
    redraw,
)
from synth.prefilter import (
    BadImage,
    QualityFilter,
    Skip,
    SourceImage,
    load_annotations,
    load_prefilter,
    load_rgb,
    slug,
)
from synth.review_decisions import rejected_ids

log = logging.getLogger(__name__)

MANIFESTS = {"train": "stage1_train.jsonl", "test": "stage1_test.jsonl"}

_CTX: dict[str, Any] = {}  # per-process settings of the workers (set by _init_worker)
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _init_worker(ctx: dict[str, Any], pooled: bool = True) -> None:
    """Give this process the builder's settings and one compute thread (`pooled`: a pool
    worker, not the builder's own process running inline).

    One process per core: a thread pool per worker (OpenCV's, OpenMP's, torch's) would
    oversubscribe the cores. OpenCV does the pixel work, so it gets one thread. A forked
    worker holds only the thread that forked it (numpy's OpenBLAS threads are not copied);
    the variables cover a library that a custom pre-filter loads here first, and torch,
    if the parent had loaded it, read them already, so it is told directly.
    """
    _CTX.update(ctx)
    cv2.setNumThreads(1)  # the inline run puts the builder's count back when it ends
    if pooled:  # the builder's own environment and torch stay as its caller set them
        _CTX["parent"] = os.getppid()
        for var in _THREAD_VARS:
            os.environ[var] = "1"
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)


def _exit_if_orphaned() -> None:
    """Pool workers outlive a killed builder; stop them before they touch the output."""
    if _CTX.get("parent") not in (None, os.getppid()):
        os._exit(1)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write RGB uint8 as PNG through a temporary name, so no torn file is ever referenced."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)


def _scan(src: SourceImage) -> tuple[str, str | None, str | None]:
    """(file name, skip kind or None, detail): can the source image be used?"""
    _exit_if_orphaned()
    try:
        image = load_rgb(_CTX["images_dir"] / src.file_name)
    except BadImage as e:
        return src.file_name, e.kind, str(e)
    h, w = image.shape[:2]
    if (w, h) != (src.width, src.height):
        return src.file_name, "size mismatch", (f"the annotation says {src.width}x{src.height},"
                                                f" the file is {w}x{h}")
    reason = _CTX["prefilter"](image)
    return (src.file_name, "pre-filter", reason) if reason else (src.file_name, None, None)


def _distort(image: np.ndarray, job: Job) -> tuple[Job, np.ndarray | None]:
    """Distort the job's box; redraw (up to MAX_DRAWS) while the box barely changes, the
    stand-in for the paper's check that the distortion is perceptible (perception_plan)."""
    settings: Settings = _CTX["settings"]
    x1, y1, x2, y2 = job.obj.box
    for attempt in range(1, MAX_DRAWS + 1):
        out = distort_region(image, job.obj.box, job.distortion, job.level, seed=job.seed)
        change = np.abs(out[y1:y2, x1:x2].astype(np.int16) - image[y1:y2, x1:x2]).mean()
        if change >= settings.min_change or job.pinned:
            return job, out
        job = redraw(job, settings, attempt)
    return job, None


def _build(task: tuple[SourceImage, list[Job]]) -> tuple[list[dict], list[Skip]]:
    """Distort every job of one source image; returns its samples and its failures."""
    _exit_if_orphaned()
    src, jobs = task
    out: Path = _CTX["out_dir"]
    try:
        image = load_rgb(_CTX["images_dir"] / src.file_name)
    except BadImage as e:  # changed on disk since the scan
        return [], [Skip(src.file_name, e.kind, str(e))]
    ref = out / "refs" / f"{slug(src.file_name)}.png"
    if not ref.exists():
        write_png(ref, image)
    samples, skips = [], []
    for job in jobs:
        try:
            job, distorted = _distort(image, job)
        except Exception as e:  # noqa: BLE001 - one failing item is skipped and reported
            skips.append(Skip(job.job_id, "distortion failed", f"{type(e).__name__}: {e}"))
            continue
        if distorted is None:
            skips.append(Skip(job.job_id, "no visible change", f"{MAX_DRAWS} draws changed the "
                              f"box by less than {_CTX['settings'].min_change} on average"))
            continue
        write_png(out / "images" / f"{job.job_id}.png", distorted)
        samples += make_samples(job, f"refs/{ref.name}", f"images/{job.job_id}.png",
                                (src.width, src.height), _CTX["settings"].dataset_name)
    return samples, skips


def _runner(workers: int, ctx: dict[str, Any], progress: bool):
    """run(fn, items, desc) over a process pool (or inline for one worker), with a bar."""
    pool = Pool(workers, initializer=_init_worker, initargs=(ctx,)) if workers > 1 else None
    if pool is None:
        _init_worker(ctx, pooled=False)

    def run(fn: Callable, items: list, desc: str) -> Iterable:
        # Small chunks: a task (one source image) takes milliseconds against ~0.1 ms of
        # passing it, and one big last chunk leaves the other cores idle at the end.
        chunk = max(1, min(4, len(items) // (16 * workers)))
        # In task order, so the manifests and the side files are byte-identical for any
        # number of workers; the workers never wait for it (the pool keeps early results).
        results = pool.imap(fn, items, chunk) if pool else map(fn, items)
        return tqdm(results, total=len(items), desc=desc, disable=not progress, unit="img")
    return pool, run


def _check_build_info(out_dir: Path, info: dict[str, Any]) -> None:
    path = out_dir / "build_info.json"
    info = json.loads(json.dumps(info))
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in info.items() if old.get(k) != v]
        if diff:
            raise ValueError(f"{out_dir} was built with other settings ({'; '.join(diff)}); "
                             "use a new output folder or the earlier settings")
    else:
        path.write_text(json.dumps(info, indent=1), encoding="utf-8")


def _scan_sources(sources: list[SourceImage], out_dir: Path, run: Callable,
                  ) -> dict[str, tuple[str | None, str | None]]:
    cache = out_dir / "sources.jsonl"
    existing_ids(cache)  # cuts a torn last line off before we append
    checked: dict[str, tuple[str | None, str | None]] = {}
    if cache.exists():
        for line in cache.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            checked[rec["id"]] = (rec["kind"], rec["detail"])
    todo = [s for s in sources if s.file_name not in checked]
    with cache.open("a", encoding="utf-8") as f:
        for name, kind, detail in run(_scan, todo, "checking sources"):
            checked[name] = (kind, detail)
            f.write(json.dumps({"id": name, "kind": kind, "detail": detail}) + "\n")
            f.flush()
    return checked


def build_perception(images_dir: str | Path, annotations: str | Path, out_dir: str | Path,
                     settings: Settings | None = None, *,
                     prefilter: str | QualityFilter = "default", workers: int | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Build (or resume) the Stage-1 dataset in `out_dir`; returns the summary dict."""
    t_start = time.perf_counter()
    settings = settings or Settings()
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    check = load_prefilter(prefilter) if isinstance(prefilter, str) else prefilter
    check_id = prefilter if isinstance(prefilter, str) else \
        f"{check.__module__}:{check.__qualname__}"
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    sources, skips = load_annotations(
        annotations, known_types=DISTORTIONS, min_objects=settings.min_objects,
        max_box_fraction=settings.max_box_fraction, min_box_side=settings.min_box_side)
    for sub in ("images", "refs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    _check_build_info(out_dir, {**asdict(settings), "prefilter": check_id, "annotations_sha256":
                                hashlib.sha256(Path(annotations).read_bytes()).hexdigest()})
    ctx = {"images_dir": images_dir, "out_dir": out_dir, "prefilter": check,
           "settings": settings}
    threads = cv2.getNumThreads()  # inline runs change it in this process; put it back
    pool, run = _runner(workers, ctx, progress)
    try:
        checked = _scan_sources(sources, out_dir, run)
        skips += [Skip(s.file_name, *checked[s.file_name]) for s in sources
                  if checked[s.file_name][0]]
        usable = [s for s in sources if checked[s.file_name][0] is None]
        jobs = assign_splits(plan_jobs(usable, settings), settings.test_size, settings.seed)
        done = {split: existing_ids(out_dir / name) for split, name in MANIFESTS.items()}
        # A sample the human check rejected (synth.review) counts as done: deleting it
        # from the manifest by hand must not bring it back on the next run.
        rejected = {split: rejected_ids(out_dir / name) - done[split]
                    for split, name in MANIFESTS.items()}
        done = {split: done[split] | rejected[split] for split in done}
        todo: dict[str, list[Job]] = {}  # one task per source image: it is decoded once
        for job in jobs_to_do(jobs, done):
            todo.setdefault(job.file_name, []).append(job)
        by_name = {s.file_name: s for s in usable}
        tasks = [(by_name[name], js) for name, js in todo.items()]
        t_build, written = time.perf_counter(), 0
        for samples, failed in run(_build, tasks, "distorting"):
            skips += failed
            for split, name in MANIFESTS.items():
                new = [s for s in samples if s["split"] == split and s["id"] not in done[split]]
                append_samples(out_dir / name, new)
            written += len(samples) // len(STAGE1_VARIANTS)
        build_seconds = time.perf_counter() - t_build
    finally:
        if pool is not None:  # every result is in (or we are failing): stop the workers
            pool.terminate()
            pool.join()
        cv2.setNumThreads(threads)
        _CTX.clear()
    for s in skips:
        log.warning("skipped %s (%s): %s", s.item, s.kind, s.detail)
    with (out_dir / "skipped.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(asdict(s)) + "\n" for s in skips)
    summary = {
        "sources": len(sources), "sources_usable": len(usable), "planned_images": len(jobs),
        "train_images": sum(j.split == "train" for j in jobs),
        "test_images": sum(j.split == "test" for j in jobs),
        "already_done": len(jobs) - sum(map(len, todo.values())), "written_images": written,
        "rejected_not_rebuilt": sum(map(len, rejected.values())) // len(STAGE1_VARIANTS),
        "skipped": dict(Counter(s.kind for s in skips)), "workers": workers,
        "build_seconds": build_seconds, "total_seconds": time.perf_counter() - t_start,
        "images_per_second": written / build_seconds if build_seconds > 0 else 0.0,
        "train_manifest": MANIFESTS["train"], "test_manifest": MANIFESTS["test"]}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


# The command's help: this module's text (input, filters, output), then the planning rules.
_HELP = "\n\n".join(doc.split("\n\n", 1)[1] for doc in (__doc__, perception_plan.__doc__))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m synth.perception",
                                description=__doc__.split("\n\n")[0],
                                epilog=_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, type=Path, help="folder of the source photos")
    p.add_argument("--annotations", required=True, type=Path, help="COCO-style JSON file")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    for f in fields(Settings):  # one option per setting, e.g. --test-size
        default = getattr(Settings(), f.name)
        kind = float if f.name == "test_size" else type(default)
        p.add_argument(f"--{f.name.replace('_', '-')}", default=default,
                       type=(lambda v: tuple(x.strip() for x in v.split(",") if x.strip()))
                       if kind is tuple else kind,
                       help=f"comma-separated (default: {','.join(map(str, default)) or 'all'})"
                       if kind is tuple else f"(default: {default})")
    p.add_argument("--prefilter", default="default",
                   help="'default' (synth.prefilter), 'none', or module:function")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no per-item log")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command line: build the dataset, print the summary table."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING,
                        format="%(levelname)s %(message)s")
    try:
        values = {f.name: getattr(args, f.name) for f in fields(Settings)}
        values["levels"] = tuple(int(v) for v in values["levels"])
        settings = Settings(**values)
        summary = build_perception(args.images, args.annotations, args.out, settings,
                                   prefilter=args.prefilter, workers=args.workers,
                                   progress=not args.quiet)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key, value in summary.items():
        print(f"{key:>18}  {value:.2f}" if isinstance(value, float) else f"{key:>18}  {value}")
    print(f"skipped items are listed in {args.out / 'skipped.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
