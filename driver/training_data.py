"""Which samples a run trains and validates on, and the fingerprint of the data order.

- `data.train_manifest` / `data.test_manifest` take one manifest or a list; each
  manifest's relative image paths resolve against its own folder (synth.manifest), so
  KonIQ-10k and SPAQ mix as Table 7 trains them, shuffled together by the data stream.
- No leakage by default: a training manifest holding samples marked `split: test` is
  refused, naming the count, unless `data.drop_test_split=true` asks to train on its
  train part only; validation reads the test split of the test manifests (unmarked samples
  count as either split, synth.manifest.select_split).
- The same image in two training manifests is reported; two different samples with one
  id are an error (engines, learner and scorer key their caches by id).
- `fingerprint` records what decides the data order (manifests and their content hashes,
  samples per step, shuffle, seed); a resume with a different one is refused unless
  `run.resume=force`.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driver.data_stream import DataError  # raised here too; launch catches it from here

log = logging.getLogger("refine_iqa")


def manifest_paths(value: Any, key: str) -> list[Path]:
    """conf `data.*_manifest`: one path or a list of them (an empty list is an error)."""
    if value is None:
        return []
    items = [value] if isinstance(value, str | Path) else list(value)
    if not items or not all(isinstance(v, str | Path) and str(v) for v in items):
        raise DataError(f"{key} must be a manifest path or a list of them, got {value!r}")
    missing = [str(v) for v in items if not Path(v).is_file()]
    if missing:
        raise DataError(f"{key}: {', '.join(missing)} does not exist: build manifests with "
                        "synth.perception or synth.iqa_datasets (README), or leave it null "
                        "for the embedded mini set")
    return [Path(v) for v in items]


@dataclass
class TrainingData:
    """The training samples, the test samples, and what was left out or noticed."""

    train: list[dict]
    test: list[dict]
    manifests: list[Path]
    notes: list[str] = field(default_factory=list)


def _load(manifests: list[Path], key: str) -> list[tuple[dict, Path]]:
    """(sample, the manifest it came from) of every manifest, image paths absolute."""
    from synth.manifest import load_samples

    pairs: list[tuple[dict, Path]] = []
    for manifest in manifests:
        try:
            pairs += [(s, manifest) for s in load_samples(manifest)]
        except ValueError as err:
            raise DataError(f"{key}: {err}") from None
    return pairs


def _judged(sample: dict) -> str:
    """The judged image's file, symlinks and ".." resolved (one file, one name)."""
    return str(Path(sample["images"][-1]).resolve())


def _check_ids_and_images(pairs: list[tuple[dict, Path]], key: str, notes: list[str]) -> None:
    by_id: dict[str, tuple[dict, Path]] = {}
    for s, manifest in pairs:
        seen, seen_in = by_id.setdefault(str(s["id"]), (s, manifest))
        if seen is not s and seen["images"] != s["images"]:
            raise DataError(f"{key}: sample id {s['id']!r} names different images in "
                            f"{seen_in} and {manifest}; ids must be unique across the "
                            "manifests of a run")
    where: dict[str, set[Path]] = {}
    for s, manifest in pairs:
        where.setdefault(_judged(s), set()).add(manifest)
    shared = [img for img, ms in where.items() if len(ms) > 1]
    if shared:
        notes.append(f"{len(shared)} images appear in more than one of {key} (e.g. "
                     f"{shared[0]}); they are trained on once per manifest")


def load_training_data(train_value: Any, test_value: Any, drop_test_split: bool,
                       stage_tasks: tuple[str, ...]) -> TrainingData:
    """Training samples (split train or unmarked) and test samples (split test or
    unmarked) of the configured manifests; DataError on leakage or bad manifests."""
    from synth.manifest import select_split

    train_manifests = manifest_paths(train_value, "data.train_manifest")
    test_manifests = manifest_paths(test_value, "data.test_manifest")
    notes: list[str] = []
    pairs = _load(train_manifests, "data.train_manifest")
    wrong_task = Counter(s["task"] for s, _ in pairs if s["task"] not in stage_tasks)
    if wrong_task:
        raise DataError(f"data.train_manifest holds {dict(wrong_task)} samples, but this stage "
                        f"trains on {list(stage_tasks)}: pick the manifests of this stage")
    marked_test = sum(s.get("split") == "test" for s, _ in pairs)
    if marked_test and not drop_test_split:
        raise DataError(
            f"data.train_manifest holds {marked_test} samples marked split=test: training "
            "on them leaks the test set. Build the manifest with --only train "
            "(synth.iqa_datasets) and give the test part as data.test_manifest, or set "
            "data.drop_test_split=true to train on the train part only")
    pairs = [(s, m) for s, m in pairs if s.get("split") in ("train", None)]
    if marked_test:
        notes.append(f"dropped {marked_test} split=test samples from the training "
                     "manifests (data.drop_test_split)")
    if not pairs:
        raise DataError("data.train_manifest holds no training samples")
    _check_ids_and_images(pairs, "data.train_manifest", notes)
    train = [s for s, _ in pairs]
    test = select_split([s for s, _ in _load(test_manifests, "data.test_manifest")], "test")
    test = [s for s in test if s["task"] in stage_tasks]
    leaked = {_judged(s) for s in train} & {_judged(s) for s in test}
    if leaked:
        raise DataError(f"{len(leaked)} test images are also training images (e.g. "
                        f"{sorted(leaked)[0]}): a test manifest must hold other images")
    for note in notes:
        log.warning("%s", note)
    return TrainingData(train=train, test=test, manifests=train_manifests, notes=notes)


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def fingerprint(manifests: list[Path], per_step: int, shuffle: bool, seed: int,
                drop_test_split: bool) -> dict[str, Any]:
    """What decides which samples each step sees (stored in every checkpoint)."""
    return {"manifests": [{"path": str(Path(m).resolve()), "sha256": _file_hash(Path(m))}
                          for m in manifests],
            "samples_per_step": int(per_step), "shuffle": bool(shuffle), "seed": int(seed),
            "drop_test_split": bool(drop_test_split)}


