"""EngineGroup: several RolloutEngine actors used as one.

A batch is cut into contiguous chunks, one per engine; results come back in input order.
If an engine dies mid-batch, Ray restarts the actor (max_restarts); the group waits for
it, brings it to the weights version the batch was started with (re-sending the last
pushed buckets, which the group or a live peer still holds) and re-sends its chunk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from actors.vllm_engine import EngineSettings, PromptRollouts, start_rollout_engine, wait_ready
from actors.weights import WeightUpdateError


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
        while waiting:
            done, _ = ray.wait(list(waiting), num_returns=1)
            chunk = waiting.pop(done[0])
            try:
                part = ray.get(done[0])
            except ray.exceptions.RayActorError as err:
                self.group._recover(chunk.engine, err)
                chunk.attempts += 1
                if chunk.attempts > self.group.max_resends:
                    raise RuntimeError(
                        f"rollout-engine-{chunk.engine} died {chunk.attempts} times on one "
                        f"chunk; giving up (last error: {err})") from err
                self.group.metrics["resends"] += 1
                self._send(chunk)
                waiting[chunk.ref] = chunk
                continue
            stale = [pr.weights_version for pr in part
                     if pr.weights_version < self.group._expected_version]
            if stale:
                # The engine restarted between calls (it answers, but with the model's
                # initial weights): bring it to the expected version and redo its chunk.
                self.group._recover(chunk.engine, RuntimeError(
                    f"rollout-engine-{chunk.engine} answered with weights version "
                    f"{stale[0]} < {self.group._expected_version}"))
                self.group.metrics["resends"] += 1
                self._send(chunk)
                waiting[chunk.ref] = chunk
                continue
            out[chunk.start:chunk.end] = part
        return out  # type: ignore[return-value]

    def _send(self, chunk: _Chunk) -> None:
        mode, n, sampling = self.call
        handle = self.group.handles[chunk.engine]
        chunk.ref = handle.generate.remote(self.samples[chunk.start:chunk.end], mode, n,
                                           sampling)


class EngineGroup:
    """`num_engines` RolloutEngine actors named rollout-engine-0..N-1.

    Push weights through `update_weights` (or hand `handles` to the learner's sender and
    let the group find the buckets on a live engine after a restart).
    """

    def __init__(self, settings: EngineSettings, num_engines: int, num_cpus: float = 1.0,
                 num_gpus: float = 0.0, max_restarts: int = 4, max_resends: int = 2,
                 ready_timeout_s: float = 900.0, weight_peers: tuple[Any, ...] = ()):
        if num_engines < 1:
            raise ValueError(f"num_engines must be >= 1, got {num_engines}")
        self.max_resends = max_resends
        self.ready_timeout_s = ready_timeout_s
        self.weight_peers = tuple(weight_peers)   # e.g. the scoring actor
        self.handles = [start_rollout_engine(settings, i, num_cpus, num_gpus, max_restarts)
                        for i in range(num_engines)]
        self.info = wait_ready(self.handles, ready_timeout_s)
        self._weights: tuple[int, list[Any]] = (0, [])
        self._expected_version = 0
        self.metrics = {"resends": 0, "restarts": 0, "weight_replays": 0,
                        "stripped_vision_tokens": 0}

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
        """n rollouts per sample, spread over the engines, in input order."""
        results = self.submit(samples, mode, n, sampling).result()
        self.metrics["stripped_vision_tokens"] += sum(
            r.stripped_tokens for pr in results for r in pr.rollouts)
        self._expected_version = max([self._expected_version] +
                                     [r.weights_version for r in results])
        return results

    def update_weights(self, version: int, bucket_refs: list[Any]) -> list[dict]:
        """Push one version to every engine (blocks); the group keeps the buckets' handles
        to bring a restarted engine back to this version."""
        import ray

        reports = ray.get([h.update_weights.remote(version, bucket_refs)
                           for h in self.handles])
        self._weights = (version, list(bucket_refs))
        self._expected_version = max(self._expected_version, version)
        return reports

    def expect_version(self, version: int) -> None:
        """Record a version pushed straight to the engine handles (the learner's sender):
        results generated with an older one come from a restarted engine and are redone."""
        self._expected_version = max(self._expected_version, int(version))

    def versions(self) -> list[int]:
        """The weights version of each engine."""
        import ray

        return ray.get([h.weights_version.remote() for h in self.handles])

    def _recover(self, engine: int, err: Exception) -> None:
        """Wait for Ray to restart `engine`, then give it the expected weights."""
        import ray

        handle = self.handles[engine]
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                info = ray.get(handle.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                break
            except ray.exceptions.ActorUnavailableError:
                time.sleep(1.0)  # restarting: calls are refused for a moment
            except ray.exceptions.GetTimeoutError:
                raise TimeoutError(f"rollout-engine-{engine} did not come back within "
                                   f"{self.ready_timeout_s:.0f}s after: {err}") from err
            except ray.exceptions.RayActorError as dead:
                raise RuntimeError(f"rollout-engine-{engine} died and Ray did not restart it "
                                   f"(max_restarts used up?): {dead}") from err
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollout-engine-{engine} did not come back: {err}")
        self.metrics["restarts"] += 1
        self.info[engine] = info
        # The target is the newest version anyone has seen: pushes may have gone straight
        # to the engine handles (the learner's sender) without passing through the group.
        version, refs = self._latest_weights(exclude=engine)
        target = max(self._expected_version, version)
        if info["version"] < target:
            if version < target or not refs:
                raise WeightUpdateError(
                    f"rollout-engine-{engine} restarted with the model's initial weights and "
                    f"no copy of version {target} is left to re-send; push the weights again")
            ray.get(handle.update_weights.remote(version, refs))
            self.metrics["weight_replays"] += 1

    def _latest_weights(self, exclude: int) -> tuple[int, list[Any]]:
        """The newest (version, handles) the group or any live engine / peer still holds."""
        import ray

        best = self._weights
        peers = [h for i, h in enumerate(self.handles) if i != exclude] + list(self.weight_peers)
        for peer in peers:
            try:
                version, refs = ray.get(peer.last_weights.remote(), timeout=60)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                continue
            if version > best[0] and refs:
                best = (version, refs)
        return best

    def shutdown(self) -> None:
        """Kill the engines (no restart)."""
        import ray

        for handle in self.handles:
            ray.kill(handle, no_restart=True)
