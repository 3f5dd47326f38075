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

For every annotated object that survives the filters, `--variants` distorted images are
made (default 1, as the paper's one bbox per object): a class drawn uniformly from the
12 classes, a type uniformly within it, a level uniformly from 1..5 (all from a seed
derived from --seed and the sample id, so a rerun makes the same picks). Each distorted
image gives four samples: the multi-choice task (object / class / severity, candidates =
the object names of that image) and the grounding task, each full-reference ([reference,
distorted]) and no-reference ([distorted]), with conf's prompts.

Filters: boxes over --max-box-fraction (0.9) of the image, boxes thinner than
--min-box-side px; images with fewer than --min-objects (2, as the paper) distinct object
names; the quality pre-filter (synth.prefilter). A draw that changes the box by less than
--min-change (mean absolute difference, 0..255) is redrawn, up to 4 draws: a stand-in for
the paper's human check that the distortion is perceptible. Bad input (unreadable/truncated image,
side < 32 px, box outside the image, unknown type or level, ...) skips that item with a
logged reason, recorded in OUT/skipped.jsonl and counted in the summary.

Split: test = --test-size (a fraction < 1 or a count; the paper's test set is 1,500
images), stratified by distortion class with largest-remainder quotas, so both parts
keep the class distribution (a redraw may move an image to another class afterwards).
The split is per distorted image, as the paper describes it: objects of one photo can
fall on both sides. Resumable: rerunning with the same settings skips samples
already in the manifests, and source checks cached in OUT/sources.jsonl (delete that
file to check the sources again, e.g. after repairing an image).

Output in OUT: stage1_train.jsonl, stage1_test.jsonl (format: synth.manifest),
images/<job>.png (distorted), refs/<source>.png (reference, decoded RGB, no EXIF),
sources.jsonl, skipped.jsonl, build_info.json, summary.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields, replace
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from conf.prompts import default_prompts
from synth import DISTORTIONS, distort_region
from synth.manifest import STAGE1_VARIANTS, append_samples, existing_ids, stage1_ids, stage1_samples
from synth.prefilter import (
    LEVELS,
    BadImage,
    QualityFilter,
    Skip,
    SourceImage,
    SourceObject,
    load_annotations,
    load_prefilter,
    load_rgb,
    slug,
)

log = logging.getLogger(__name__)

MAX_DRAWS = 4
MANIFESTS = {"train": "stage1_train.jsonl", "test": "stage1_test.jsonl"}


@dataclass(frozen=True)
class Settings:
    """Everything that decides which samples get made (stored in OUT/build_info.json)."""

    seed: int = 0
    test_size: float = 1500       # a fraction (< 1) or a count of distorted images
    variants: int = 1             # distorted images per object
    types: tuple[str, ...] = ()   # distortion types to draw from; () = all 36
    levels: tuple[int, ...] = LEVELS
    min_objects: int = 2
    max_box_fraction: float = 0.9
    min_box_side: int = 8
    min_change: float = 0.5       # mean |distorted - original| in the box, 0..255 units
    dataset_name: str = "refine-perception"

    def __post_init__(self) -> None:
        unknown = [t for t in self.types if t not in DISTORTIONS]
        if unknown:
            raise ValueError(f"types: unknown distortion type(s) {unknown}; "
                             f"known: {', '.join(DISTORTIONS)}")
        if not self.levels or any(lv not in LEVELS for lv in self.levels):
            raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {self.levels}")
        if self.test_size < 0 or (self.test_size >= 1 and self.test_size != int(self.test_size)):
            raise ValueError(f"test_size must be a fraction in [0, 1) or a whole count, "
                             f"got {self.test_size}")
        if self.variants < 1 or self.min_objects < 1 or self.min_box_side < 1:
            raise ValueError("variants, min_objects and min_box_side must be >= 1")
        if not 0 < self.max_box_fraction <= 1:
            raise ValueError(f"max_box_fraction must be in (0, 1], got {self.max_box_fraction}")
        words = set(default_prompts().class_words)
        bad = {DISTORTIONS[t] for t in self.types or DISTORTIONS} - words
        if bad:  # the answer must be a word the prompt offers
            raise ValueError(f"distortion classes {sorted(bad)} are not conf class_words")

    def draw(self, seed: int, attempt: int = 0) -> tuple[str, int]:
        """A (type, level): class uniform over the allowed ones, type uniform in it, level
        uniform; `attempt` > 0 gives the redraws for a distortion that changed nothing."""
        by_class: dict[str, list[str]] = {}
        for t in self.types or tuple(DISTORTIONS):
            by_class.setdefault(DISTORTIONS[t], []).append(t)
        classes = [c for c in default_prompts().class_words if c in by_class]
        rng = np.random.default_rng([seed, attempt])
        types = by_class[classes[rng.integers(len(classes))]]
        return types[rng.integers(len(types))], int(self.levels[rng.integers(len(self.levels))])


