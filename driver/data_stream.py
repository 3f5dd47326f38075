"""The driver's batches: a seeded shuffle per epoch, and a position that resumes exactly.

The order of epoch e is a permutation drawn from (seed, e) alone, so the whole state of
the stream is (epoch, position): a checkpoint stores those two numbers and a resumed run
sees the very batches the interrupted one would have seen. A sample that the prompt
builder would refuse (an image that cannot be decoded or read by the model, too many
images, a missing question: `check`, by default that every image decodes) is skipped,
logged and counted the first time it comes up, never sent to an engine, where it would
fail a whole batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger("refine_iqa")


def images_decode(sample: dict[str, Any]) -> None:
    """The default check: every image of the sample decodes (synth.images.open_rgb)."""
    from synth.images import open_rgb

    for image in sample.get("images", []):
        open_rgb(image)


class DataStream:
    """Batches of manifest samples, shuffled per epoch with a seed, resumable."""

    def __init__(self, samples: Sequence[dict[str, Any]], batch_size: int, seed: int,
                 shuffle: bool = True,
                 check: Callable[[dict[str, Any]], None] | None = images_decode) -> None:
        if not samples:
            raise ValueError("the training manifest holds no samples")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.samples = list(samples)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.check = check
        self.epoch, self.position = 0, 0
        self.skipped: dict[str, str] = {}
        self._checked: set[str] = set()

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.samples) // self.batch_size)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.samples))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.samples))

    def _usable(self, sample: dict[str, Any]) -> bool:
        sid = str(sample.get("id"))
        if sid in self.skipped:
            return False
        if self.check is not None and sid not in self._checked:
            try:
                self.check(sample)
            except (ValueError, OSError) as err:   # FileNotFoundError is an OSError
                self.skipped[sid] = str(err)
                log.warning("skipping sample %s: %s", sid, err)
                return False
            self._checked.add(sid)
        return True

    def next_batch(self) -> tuple[int, list[dict[str, Any]]]:
        """(epoch of the batch, batch_size usable samples); a short tail is dropped."""
        batch: list[dict[str, Any]] = []
        tried = 0
        while len(batch) < self.batch_size:
            order = self._order(self.epoch)
            if self.position + (self.batch_size - len(batch)) > len(order):
                self.epoch, self.position = self.epoch + 1, 0  # drop the epoch's tail
                batch.clear()
                continue
            sample = self.samples[order[self.position]]
            self.position += 1
            tried += 1
            if tried > 2 * len(self.samples) + self.batch_size:
                raise ValueError(
                    f"fewer than {self.batch_size} samples of the manifest are usable "
                    f"({len(self.skipped)} skipped, first reason: "
                    f"{next(iter(self.skipped.values()), '-')})")
            if self._usable(sample):
                batch.append(sample)
        return self.epoch, batch

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores to resume at the same batch."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "skipped": dict(self.skipped)}

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Go to a `state()` taken earlier; None: the start (samples found unusable stay
        skipped)."""
        if state is None:
            self.epoch, self.position = 0, 0
            return
        if state.get("seed", self.seed) != self.seed:
            raise ValueError("the checkpoint's data seed differs from run.seed; resume with "
                             f"run.seed={state['seed']} or start a new run.name")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.skipped = dict(state.get("skipped", {}))