def fingerprint_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's fingerprint and this run's, in words."""
    changes = []
    for key in ("samples_per_step", "shuffle", "seed", "drop_test_split"):
        if saved.get(key) != current.get(key):
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
    """What a training run reads: the stream of training batches, the held-out samples
    (the usable ones; {id: reason} of those skipped), the number of steps, the
    fingerprint of the data order, and the sample check (validation repeats it)."""

    stream: Any   # driver.data_stream.DataStream
    test: list[dict]
    steps: int
    fingerprint: dict[str, Any]
    test_skipped: dict[str, str] = field(default_factory=dict)
    check: Any = None


def configured_manifests(cfg: Any) -> tuple[Any, Any]:
    """(train, test) manifests as configured, or the embedded mini dataset's of this stage
    when `data.train_manifest` is null."""
    train_m, test_m = cfg.data.train_manifest, cfg.data.test_manifest
    if train_m is None:
        from synth.mini_dataset import build_mini_dataset

        mini = build_mini_dataset(Path(cfg.model.cache_dir) / "mini")
        train_m = str(mini[f"stage{cfg.stage}_train"])
        test_m = test_m or str(mini[f"stage{cfg.stage}_test"])
        print(f"# data: the embedded mini dataset of stage {cfg.stage} "
              "(data.train_manifest is null)")
    return train_m, test_m


def run_data(cfg: Any, model_path: str | None = None) -> RunData:
    """The run's data as conf `data` and `train` say: its samples (load_training_data),
    batches of train.batch_size x train.grad_accum images (one optimizer step weighs every
    token of them in one update, which is what accumulation over rounds would give),
    train.max_steps or train.epochs of them. Every training and held-out sample is
    checked here as the engines will read it (driver.sample_checks; with `model_path`,
    the prompt's length too): the unusable ones are skipped and counted, and DataError
    refuses a run whose usable training samples cannot fill one step's batch."""
    from driver.data_stream import DataStream
    from driver.sample_checks import check_all, sample_check, skipped_note

    stage2 = cfg.stage == 2
    data = load_training_data(*configured_manifests(cfg), cfg.data.drop_test_split,
                              ("score",) if stage2 else ("choice", "grounding"))
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    check = sample_check(cfg, model_path)
    train = check_all(data.train, check)
    if len(train.usable) < per_step:
        first = next(iter(train.skipped.values()), None)
        raise DataError(
            f"data.train_manifest: {len(train.usable)} of {len(data.train)} training samples "
            f"are usable, fewer than one step takes (train.batch_size x train.grad_accum = "
            f"{cfg.train.batch_size} x {cfg.train.grad_accum} = {per_step})"
            + (f"; {len(train.skipped)} skipped, the first: {first}" if first else "")
            + ": add samples, fix the skipped ones, or lower train.batch_size")
    test = check_all(data.test, check)
    for what, checked in (("data.train_manifest", train), ("data.test_manifest", test)):
        note = skipped_note(what, checked)
        if note:
            print(f"# {note}")
    stream = DataStream(data.train, per_step, cfg.run.seed, cfg.data.shuffle, check=check,
                        checked=(train.usable_ids, train.skipped))
    steps = cfg.train.max_steps or cfg.train.epochs * stream.steps_per_epoch
    return RunData(stream, test.usable, steps, fingerprint(
        data.manifests, per_step, cfg.data.shuffle, cfg.run.seed, cfg.data.drop_test_split),
        test_skipped=test.skipped, check=check)


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
