"""The one sample format of the project: a JSONL manifest, one JSON object per line.

Every builder in synth/ writes it; the rollout engines, the learner's data feed and the
evals read it through `read_manifest`. The fields of one sample:

=========== ================= ==============================================================
field       type              meaning
=========== ================= ==============================================================
id          str               unique in the file
task        str               "score" | "choice" | "grounding"
images      list[str]         paths relative to the manifest file's folder (or absolute).
                              Full-reference samples list [reference, distorted]; the image
                              being judged is always the LAST one.
question    str | null        Stage-1 tasks: the full prompt text (conf.prompts
                              stage1_choice_prompt / stage1_grounding_prompt). "score": null,
                              the rollout engine fills the think / no-think template from
                              conf at run time.
answer      str | null        choice: "object / class word / severity prompt word" (the
                              separator is conf's ``tags.choice_separator`` with a space on
                              each side; the severity word is conf.prompts.severity_word);
                              grounding: "x1,y1,x2,y2", integers in ORIGINAL image pixels;
                              score: null
mos         float | null      score: the MOS on [0, 5); Stage-1: null
bbox        [x1,y1,x2,y2]     Stage-1: the distorted region in original pixels, integers,
            | null            x2/y2 exclusive (numpy slicing: image[y1:y2, x1:x2]); score: null
image_size  [width, height]   size of the judged (last) image in pixels
source      str               the dataset the sample comes from ("koniq10k",
                              "refine-perception", "mini-synthetic-mos", ...)
split       str               "train" | "test"
meta        dict              everything needed to rebuild the sample (distortion type,
                              class, level, seed, candidate objects, reference variant
                              "fr"/"nr", source image, dataset-specific fields)
=========== ================= ==============================================================

No other top-level key is allowed (extras go into ``meta``), so a typo fails loudly.
`stage1_samples` builds the four Stage-1 samples of one distorted image (choice and
grounding, full- and no-reference) with conf's prompts and answer syntax.
Writers append with `append_samples` (one line per sample, flushed), which is what makes
the builders resumable: a rerun reads the ids already present (`existing_ids`) and skips
them. A process killed mid-write can leave one torn last line; `existing_ids(...,
repair=True)` cuts it off (and says so) before a builder resumes.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from conf.prompts import (
    default_prompts,
    severity_word,
    stage1_choice_prompt,
    stage1_grounding_prompt,
    tags,
)

log = logging.getLogger(__name__)

TASKS = ("score", "choice", "grounding")
SPLITS = ("train", "val", "test")
FIELDS = ("id", "task", "images", "question", "answer", "mos", "bbox", "image_size",
          "source", "split", "meta")
MOS_MAX = 5.0
STAGE1_VARIANTS = (("choice", "fr"), ("choice", "nr"), ("grounding", "fr"), ("grounding", "nr"))


def _fail(where: str, field: str, problem: str) -> None:
    prefix = f"{where}: " if where else ""
    raise ValueError(f"{prefix}field {field!r}: {problem}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_box(box: Any, size: list[int], where: str, field: str) -> list[int]:
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_int(v) for v in box)):
        _fail(where, field, f"must be 4 integers x1,y1,x2,y2, got {box!r}")
    x1, y1, x2, y2 = box
    w, h = size
    if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
        _fail(where, field, f"box {list(box)} is empty or outside the {w}x{h} image "
                            "(need 0 <= x1 < x2 <= width, 0 <= y1 < y2 <= height)")
    return list(box)


def choice_answer(obj: str, class_word: str, severity: str, prompts: Any | None = None) -> str:
    """The multi-choice answer string "object / class word / severity word"."""
    sep = f" {tags(prompts).choice_separator} "
    for name, part in (("object", obj), ("class_word", class_word), ("severity", severity)):
        if not isinstance(part, str) or not part.strip() or sep.strip() in part:
            raise ValueError(f"{name} must be a non-empty string without "
                             f"{sep.strip()!r}, got {part!r}")
    return sep.join((obj.strip(), class_word, severity))


def stage1_ids(base_id: str) -> list[str]:
    """The ids of the four Stage-1 samples of one distorted image."""
    return [f"{base_id}-{task}-{ref}" for task, ref in STAGE1_VARIANTS]


def stage1_samples(base_id: str, obj: str, candidates: list[str], class_word: str, level: int,
                   box: list[int], reference: str, distorted: str, image_size: list[int],
                   source: str, split: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The four Stage-1 samples of one distorted image: multi-choice and grounding, each
    full-reference ([reference, distorted], "fr") and no-reference ([distorted], "nr")."""
    choice = choice_answer(obj, class_word, severity_word(level))
    samples = []
    for sid, (task, ref) in zip(stage1_ids(base_id), STAGE1_VARIANTS):
        full_ref = ref == "fr"
        samples.append({
            "id": sid, "task": task, "images": [reference, distorted] if full_ref else [distorted],
            "question": stage1_choice_prompt(candidates, full_ref) if task == "choice"
            else stage1_grounding_prompt(full_ref),
            "answer": choice if task == "choice" else ",".join(map(str, box)),
            "mos": None, "bbox": list(box), "image_size": list(image_size), "source": source,
            "split": split, "meta": {**meta, "reference": ref}})
    return samples


