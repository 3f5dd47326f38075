"""Checkpoint directories: atomic writes, keep the last K, find the newest complete one;
and `resolve_model_path`, the one reader of conf `model.path`, which knows this layout.

Layout under a run directory:

    export/                 the finished run's model (save_pretrained + processor files)
    checkpoints/step_000010/
        deepspeed/          engine.save_checkpoint: model, optimizer, scheduler, step
        rng/rank_00000.pt   each learner rank's torch RNG state
        trainer_state.json  the training loop's own state (step, data position, RNG, ...)
        hf/                 save_pretrained model + tokenizer/processor files: loads as is
        COMPLETE            written last, before the rename

A checkpoint is written under `checkpoints/.tmp-step_000010/` and renamed into place only
once COMPLETE is inside, so a crash mid-save leaves a `.tmp-` folder that is never taken for
a checkpoint (and is removed by the next save). With several machines, the run directory
must be on a filesystem every learner rank sees (each rank writes its own shard).
The DeepSpeed calls live in learner_actor.py; this module only handles folders and files.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"
HF_DIR = "hf"
ADAPTER_DIR = "adapter"   # LoRA: the adapter in peft's format (a checkpoint's hf/ holds only it)
RUN_EXPORT = "export"
RNG_DIR = "rng"
TMP_PREFIX = ".tmp-"
PREV_SUFFIX = ".prev"   # a step's previous copy while the same step is saved again
log = logging.getLogger("refine_iqa")
_STEP_RE = re.compile(r"^step_(\d+)(\.prev)?$")

# Files of a model directory that belong to the tokenizer / processor, copied into exports.
PROCESSOR_FILE_PATTERNS = (
    "tokenizer*", "vocab*", "merges*", "special_tokens_map*", "added_tokens*",
    "preprocessor_config*", "processor_config*", "video_preprocessor_config*",
    "chat_template*",
)


def checkpoint_root(run_dir: str | Path) -> Path:
    """The folder holding a run's checkpoints."""
    return Path(run_dir) / CHECKPOINTS


def step_dir_name(step: int) -> str:
    """`step_000010` for step 10 (zero-padded so names sort by step)."""
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    return f"step_{step:06d}"


def tmp_dir_for(root: Path, step: int) -> Path:
    """Where a checkpoint of `step` is written before it is renamed into place."""
    return root / f"{TMP_PREFIX}{step_dir_name(step)}"


def write_trainer_state(directory: Path, state: dict[str, Any]) -> Path:
    """Write the loop's state as JSON; non-JSON values are an error that names the key."""
    for key, value in state.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"trainer_state[{key!r}] cannot be written as JSON ({exc}); convert it to "
                "lists/numbers/strings (e.g. random.getstate() -> list, numpy -> .tolist())"
            ) from None
    path = directory / TRAINER_STATE
    with path.open("w") as handle:
        handle.write(json.dumps(state, indent=1, sort_keys=True))
        handle.flush()
        os.fsync(handle.fileno())
    return path


def read_trainer_state(checkpoint_dir: Path) -> dict[str, Any]:
    """The loop's state saved with a checkpoint."""
    return json.loads((Path(checkpoint_dir) / TRAINER_STATE).read_text())


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once the parent directory's entry is flushed.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finalize(tmp_dir: Path, final_dir: Path, meta: dict[str, Any]) -> Path:
    """Mark `tmp_dir` complete and rename it to `final_dir` (replacing an older copy)."""
    marker = tmp_dir / COMPLETE
    marker.write_text(json.dumps({**meta, "time": time.time()}, sort_keys=True))
    with open(marker, "rb+") as handle:
        os.fsync(handle.fileno())
    # Same step saved again (e.g. after a resume): the old copy steps aside under a name
    # that list_complete still takes (step_N.prev) and that no clean-up deletes, so a crash
    # at any moment leaves a complete copy of the step; then it is dropped.
    retired = final_dir.with_name(final_dir.name + PREV_SUFFIX)
    if final_dir.exists():
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(final_dir, retired)
        _fsync_dir(final_dir.parent)
    os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)
    shutil.rmtree(retired, ignore_errors=True)   # also one left by a crash in between
    return final_dir


