"""EngineGroup: several RolloutEngine actors used as one.

A batch is cut into contiguous chunks, one per engine; results come back in input order.
Every engine is a receiver of the group's WeightSync, which owns the weights versions. If
an engine dies mid-batch, Ray restarts the actor (max_restarts); WeightSync waits for it and
replays the newest weights, and the group re-sends its chunk. A chunk answered with an
older version than WeightSync's (an engine that restarted between two calls) is redone the
same way: a stale rollout is never returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.engine_host import wait_ready
from actors.engine_settings import EngineSettings
from actors.rollout_engine import PromptRollouts, start_rollout_engine
from weight_sync.sync import StaleResultError, WeightSync


def split_evenly(num_items: int, num_parts: int) -> list[tuple[int, int]]:
    """[start, end) ranges of `num_parts` contiguous chunks whose sizes differ by <= 1;
    empty chunks are dropped."""
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    base, extra = divmod(num_items, num_parts)
    ranges, start = [], 0
    for part in range(num_parts):
        end = start + base + (1 if part < extra else 0)
        if end > start:
            ranges.append((start, end))
        start = end
    return ranges


@dataclass
class _Chunk:
    engine: int
    start: int
    end: int
    ref: Any = None
    attempts: int = 0


@dataclass
class PendingBatch:
    """A batch in flight; `result()` gathers it, re-sending chunks of engines that died."""

    group: EngineGroup
    samples: list[dict]
    call: tuple[str, int, dict]
    chunks: list[_Chunk] = field(default_factory=list)

    def result(self) -> list[PromptRollouts]:
        """All PromptRollouts in input order (blocks)."""
        import ray

        out: list[PromptRollouts | None] = [None] * len(self.samples)
        waiting = {c.ref: c for c in self.chunks}
        sync = self.group.sync
        while waiting:
            done, _ = ray.wait(list(waiting), num_returns=1)
            chunk = waiting.pop(done[0])
            try:
                part = ray.get(done[0])
            except ray.exceptions.RayActorError as err:
                cause: BaseException = err
            else:
                stale = [pr.weights_version for pr in part
                         if not sync.is_current(pr.weights_version)]
                if not stale:
                    out[chunk.start:chunk.end] = part
                    continue
                cause = StaleResultError(f"{self.group.names[chunk.engine]} answered with "
                                         f"weights version {stale[0]}, the current one is "
                                         f"{sync.version}")
            chunk.attempts += 1
            if chunk.attempts > self.group.max_resends:
                raise RuntimeError(f"{self.group.names[chunk.engine]} failed {chunk.attempts} "
                                   f"times on one chunk; giving up (last: {cause})") from cause
            sync.bring_current(self.group.names[chunk.engine], cause)
            self.group.metrics["resends"] += 1
            self._send(chunk)
            waiting[chunk.ref] = chunk
        return out  # type: ignore[return-value]

    def _send(self, chunk: _Chunk) -> None:
        mode, n, sampling = self.call
        handle = self.group.handles[chunk.engine]
        chunk.ref = handle.generate.remote(self.samples[chunk.start:chunk.end], mode, n,
                                           sampling)


class EngineGroup:
    """`num_engines` RolloutEngine actors named rollout-engine-0..N-1, registered as
    receivers of `sync` (a WeightSync of their own when none is given: evaluations, which
    push no weights)."""

    def __init__(self, settings: EngineSettings, num_engines: int, num_cpus: float = 1.0,
                 num_gpus: float = 0.0, max_restarts: int = 4, max_resends: int = 2,
                 ready_timeout_s: float = 900.0, sync: WeightSync | None = None,
                 placement: Any = None):
        if num_engines < 1:
            raise ValueError(f"num_engines must be >= 1, got {num_engines}")
        self.max_resends = max_resends
        self.sync = sync if sync is not None else WeightSync(ready_timeout_s)
        self.names = [f"rollout-engine-{i}" for i in range(num_engines)]
        # placement: cluster.placement.Placement (engine i into its node's bundle) or None
        self.handles = [start_rollout_engine(
            settings, i, num_cpus, num_gpus, max_restarts,
            placement.options("rollout", i) if placement is not None else None)
            for i in range(num_engines)]
        self.info = wait_ready(self.handles, ready_timeout_s)
        for name, handle in zip(self.names, self.handles):
            self.sync.register(name, handle)
        self.metrics = {"resends": 0, "stripped_vision_tokens": 0}

    @classmethod
    def from_config(cls, cfg: Any, settings: EngineSettings, **kwargs: Any) -> EngineGroup:
        """A group sized by conf `rollout` (num_engines, num_cpus/gpus_per_engine)."""
        r = cfg.rollout
        return cls(settings, r.num_engines, r.num_cpus_per_engine, r.num_gpus_per_engine,
                   **kwargs)

    def submit(self, samples: list[dict], mode: str, n: int, sampling: dict) -> PendingBatch:
        """Start generating; `PendingBatch.result()` returns the rollouts in input order."""
        batch = PendingBatch(self, list(samples), (mode, int(n), dict(sampling)))
        for engine, (start, end) in enumerate(split_evenly(len(samples), len(self.handles))):
            chunk = _Chunk(engine, start, end)
            batch._send(chunk)
            batch.chunks.append(chunk)
        return batch

    def generate(self, samples: list[dict], mode: str, n: int,
                 sampling: dict) -> list[PromptRollouts]:
        """n rollouts per sample, spread over the engines, in input order, all generated
        with the current weights version."""
        results = self.submit(samples, mode, n, sampling).result()
        self.metrics["stripped_vision_tokens"] += sum(
            r.stripped_tokens for pr in results for r in pr.rollouts)
        return results

    def versions(self) -> list[int]:
        """The weights version of each engine."""
        import ray

        return ray.get([h.weights_version.remote() for h in self.handles])

    def shutdown(self) -> None:
        """Kill the engines (no restart)."""
        import ray

        for handle in self.handles:
            ray.kill(handle, no_restart=True)
