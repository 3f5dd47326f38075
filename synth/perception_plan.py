"""What the perception builder makes, and on which side of the split: no pixels, no files.

For every annotated object that survives the filters, `--variants` distorted images are
planned (default 1, as the paper's one bbox per object): a class drawn uniformly from the
12 classes, a type uniformly within it, a level uniformly from 1..5 (all from a seed
derived from --seed and the sample id, so a rerun makes the same picks); a type or level
given in the annotation is kept. Each distorted image gives four samples: the multi-choice
task (object / class / severity, candidates = the object names of that image) and the
grounding task, each full-reference ([reference, distorted]) and no-reference
([distorted]), with conf's prompts.

A draw that changes the box by less than --min-change (mean absolute difference, 0..255)
is redrawn, up to 4 draws: a stand-in for the paper's human check that the distortion is
perceptible (e.g. a saturation change on a grey photo or brightening a white object
changes nothing). A type and level both given in the annotation are never redrawn.

Split: test = --test-size (a fraction < 1 or a count; the paper's test set is 1,500
images), stratified by distortion class with largest-remainder quotas, so both parts
keep the class distribution (a redraw may move an image to another class afterwards).
The split is per distorted image, as the paper describes it: objects of one photo can
fall on both sides. A rerun plans the same images on the same sides, so the samples
already in the manifests are skipped; an image found on the other side means the inputs
changed, and the build stops.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from conf.prompts import default_prompts
from synth.distortions import DISTORTIONS, LEVELS
from synth.manifest import stage1_ids, stage1_samples
from synth.prefilter import SourceImage, SourceObject, slug

MAX_DRAWS = 4


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

    @property
    def pinned(self) -> bool:
        """Type and level both given by the annotation: kept even if the box barely changes."""
        return self.obj.distortion is not None and self.obj.level is not None


def _hash_int(*parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _pick(settings: Settings, obj: SourceObject, seed: int, attempt: int) -> tuple[str, int]:
    """Draw `attempt`'s (type, level), with what the annotation gives in place of the draw."""
    name, level = settings.draw(seed, attempt)
    return obj.distortion or name, obj.level or level


def plan_jobs(sources: Iterable[SourceImage], settings: Settings) -> list[Job]:
    """The distorted images to make, each with its drawn (or pinned) type and level."""
    jobs = []
    for src in sources:
        for obj in src.objects:
            for v in range(settings.variants):
                job_id = f"{slug(src.file_name)}-o{obj.index}-v{v}"
                seed = _hash_int(settings.seed, job_id) % 2**31
                distortion, level = _pick(settings, obj, seed, 0)
                jobs.append(Job(job_id, src.file_name, obj, src.candidates, distortion, level,
                                seed))
    return jobs


def redraw(job: Job, settings: Settings, attempt: int) -> Job:
    """The job with draw number `attempt` (1 .. MAX_DRAWS - 1) in place of its type and level."""
    distortion, level = _pick(settings, job.obj, job.seed, attempt)
    return replace(job, distortion=distortion, level=level)


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


def jobs_to_do(jobs: Iterable[Job], done: Mapping[str, Collection[str]]) -> list[Job]:
    """The jobs whose four samples are not all in their split's manifest yet.

    `done` maps each split to the sample ids its manifest already holds. A job with samples
    in the other split's manifest is a ValueError: the inputs changed since that build.
    """
    todo = []
    for job in jobs:
        other = "test" if job.split == "train" else "train"
        if any(i in done[other] for i in stage1_ids(job.job_id)):
            raise ValueError(f"{job.job_id} is in the {other} manifest but now planned for "
                             f"{job.split}: the inputs changed; build into a new folder")
        if not all(i in done[job.split] for i in stage1_ids(job.job_id)):
            todo.append(job)
    return todo


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