@dataclass(frozen=True)
class Job:
    """One distorted image (and its four samples)."""

    job_id: str
    file_name: str
    obj: SourceObject
    candidates: tuple[str, ...]
    distortion: str
    level: int
    seed: int
    split: str = "train"


def _hash_int(*parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def plan_jobs(sources: Iterable[SourceImage], settings: Settings) -> list[Job]:
    """The distorted images to make, each with its drawn (or pinned) type and level."""
    jobs = []
    for src in sources:
        for obj in src.objects:
            for v in range(settings.variants):
                job_id = f"{slug(src.file_name)}-o{obj.index}-v{v}"
                seed = _hash_int(settings.seed, job_id) % 2**31
                name, level = settings.draw(seed)
                jobs.append(Job(job_id, src.file_name, obj, src.candidates,
                                obj.distortion or name, obj.level or level, seed))
    return jobs


def assign_splits(jobs: list[Job], test_size: float, seed: int) -> list[Job]:
    """Mark test jobs: per-class quotas by largest remainder, picked by a seeded hash."""
    n = len(jobs)
    n_test = round(test_size * n) if test_size < 1 else int(test_size)
    if n and n_test >= n:
        raise ValueError(f"test_size={test_size:g} asks for {n_test} test images but only {n} "
                         "distorted images are planned; pass a fraction such as 0.1")
    counts = Counter(DISTORTIONS[j.distortion] for j in jobs)
    exact = {c: n_test * k / n for c, k in counts.items()} if n else {}
    quota = {c: math.floor(x) for c, x in exact.items()}
    for c in sorted(exact, key=lambda c: (quota[c] - exact[c], c))[:n_test - sum(quota.values())]:
        quota[c] += 1
    test_ids: set[str] = set()
    for c in counts:
        members = sorted((j for j in jobs if DISTORTIONS[j.distortion] == c),
                         key=lambda j: _hash_int(seed, "split", j.job_id))
        test_ids.update(j.job_id for j in members[:quota[c]])
    return [replace(j, split="test" if j.job_id in test_ids else "train") for j in jobs]


def make_samples(job: Job, reference: str, distorted: str, image_size: tuple[int, int],
                 dataset: str) -> list[dict[str, Any]]:
    """The four Stage-1 samples of one distorted image (paths as the manifest writes them)."""
    cls = DISTORTIONS[job.distortion]
    meta = {"source_image": job.file_name, "object": job.obj.name, "object_index": job.obj.index,
            "objects": list(job.candidates), "distortion": job.distortion, "class": cls,
            "level": job.level, "seed": job.seed, "job_id": job.job_id}
    return stage1_samples(job.job_id, job.obj.name, list(job.candidates), cls, job.level,
                          list(job.obj.box), reference, distorted, list(image_size), dataset,
                          job.split, meta)


_CTX: dict[str, Any] = {}  # per-process settings of the workers (set by _init_worker)


def _init_worker(ctx: dict[str, Any]) -> None:
    _CTX.update(ctx, parent=os.getppid())
    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would oversubscribe


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
    """Distort the job's box; redraw (up to MAX_DRAWS) while the box barely changes.

    A stand-in for the paper's human check that every distortion is perceptible: e.g. a
    saturation change on a grey photo or brightening a white object changes nothing.
    A type and level pinned by the annotation are kept as they are.
    """
    settings: Settings = _CTX["settings"]
    x1, y1, x2, y2 = job.obj.box
    for attempt in range(1, MAX_DRAWS + 1):
        out = distort_region(image, job.obj.box, job.distortion, job.level, seed=job.seed)
        change = np.abs(out[y1:y2, x1:x2].astype(np.int16) - image[y1:y2, x1:x2]).mean()
        pinned = job.obj.distortion is not None and job.obj.level is not None
        if change >= settings.min_change or pinned:
            return job, out
        name, level = settings.draw(job.seed, attempt)
        job = replace(job, distortion=job.obj.distortion or name, level=job.obj.level or level)
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
        _init_worker(ctx)
        del _CTX["parent"]  # inline: this process is the builder itself

    def run(fn: Callable, items: list, desc: str) -> Iterable:
        chunk = max(1, min(8, len(items) // (4 * workers)))
        results = pool.imap_unordered(fn, items, chunk) if pool else map(fn, items)
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
        todo: dict[str, list[Job]] = {}
        for job in jobs:
            other = "test" if job.split == "train" else "train"
            if any(i in done[other] for i in stage1_ids(job.job_id)):
                raise ValueError(f"{job.job_id} is in the {other} manifest but now planned for "
                                 f"{job.split}: the inputs changed; build into a new folder")
            if not all(i in done[job.split] for i in stage1_ids(job.job_id)):
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
        "skipped": dict(Counter(s.kind for s in skips)), "workers": workers,
        "build_seconds": build_seconds, "total_seconds": time.perf_counter() - t_start,
        "images_per_second": written / build_seconds if build_seconds > 0 else 0.0,
        "train_manifest": MANIFESTS["train"], "test_manifest": MANIFESTS["test"]}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m synth.perception",
                                description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
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