def list_complete(root: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found: dict[int, Path] = {}
    for child in sorted(root.iterdir()):   # step_N sorts before step_N.prev, and wins
        match = _STEP_RE.match(child.name)
        if match and child.is_dir() and (child / COMPLETE).is_file():
            found.setdefault(int(match.group(1)), child)
    return sorted(found.items())


def newest_complete(root: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = list_complete(root)
    return found[-1][1] if found else None


def newest_resumable(root: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint whose trainer state reads back, with that state; a
    torn or unreadable one is passed over (with a warning) for the one before it."""
    for _, path in reversed(list_complete(root)):
        try:
            return path, read_trainer_state(path)
        except (OSError, ValueError) as err:   # JSONDecodeError is a ValueError
            log.warning("checkpoint %s is unreadable (%s); falling back to the one before",
                        path, err)
    return None


def prune(root: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints; returns what was deleted.

    keep_last <= 0 keeps everything (a user who asks to keep none would lose the resume)."""
    if keep_last <= 0:
        return []
    doomed = [path for _, path in list_complete(root)[:-keep_last]]
    for path in doomed:
        shutil.rmtree(path)
        shutil.rmtree(path.with_name(path.name.removesuffix(PREV_SUFFIX) + PREV_SUFFIX),
                      ignore_errors=True)
    return doomed


def remove_stale_tmp(root: str | Path) -> list[Path]:
    """Delete `.tmp-*` folders left by interrupted saves."""
    root = Path(root)
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.name.startswith(TMP_PREFIX) and p.is_dir()]
    for path in stale:
        shutil.rmtree(path)
    return stale


def copy_processor_files(model_dir: str | Path, export_dir: str | Path) -> list[str]:
    """Copy the tokenizer / processor files of a local model directory into an export.

    Returns the copied file names. A model given as a hub id has no local folder: the
    caller saves the processor with `save_pretrained` instead.
    """
    model_dir, export_dir = Path(model_dir), Path(export_dir)
    copied = []
    for pattern in PROCESSOR_FILE_PATTERNS:
        for src in sorted(model_dir.glob(pattern)):
            if src.is_file():
                shutil.copy2(src, export_dir / src.name)
                copied.append(src.name)
    return copied


def resolve_model_path(path: str, cache_dir: str | Path) -> str:
    """The model directory (or hub id) that conf `model.path` names, for training and the
    evaluations alike:

    - "tiny": the embedded model (learner.cold_start: built on the spot and warmed up on
      the answer format, cached under `cache_dir`);
    - a model directory (config.json), a checkpoint (step_*/ with hf/), or a run
      directory (its export/ when the run finished, else its newest complete checkpoint);
    - a Hugging Face hub id such as Qwen/Qwen2.5-VL-7B-Instruct.

    Raises FileNotFoundError, saying what was expected, for a path that is none of these.
    """
    path = str(path)
    if path == "tiny":
        from learner.cold_start import embedded_model

        return str(embedded_model(cache_dir))
    p = Path(path).expanduser()
    if not p.exists():
        if p.is_absolute() or path.startswith((".", "~")) or path.count("/") != 1:
            raise FileNotFoundError(f"model {path!r} does not exist (give a model directory, "
                                    "a checkpoint, a run directory, 'tiny' or a hub id)")
        return path
    for candidate in (p, p / HF_DIR, p / RUN_EXPORT):
        if (candidate / "config.json").is_file():
            return str(candidate)
    if (p / HF_DIR / ADAPTER_DIR).is_dir():
        raise FileNotFoundError(f"{p} is a LoRA checkpoint: it holds the adapter alone "
                                f"({HF_DIR}/{ADAPTER_DIR}/, peft's format, for the run's base "
                                f"model); the run's {RUN_EXPORT}/ holds the merged model")
    if (p / CHECKPOINTS).is_dir():
        newest = newest_complete(p / CHECKPOINTS)
        if newest is None:
            raise FileNotFoundError(f"run directory {p} has no complete checkpoint yet")
        if not (newest / HF_DIR / "config.json").is_file():
            raise FileNotFoundError(f"run directory {p} trains a LoRA adapter and has no "
                                    f"{RUN_EXPORT}/ yet: its checkpoints hold the adapter alone")
        return str(newest / HF_DIR)
    raise FileNotFoundError(f"{p} is neither a model directory (config.json), a checkpoint "
                            f"({HF_DIR}/config.json) nor a run directory ({RUN_EXPORT}/ or "
                            f"{CHECKPOINTS}/)")
