"""Who holds the GPU when rollout and training share it (placement.colocate).

cluster.resources puts each rollout engine and the scoring actor beside a learner rank,
on that rank's GPU. One step then runs in this order (OpenRLHF's `--colocate_all_models`
and verl's hybrid engine order it the same way):

    generate, score              vLLM actors awake; the learners' states in host memory
    sleep                        vLLM actors: weights to host memory, KV cache dropped
    reload, update               the learners' states back on the GPU, one optimizer step
    wake ["weights"], push       the vLLM actors' weights resident, the new ones loaded
    offload, wake ["kv_cache"]   the learners' states out, then the engines' KV cache in

Checkpoints and exports read the learners' states: `learner_turn` brings them in around
that, the vLLM actors asleep meanwhile. Without colocation every call here does nothing.

A vLLM actor that died comes back awake (Ray restarts it; WeightSync brings it to the
current weights when it is next used), so a sleep or wake that finds it dead is skipped.
After a learner died mid-step, `recover` wakes every vLLM actor before the new learners
publish into them.

On CPU, vLLM's sleep moves nothing (it pauses the scheduler, and wake resumes it) and
the learners' states stay where they are: the CPU tests check the order and that a run
goes through it; the GPU calls are said in actors.engine_host and learner.learner_actor.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

EVENTS_KEPT = 16   # the latest handovers, enough for a step and a checkpoint's turn


class GpuSharing:
    """The colocated step's order (module docstring); `enabled` False: all no-ops.
    `events` holds the latest handovers, in order (what the tests read)."""

    def __init__(self, enabled: bool, vllm_actors: list[Any]) -> None:
        self.enabled = enabled
        self.vllm_actors = vllm_actors
        self.events: deque[str] = deque(maxlen=EVENTS_KEPT)

    @classmethod
    def for_run(cls, cfg: Any, running: Any) -> GpuSharing:
        """The sharing of a training run: its engines and scoring actor (cluster.start)."""
        actors = [*(running.engines.handles if running.engines else []),
                  *([running.scorer] if running.scorer is not None else [])]
        return cls(bool(cfg.placement.colocate), actors)

    def _vllm(self, method: str, *args: Any) -> None:
        import ray

        calls = [getattr(handle, method).remote(*args) for handle in self.vllm_actors]
        for call in calls:
            with contextlib.suppress(ray.exceptions.RayActorError):   # restarted awake
                ray.get(call)
        self.events.append(method if not args or args[0] is None else f"{method}:{args[0][0]}")

    def _learners(self, learners: Any, method: str) -> None:
        getattr(learners, method)()
        self.events.append(method)

    def before_update(self, learners: Any) -> None:
        """The vLLM actors asleep, the learners' states on the GPU."""
        if self.enabled:
            self._vllm("sleep")
            self._learners(learners, "reload_states")

    def publish(self, sync: Any, learners: Any) -> dict[str, float]:
        """sync.publish(learners) with the vLLM actors' weights resident; then the learners'
        states out and the KV caches in. Returns the push's report."""
        if not self.enabled:
            return sync.publish(learners)
        self._vllm("wake_up", ["weights"])
        push = sync.publish(learners)
        self.events.append("publish")
        self._learners(learners, "offload_states")
        self._vllm("wake_up", ["kv_cache"])
        return push

    @contextmanager
    def learner_turn(self, learners: Any) -> Iterator[None]:
        """The learners' states on the GPU (the vLLM actors asleep) for a checkpoint or an
        export; as before afterwards."""
        if not self.enabled:
            yield
            return
        self.before_update(learners)
        try:
            yield
        finally:
            self._learners(learners, "offload_states")
            self._vllm("wake_up", None)

    def rest(self, learners: Any) -> None:
        """The learners' states off the GPU: after new learners start and are restored."""
        if self.enabled:
            self._learners(learners, "offload_states")

    def recover(self) -> None:
        """Every vLLM actor awake again: a learner died with them asleep."""
        if self.enabled:
            self._vllm("wake_up", None)
