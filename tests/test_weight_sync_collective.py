"""The collective transport on a real Ray cluster with gloo: bytes, draining, WeightSync.

Rank 0 (`Sender`) and the receivers are Ray actors joined by a real gloo group on
127.0.0.1. What arrives is compared with SHA-256 digests of the original tensors' bytes,
computed in this test process from the tensors it built, not by the transport.

The WeightSync test uses receivers with the real WeightReceiver around a dict that plays
the engine (`DictEngine`: no vLLM; the engine end with vLLM runs in
tests/test_multinode.py), and a `Learners` stand-in with LearnerGroup's push interface
(`live`, `start_push`) whose rank 0 is the Sender actor.
"""

from __future__ import annotations

import hashlib
import os
import sys

import pytest
import torch

from tests.conftest import restart_actor
from weight_sync.receiver import WeightReceiver, WeightSpec, WeightUpdateError
from weight_sync.sync import WeightSync
from weight_sync.transport import CollectiveTransport

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def digest(tensor: torch.Tensor) -> tuple[str, str, list[int]]:
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(raw).hexdigest(), str(tensor.dtype), list(tensor.shape)


class Sender:
    """Rank 0 of a weights group."""

    def open(self) -> int:
        from weight_sync.group import listen_on

        self.listener = listen_on("127.0.0.1")
        return int(self.listener.getsockname()[1])

    def send(self, push: dict, buckets: list[dict]) -> int:
        CollectiveTransport().send(iter(buckets), push, self.listener)
        return len(buckets)

    def publish(self, push: dict, buckets: list[dict]) -> tuple[list, dict]:
        """As a learner rank's publish_weights answers: (handles, info)."""
        return [], {"buckets": float(self.send(push, buckets)), "bytes": 0.0}


class Sink:
    """A receiver that records digests; `stop_after` closes its stream early."""

    def take(self, push: dict, stop_after: int | None = None) -> list[dict]:
        got = []
        stream = CollectiveTransport().stream(push)
        for bucket in stream:
            got.append({name: digest(t) for name, t in bucket.items()})
            if stop_after is not None and len(got) >= stop_after:
                stream.close()   # must still drain, or rank 0 and the other sink wait
                break
        return got


def _push(port: int, world: int, tag: str) -> dict:
    return {"host": "127.0.0.1", "port": port, "world_size": world, "backend": "gloo",
            "timeout_s": 60.0, "id": tag}


def test_buckets_arrive_bit_exact_and_an_early_leaver_blocks_nobody(ray_cluster):
    gen = torch.Generator().manual_seed(0)
    buckets = [
        {"a.weight": torch.randn(64, 32, generator=gen),
         "a.bias": torch.randn(32, generator=gen).to(torch.bfloat16)},
        {"b.weight": torch.randn(16, 48, generator=gen).t(),          # not contiguous
         "b.scale": torch.tensor(3.5, dtype=torch.float16),           # 0-dim
         "b.empty": torch.zeros(0, 3)},                               # no bytes
        {"c.weight": torch.randn(3, 5, 7, generator=gen, dtype=torch.float64)},
        # 2 MB alone (above SMALL_BYTES), then small ones packed behind it
        {"d.big": torch.randn(512, 1024, generator=gen), "d.s1": torch.randn(7, generator=gen),
         "d.s2": torch.randn(3, 3, generator=gen)},
    ]
    expected = [{name: digest(t) for name, t in b.items()} for b in buckets]
    sender = ray.remote(Sender).options(num_cpus=0.1).remote()
    full, early = (ray.remote(Sink).options(num_cpus=0.1).remote() for _ in range(2))
    port = ray.get(sender.open.remote())
    sent = sender.send.remote(_push(port, 3, "t1"), buckets)
    got_full = full.take.remote({**_push(port, 3, "t1"), "rank": 1})
    got_early = early.take.remote({**_push(port, 3, "t1"), "rank": 2}, stop_after=1)
    assert ray.get(sent, timeout=120) == 4
    assert ray.get(got_full, timeout=120) == expected
    assert ray.get(got_early, timeout=120) == expected[:1]