def _check_choice(answer: Any, where: str) -> None:
    p = default_prompts()
    parts = [s.strip() for s in str(answer).split(p.tags.choice_separator)]
    if not isinstance(answer, str) or len(parts) != 3 or not parts[0]:
        _fail(where, "answer", f"a choice answer is 'object / class / severity', got {answer!r}")
    if parts[1] not in p.class_words:
        _fail(where, "answer", f"class word {parts[1]!r} is not one of conf's class_words")
    if parts[2] not in p.severity_prompt_words:
        _fail(where, "answer", f"severity {parts[2]!r} is not one of conf's "
                               "severity_prompt_words")


def validate_sample(sample: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Check one sample against the format above and return it as a plain dict.

    `where` (e.g. "train.jsonl:12") prefixes every error message. Raises ValueError naming
    the field and what is wrong.
    """
    if not isinstance(sample, Mapping):
        raise ValueError(f"{where}: a sample must be a JSON object, got {type(sample).__name__}")
    missing = [f for f in FIELDS if f not in sample]
    extra = [k for k in sample if k not in FIELDS]
    if missing:
        _fail(where, missing[0], f"missing (every sample has all of {', '.join(FIELDS)})")
    if extra:
        _fail(where, extra[0], "unknown top-level field; put extra information into 'meta'")
    s = dict(sample)
    if not isinstance(s["id"], str) or not s["id"]:
        _fail(where, "id", f"must be a non-empty string, got {s['id']!r}")
    if s["task"] not in TASKS:
        _fail(where, "task", f"must be one of {TASKS}, got {s['task']!r}")
    images = s["images"]
    if not (isinstance(images, list) and images and all(isinstance(i, str) and i for i in images)):
        _fail(where, "images", f"must be a non-empty list of paths, got {images!r}")
    size = s["image_size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(_is_int(v) and v > 0 for v in size)):
        _fail(where, "image_size", f"must be [width, height] positive integers, got {size!r}")
    s["image_size"] = list(size)
    if s["source"] is None or not isinstance(s["source"], str) or not s["source"]:
        _fail(where, "source", f"must be a non-empty string, got {s['source']!r}")
    if s["split"] not in SPLITS:
        _fail(where, "split", f"must be one of {SPLITS}, got {s['split']!r}")
    if not isinstance(s["meta"], dict):
        _fail(where, "meta", f"must be an object, got {type(s['meta']).__name__}")

    if s["task"] == "score":
        if s["question"] is not None:
            _fail(where, "question", "must be null for 'score' (the rollout engine fills the "
                                     "think / no-think template from conf)")
        if s["answer"] is not None or s["bbox"] is not None:
            _fail(where, "answer" if s["answer"] is not None else "bbox",
                  "must be null for 'score' (the label is 'mos')")
        mos = s["mos"]
        if not (isinstance(mos, (int, float)) and not isinstance(mos, bool)
                and math.isfinite(mos) and 0.0 <= mos < MOS_MAX):
            _fail(where, "mos", f"must be a number in [0, {MOS_MAX:g}), got {mos!r}")
        s["mos"] = float(mos)
        return s

    if not isinstance(s["question"], str) or not s["question"].strip():
        _fail(where, "question", f"a {s['task']!r} sample needs the full prompt text")
    if s["mos"] is not None:
        _fail(where, "mos", f"must be null for {s['task']!r}")
    s["bbox"] = _check_box(s["bbox"], s["image_size"], where, "bbox")
    if s["task"] == "choice":
        _check_choice(s["answer"], where)
    else:
        try:
            box = [int(v) for v in str(s["answer"]).split(",")]
        except ValueError:
            box = None
        if box is None or len(box) != 4:
            _fail(where, "answer", f"a grounding answer is 'x1,y1,x2,y2', got {s['answer']!r}")
        _check_box(box, s["image_size"], where, "answer")
    return s


# Line and paragraph separators are valid inside a JSON string, but readers that split a
# file on every Unicode line break (str.splitlines, JavaScript) would cut the line there.
_SEPARATORS = {"\u2028": "\\u2028", "\u2029": "\\u2029"}


def json_line(record: Mapping[str, Any]) -> str:
    """One JSONL line (no newline): UTF-8 text as it is, but U+2028 / U+2029 escaped, so
    that the line stays one line for every reader."""
    text = json.dumps(record, ensure_ascii=False)
    for raw, escaped in _SEPARATORS.items():
        text = text.replace(raw, escaped)
    return text


def read_utf8(path: str | os.PathLike) -> str:
    """A text file's content as UTF-8 (a leading byte-order mark dropped); ValueError
    naming the file, line and column of the first byte that is not UTF-8."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at "
                         f"column {column}); JSONL files are UTF-8: re-save it as UTF-8 or "
                         "rebuild it") from None


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read and validate every line of a manifest (blank lines are skipped).

    Errors name the file and line, and what to do (a byte that is not UTF-8 as well).
    Duplicate ids are an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist; build it first "
                                "(python -m synth.perception / synth.iqa_datasets --help)")
    samples: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    with io.StringIO(read_utf8(path), newline=None) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                reason = getattr(e, "msg", "nested deeper than a parser can follow")
                raise ValueError(f"{where}: not valid JSON ({reason}); a torn last line from "
                                 "an interrupted build is repaired by rerunning the builder, "
                                 "anything else means the file was edited by hand") from None
            sample = validate_sample(obj, where)
            if sample["id"] in seen:
                raise ValueError(f"{where}: field 'id': {sample['id']!r} already used on line "
                                 f"{seen[sample['id']]}; ids must be unique in a manifest")
            seen[sample["id"]] = lineno
            samples.append(sample)
    return samples


