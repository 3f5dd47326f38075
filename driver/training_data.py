"""A run's data: its three splits checked, the stream of training batches, the data order's
fingerprint.

- The splits (train, val, test) come from conf `data.*_files` (driver.data_splits), or the
  embedded mini dataset of the stage when `data.train_files` is null.
- Every sample of every split is checked before any actor starts (driver.sample_checks):
  the unusable ones are skipped and counted; too few usable training samples for one step
  is refused.
- `fingerprint` records what decides the data order (files and their content hashes,
  samples per step, shuffle, seed); a resume with a different one is refused unless
  `run.resume=force`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driver.data_splits import load_splits
from driver.data_stream import DataError  # raised here too; launch catches it from here

log = logging.getLogger("refine_iqa")


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def fingerprint(files: list[Path], per_step: int, shuffle: bool, seed: int,
                drop_test_split: bool, val_fraction: float = 0.0) -> dict[str, Any]:
    """What decides which samples each step sees (stored in every checkpoint)."""
    return {"manifests": [{"path": str(Path(m).resolve()), "sha256": _file_hash(Path(m))}
                          for m in files],
            "samples_per_step": int(per_step), "shuffle": bool(shuffle), "seed": int(seed),
            "drop_test_split": bool(drop_test_split), "val_fraction": float(val_fraction)}


def fingerprint_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's fingerprint and this run's, in words."""
    changes = []
    for key in ("samples_per_step", "shuffle", "seed", "drop_test_split", "val_fraction"):
        # a key an older checkpoint lacks (val_fraction) is not a change
        if saved.get(key, current.get(key)) != current.get(key):
            changes.append(f"{key} {saved.get(key)!r} -> {current.get(key)!r}")
    old = [(m["path"], m["sha256"]) for m in saved.get("manifests", [])]
    new = [(m["path"], m["sha256"]) for m in current.get("manifests", [])]
    if [p for p, _ in old] != [p for p, _ in new]:
        changes.append(f"manifests {[p for p, _ in old]} -> {[p for p, _ in new]}")
    else:
        changes += [f"{p} changed content" for (p, a), (_, b) in zip(old, new) if a != b]
    return changes


@dataclass
class RunData:
    """What a training run reads: the stream of training batches, the validation and test
    samples (the usable ones; {id: reason} of those skipped), the number of steps, the
    fingerprint of the data order, and the sample check (each validation repeats it)."""

    stream: Any   # driver.data_stream.DataStream
    val: list[dict]
    test: list[dict]
    steps: int
    fingerprint: dict[str, Any]
    val_skipped: dict[str, str] = field(default_factory=dict)
    test_skipped: dict[str, str] = field(default_factory=dict)
    check: Any = None


def configured_files(cfg: Any) -> tuple[Any, Any, Any]:
    """(train, val, test) files as configured, or the embedded mini dataset's of this stage
    when `data.train_files` is null (its validation carved by photo, data.val_fraction)."""
    d = cfg.data
    train, val, test = d.train_files, d.val_files, d.test_files
    if train is None:
        from synth.mini_dataset import build_mini_dataset

        mini = build_mini_dataset(Path(cfg.model.cache_dir) / "mini")
        train = str(mini[f"stage{cfg.stage}_train"])
        test = test or str(mini[f"stage{cfg.stage}_test"])
        print(f"# data: the embedded mini dataset of stage {cfg.stage} "
              "(data.train_files is null)")
    return train, val, test


def run_data(cfg: Any, model_path: str | None = None) -> RunData:
    """The run's data as conf `data` and `train` say: its splits (driver.data_splits),
    batches of train.batch_size x train.grad_accum images (one optimizer step weighs every
    token of them in one update, which is what accumulation over rounds would give),
    train.max_steps or train.epochs of them. Every sample of every split is
    checked here as the engines will read it (driver.sample_checks; with `model_path`,
    the prompt's length too): the unusable ones are skipped and counted, and DataError
    refuses a run whose usable training samples cannot fill one step's batch."""
    from driver.data_stream import DataStream
    from driver.sample_checks import check_all, sample_check, skipped_note

    stage2 = cfg.stage == 2
    data = load_splits(cfg, *configured_files(cfg),
                       ("score",) if stage2 else ("choice", "grounding"))
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    check = sample_check(cfg, model_path)
    train = check_all(data.train, check)
    if len(train.usable) < per_step:
        first = next(iter(train.skipped.values()), None)
        raise DataError(
            f"data.train_files: {len(train.usable)} of {len(data.train)} training samples "
            f"are usable, fewer than one step takes (train.batch_size x train.grad_accum = "
            f"{cfg.train.batch_size} x {cfg.train.grad_accum} = {per_step})"
            + (f"; {len(train.skipped)} skipped, the first: {first}" if first else "")
            + ": add samples, fix the skipped ones, or lower train.batch_size")
    val, test = check_all(data.val, check), check_all(data.test, check)
    for what, checked in (("data.train_files", train), ("data.val_files", val),
                          ("data.test_files", test)):
        note = skipped_note(what, checked)
        if note:
            print(f"# {note}")
    stream = DataStream(data.train, per_step, cfg.run.seed, cfg.data.shuffle, check=check,
                        checked=(train.usable_ids, train.skipped))
    steps = cfg.train.max_steps or cfg.train.epochs * stream.steps_per_epoch
    return RunData(stream, val.usable, test.usable, steps, fingerprint(
        data.files, per_step, cfg.data.shuffle, cfg.run.seed, cfg.data.drop_test_split,
        cfg.data.val_fraction), val_skipped=val.skipped, test_skipped=test.skipped,
        check=check)


def check_resumable(cfg: Any, run_dir: Path, current: dict[str, Any]) -> None:
    """Refuse to resume a run whose data order changed (unless run.resume=force): the
    newest checkpoint's data fingerprint must be `current`. DataError says what to do."""
    from learner.checkpoint import checkpoint_root, newest_resumable

    found = newest_resumable(checkpoint_root(run_dir)) if cfg.run.resume else None
    if found is None or cfg.run.resume == "force":
        return
    newest, state = found
    changes = fingerprint_changes(state.get("data_fingerprint", {}), current)
    if changes:
        raise DataError(f"the data order differs from {newest}'s ({'; '.join(changes)}): "
                        "resuming would repeat or skip samples. Use another run.name, or "
                        "run.resume=force to continue anyway")
