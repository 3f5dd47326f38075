"""The human check's decisions: one review item per distorted image, an append-only file.

The paper's Stage-1 data passes a human check (supplementary "Subjective Experiment"): a
sample is kept only if its box clearly holds the named object as the dominant content and
the distortion is visible. Both are facts about the distorted IMAGE and its box, not about
the four tasks asked on it, so one decision is taken per distorted image (its review item,
`item_id`) and applies to all of its sample ids (choice / grounding x fr / nr).

Decisions live beside the manifest, ``<manifest stem>.decisions.jsonl``, one JSON object
a line, appended and flushed (fsync) as each is taken, so a crash or a reload loses nothing:

    {"id": item, "sample_ids": [...], "decision": "accept" | "reject" | null,
     "time": ISO-8601 UTC, "reviewer": name or null}

The last line of an item wins; ``null`` is an undo back to "not reviewed". Nothing is ever
rewritten, so the file is also the audit trail of the review.

`synth.perception` never rebuilds a rejected id (`rejected_ids`), and `export_accepted`
writes a manifest of the accepted samples for training.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from synth.manifest import (
    existing_ids,
    json_line,
    read_manifest,
    read_utf8,
    relative_image_path,
    resolve_images,
    write_manifest,
)

DECISIONS = ("accept", "reject")


def decisions_path(manifest: str | os.PathLike) -> Path:
    """Where the decisions of `manifest` are kept: beside it, `<stem>.decisions.jsonl`."""
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}.decisions.jsonl")


def item_id(sample: Mapping[str, Any]) -> str:
    """The review item of a sample: its distorted image (the perception builder's job id,
    else the judged image's path, which the four samples of one image share)."""
    return str(sample["meta"].get("job_id") or sample["images"][-1])


def group_items(samples: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Samples grouped by review item, in manifest order."""
    items: dict[str, list[Mapping[str, Any]]] = {}
    for s in samples:
        items.setdefault(item_id(s), []).append(s)
    return items


def append_decision(manifest: str | os.PathLike, item: str, sample_ids: list[str],
                    decision: str | None, reviewer: str | None = None) -> dict[str, Any]:
    """Append one decision (None = undo to unreviewed) and sync it to disk; returns the line."""
    if decision is not None and decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS} or null, got {decision!r}")
    path = decisions_path(manifest)
    existing_ids(path, repair=True)  # a torn tail from a crash would swallow our line
    record = {"id": item, "sample_ids": list(sample_ids), "decision": decision,
              "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "reviewer": reviewer or None}
    with path.open("a", encoding="utf-8") as f:
        f.write(json_line(record) + "\n")
        f.flush()
        os.fsync(f.fileno())  # "saved" on the page must mean saved on disk
    return record


def read_decisions(manifest: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The current decision line of every item that has one (the last line wins; an item
    whose last line is an undo is left out). A torn last line is ignored, not repaired."""
    path = decisions_path(manifest)
    if not path.exists():
        return {}
    current: dict[str, dict[str, Any]] = {}
    lines = read_utf8(path).split("\n")
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            key = rec["id"]
        except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
            if lineno >= len(lines) - 1:  # the torn write of a crash
                continue
            raise ValueError(f"{path}:{lineno}: not a decision line; the file is append-only, "
                             "so it was edited by hand: fix or delete that line") from None
        if rec.get("decision") in DECISIONS:
            current[key] = rec
        else:
            current.pop(key, None)
    return current


def rejected_ids(manifest: str | os.PathLike) -> set[str]:
    """Every sample id whose item's current decision is "reject"."""
    return {sid for rec in read_decisions(manifest).values() if rec["decision"] == "reject"
            for sid in rec["sample_ids"]}


def decision_counts(manifest: str | os.PathLike,
                    samples: list[dict[str, Any]] | None = None) -> dict[str, int]:
    """Items (distorted images) accepted / rejected / not reviewed, and the total."""
    samples = read_manifest(manifest) if samples is None else samples
    items = group_items(samples)
    current = read_decisions(manifest)
    counts = {d: sum(current.get(i, {}).get("decision") == d for i in items) for d in DECISIONS}
    return {"accept": counts["accept"], "reject": counts["reject"],
            "unreviewed": len(items) - sum(counts.values()), "total": len(items)}


def export_accepted(manifest: str | os.PathLike, out: str | os.PathLike) -> dict[str, int]:
    """Write the samples of accepted items to `out` (image paths re-expressed relative to
    `out`'s folder); returns the item counts plus the number of samples written."""
    if Path(out).resolve() == Path(manifest).resolve():
        raise ValueError("the export must be a new file, not the manifest itself")
    samples = read_manifest(manifest)
    accepted = {i for i, rec in read_decisions(manifest).items() if rec["decision"] == "accept"}
    keep = []
    for s in samples:
        if item_id(s) in accepted:
            images = [relative_image_path(p, out) for p in resolve_images(s, manifest)]
            keep.append({**s, "images": images})
    written = write_manifest(out, keep)
    return {**decision_counts(manifest, samples), "samples_written": written}