def existing_ids(path: str | os.PathLike, repair: bool = True) -> set[str]:
    """The ids already written to a manifest (empty if the file does not exist).

    With `repair`, a last line that is not newline-terminated or not valid JSON (a torn
    write of a killed process) is cut off and a warning logged; a bad line anywhere else
    is an error, since that is not what an interruption leaves.
    """
    path = Path(path)
    if not path.exists():
        return set()
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
    lines = data[:keep].split(b"\n")[:-1]
    ids: set[str] = set()
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            ids.add(json.loads(raw)["id"])
        except (ValueError, KeyError, TypeError, RecursionError):   # bad JSON or not UTF-8
            if lineno != len(lines):
                raise ValueError(f"{path}:{lineno}: not a valid sample line; fix or delete "
                                 "the manifest and rebuild") from None
            keep -= len(raw) + 1  # a complete but garbled last line: torn as well
    if keep < len(data):
        if not repair:
            raise ValueError(f"{path}: the last line is incomplete (an interrupted write); "
                             "rerun the builder, which repairs it")
        with path.open("r+b") as f:
            f.truncate(keep)
        log.warning("%s: cut off a torn last line (%d bytes) left by an interrupted build",
                    path, len(data) - keep)
    return ids


def append_samples(path: str | os.PathLike, samples: Iterable[Mapping[str, Any]]) -> int:
    """Validate and append samples to a manifest, one line each; returns how many.

    The lines go out in one write and are flushed, so a crash loses at most the batch
    being written (and `existing_ids` repairs a torn tail). Duplicate ids are the caller's
    business: builders skip ids that `existing_ids` returns.
    """
    path = Path(path)
    lines = [json_line(validate_sample(s, f"{path} (new sample)")) for s in samples]
    if not lines:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
    return len(lines)


def write_manifest(path: str | os.PathLike, samples: Iterable[Mapping[str, Any]]) -> int:
    """Write a whole manifest atomically (a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    n = append_samples(tmp, samples)
    if n == 0:
        tmp.write_text("", encoding="utf-8")
    os.replace(tmp, path)
    return n


def relative_image_path(image: str | os.PathLike, manifest_path: str | os.PathLike) -> str:
    """How a manifest at `manifest_path` refers to `image`: relative when possible."""
    base = Path(manifest_path).resolve().parent
    try:
        return Path(os.path.relpath(Path(image).resolve(), base)).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return str(Path(image).resolve())


def resolve_images(sample: Mapping[str, Any], manifest_path: str | os.PathLike) -> list[Path]:
    """The sample's image paths made absolute (relative ones are under the manifest's folder)."""
    base = Path(manifest_path).resolve().parent
    return [p if p.is_absolute() else base / p for p in map(Path, sample["images"])]


def load_samples(manifest_path: str | os.PathLike,
                 tasks: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """The manifest's samples with their image paths made absolute (as strings), ready
    for the prompt builder; training, the evaluations and the tiny model's warm-up all
    read manifests through here.

    With `tasks`, a manifest holding samples of other tasks (a Stage-1 manifest given to
    the scoring evaluation, say), or none at all, raises ValueError naming them.
    """
    samples = read_manifest(manifest_path)
    if tasks is not None:
        others = sorted({s["task"] for s in samples} - set(tasks))
        if others:
            raise ValueError(f"{manifest_path}: holds {others} samples; only {list(tasks)} "
                             "are read here (pick the matching manifest)")
        if not samples:
            raise ValueError(f"{manifest_path}: no samples")
    for sample in samples:
        sample["images"] = [str(p) for p in resolve_images(sample, manifest_path)]
    return samples


SPLIT_CHOICES = ("test", "train", "all")


def select_split(samples: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """The samples of one split: "test" or "train" keeps the samples marked so and those
    without a split (a manifest of one split need not mark it), "all" keeps every one."""
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}, got {split!r}")
    return [s for s in samples if split == "all" or s.get("split") in (split, None)]
