"""The next step's experience, made while the learners update (train.async_rollout).

Off (the default, the paper's on-policy loop), `take` draws a batch and makes its
experience on the spot. On, `start_next` draws the next batch and hands it to one
background thread right before the learners' update, so the engines generate (and the
scoring actor scores) with the weights of the step before while the learners update;
`wait` returns once that generation is done, before the new weights are published, so no
engine is ever loaded while it generates and every rollout still passes WeightSync's
version check. The learner then trains on rollouts one version old; its policy ratio is
taken against vLLM's sampling logprobs (conf refuses learner.recompute_old_logprobs with
this), as OpenRLHF's and verl's asynchronous modes do.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass
class Drawn:
    """One step's batch, its experience, and the data stream's state before it was drawn
    (what a checkpoint taken while it is pending must store)."""

    epoch: int
    batch: list[dict]
    stream_state: dict
    experience: Any = None


class ExperienceAhead:
    """Draws batches from `stream` and makes their experience with `maker`, one step
    ahead of the update when `enabled`."""

    def __init__(self, maker: Any, stream: Any, enabled: bool) -> None:
        self.maker, self.stream, self.enabled = maker, stream, bool(enabled)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rollout-ahead") \
            if self.enabled else None
        self._pending: tuple[Drawn, Future] | None = None

    def _draw(self) -> Drawn:
        state = self.stream.state()
        epoch, batch = self.stream.next_batch()
        return Drawn(epoch, batch, state)

    def take(self) -> Drawn:
        """This step's batch and experience: the one made ahead, or made now."""
        if self._pending is not None:
            drawn, future = self._pending
            self._pending = None
            drawn.experience = future.result()
            return drawn
        drawn = self._draw()
        drawn.experience = self.maker.make(drawn.batch)
        return drawn

    def start_next(self, more: bool) -> None:
        """Enabled and `more` steps to come: start making the next step's experience."""
        if self._pool is not None and more:
            drawn = self._draw()
            self._pending = (drawn, self._pool.submit(self.maker.make, drawn.batch))

    def wait(self) -> None:
        """Block until the experience being made ahead is complete (its error, if any, is
        raised by the `take` that collects it)."""
        if self._pending is not None:
            self._pending[1].exception()

    def stream_state(self) -> dict:
        """The data stream's state as of the steps done: a pending batch is not counted
        (a resume draws it again)."""
        return self._pending[0].stream_state if self._pending else self.stream.state()

    def discard(self) -> None:
        """Drop the experience made ahead (the learners were restored to an older step):
        waits for it, so no generation is running when the weights change."""
        if self._pending is not None:
            self._pending[1].exception()
            self._pending = None

    def close(self) -> None:
        """Stop the background thread."""
        self.discard()
        if self._pool is not None:
            self._pool.shutdown()
