"""The driver's batches: a seeded shuffle per epoch, and a position that resumes exactly.

The order of epoch e is a permutation drawn from (seed, e) alone, so the whole state of
the stream is (epoch, position): a checkpoint stores those two numbers and a resumed run
sees the very batches the interrupted one would have seen. A sample that the prompt
builder would refuse (an image that cannot be decoded or read by the model, too many
images, a missing question: `check`, by default that every image decodes) is skipped,
logged and counted the first time it comes up, never sent to an engine, where it would
fail a whole batch. The driver checks every sample before the run starts
(driver.sample_checks) and hands the results in (`checked`), so a training run meets an
unusable sample here only when a file changed under it.

A batch never waits for samples that cannot come: when a whole epoch cannot fill one batch
(fewer usable samples than `batch_size`) `next_batch` raises DataError at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger("refine_iqa")


class DataError(ValueError):
    """Training or test data that cannot be used as configured; says what to do."""


def images_decode(sample: dict[str, Any]) -> None:
    """The default check: every image of the sample decodes (synth.images.open_rgb)."""
    from synth.images import open_rgb

    for image in sample.get("images", []):
        open_rgb(image)


class DataStream:
    """Batches of manifest samples, shuffled per epoch with a seed, resumable."""

    def __init__(self, samples: Sequence[dict[str, Any]], batch_size: int, seed: int,
                 shuffle: bool = True,
                 check: Callable[[dict[str, Any]], None] | None = images_decode,
                 checked: tuple[set[str], dict[str, str]] | None = None) -> None:
        """`checked`: (ids found usable, {id: reason} of those found unusable) by an
        earlier pass of `check`; neither is checked again, the unusable ones count as
        skipped from the start."""
        if not samples:
            raise DataError("the training manifest holds no samples")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.samples = list(samples)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.check = check
        self.epoch, self.position = 0, 0
        usable, skipped = checked or (set(), {})
        self.skipped: dict[str, str] = dict(skipped)
        self._checked: set[str] = set(usable)

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
        """(epoch of the batch, batch_size usable samples); a short tail is dropped.
        DataError when a whole epoch holds fewer than batch_size usable samples."""
        batch: list[dict[str, Any]] = []
        tails = 0
        while len(batch) < self.batch_size:
            order = self._order(self.epoch)
            if self.position + (self.batch_size - len(batch)) > len(order):
                # The epoch's tail cannot complete the batch: dropped, and the batch starts
                # over with the next epoch. A second time means that a whole epoch, from its
                # first sample, could not fill one batch: no later epoch will either.
                tails += 1
                if tails > 1:
                    raise DataError(
                        f"fewer than {self.batch_size} samples (one step's batch) of "
                        f"{len(self.samples)} are usable ({len(self.skipped)} skipped, first "
                        f"reason: {next(iter(self.skipped.values()), '-')})")
                self.epoch, self.position = self.epoch + 1, 0
                batch.clear()
                continue
            sample = self.samples[order[self.position]]
            self.position += 1
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
        # What the checkpoint had skipped stays skipped, as does what this run found.
        self.skipped = {**state.get("skipped", {}), **self.skipped}