class DictEngine:
    """The engine end of WeightReceiver over a dict (begin / load_part / finish)."""

    def __init__(self, initial: dict[str, torch.Tensor]):
        self.initial = {k: v.clone() for k, v in initial.items()}
        self.weights = {k: v.clone() for k, v in initial.items()}
        self.parts = 0

    def begin(self) -> None:
        pass

    def load_part(self, tensors) -> None:
        self.parts += 1
        for name, tensor in tensors:
            self.weights[name] = tensor.clone()

    def finish(self) -> None:
        pass

    def load_initial(self) -> None:
        self.weights = {k: v.clone() for k, v in self.initial.items()}


SHAPES = {"w1": (8, 4), "w2": (4,)}


class DictReceiver:
    """A receiver actor as EngineHost is one: WeightReceiver, collective transport."""

    def __init__(self):
        self.engine = DictEngine({k: torch.zeros(s) for k, s in SHAPES.items()})
        self.receiver = WeightReceiver(WeightSpec(shapes=SHAPES), self.engine,
                                       CollectiveTransport())

    def update_weights(self, version, push):
        return self.receiver.update(version, push)

    def ready(self):
        return {"version": self.receiver.version, "pid": os.getpid()}

    def total(self):
        return float(sum(t.sum() for t in self.engine.weights.values()))


class Learners:
    """LearnerGroup's push interface (live transport) with the Sender as rank 0: every
    push sends w1 = value and w2 = value in two buckets; `poison` makes w2 NaN."""

    live = True

    def __init__(self, sender):
        self.sender, self.value, self.poison, self.pushes = sender, 0.0, False, 0

    def start_push(self, num_receivers: int):
        self.pushes += 1
        port = ray.get(self.sender.open.remote())
        push = _push(port, num_receivers + 1, f"p{self.pushes}")
        w2 = torch.full((4,), float("nan") if self.poison else self.value)
        buckets = [{"w1": torch.full((8, 4), self.value)}, {"w2": w2}]
        return push, [self.sender.publish.remote(push, buckets)]


def test_weightsync_pushes_replays_and_rolls_back_over_a_gloo_group(ray_cluster):
    sender = ray.remote(Sender).options(num_cpus=0.1).remote()
    remote = ray.remote(DictReceiver).options(num_cpus=0.1, max_restarts=2,
                                              max_task_retries=0)
    receivers = {name: remote.remote() for name in ("engine-a", "scorer")}
    sync, learners = WeightSync(ready_timeout_s=120), Learners(sender)
    for name, handle in receivers.items():
        sync.register(name, handle)
    try:
        learners.value = 2.0
        out = sync.publish(learners)
        assert out["unreachable"] == 0
        # 32 + 4 elements of 2.0 each.
        assert ray.get([h.total.remote() for h in receivers.values()]) == [72.0, 72.0]

        restart_actor(receivers["scorer"])   # comes back with version 0 and zeros
        assert ray.get(receivers["scorer"].total.remote()) == 0.0
        sync.bring_current("scorer", RuntimeError("restarted"))
        assert sync.counts["replays"] == 1
        assert ray.get(receivers["scorer"].ready.remote())["version"] == 1
        assert ray.get(receivers["scorer"].total.remote()) == 72.0

        # A NaN in the second bucket: the first was already loaded, so each receiver is
        # taken back to its files (version 0: a collective push cannot be fetched again),
        # rank 0 finishes, and nobody waits.
        learners.value, learners.poison = 5.0, True
        with pytest.raises(ray.exceptions.RayTaskError, match="NaN") as err:
            sync.publish(learners)
        assert isinstance(err.value.as_instanceof_cause(), WeightUpdateError)
        for handle in receivers.values():
            assert ray.get(handle.ready.remote())["version"] == 0
            assert ray.get(handle.total.remote()) == 0.0
    finally:
        for handle in [sender, *receivers.values()]:
            ray.kill(handle, no_restart=True)
