"""WeightSync on a real Ray cluster, with light receivers (no vLLM: the engines' own
receiving end is tests/test_weight_sync_receiver.py, the full path with vLLM engines
tests/test_rollout_engine.py and tests/test_learner_vllm.py).

A receiver here is a Ray actor that keeps the version and the sum of the tensors it was
sent, and answers `measure()` with that sum tagged with its weights version: enough to
tell a stale answer from a current one. Ray restarts it with version 0, as it does a
vLLM engine.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import pytest
import torch

from tests.conftest import restart_actor
from weight_sync.sync import LearnersGone, StaleResultError, WeightSync, result_versions

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
# The workers cannot import this test module: ship its classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class Measured:
    total: float
    weights_version: int


class Receiver:
    def __init__(self):
        self.version, self.total = 0, 0.0

    def update_weights(self, version, handles):
        if version <= self.version:
            raise ValueError(f"stale push {version} <= {self.version}")
        self.total = float(sum(t.sum() for h in handles for t in ray.get(h).values()))
        self.version = version
        return {"version": version}

    def ready(self):
        return {"version": self.version, "pid": os.getpid()}

    def measure(self):
        return Measured(self.total, self.version)

    def measure_list(self):
        return [Measured(self.total, self.version)] * 2


class Learners:
    """Publishes one bucket holding a tensor of `value`s, as LearnerGroup.publish_weights."""

    def __init__(self):
        self.value = 0.0

    def publish_weights(self):
        self.value += 1.0
        return [ray.put({"w": torch.full((4,), self.value)})], {"bytes": 16.0}


class Rank0:
    """Puts buckets it owns, as learner rank 0 does: they die with it."""

    def put(self, value):
        return [ray.put({"w": torch.full((4,), value)})]

    def ready(self):
        return {"pid": os.getpid()}


class MortalLearners:
    """Learners whose rank 0 is a Ray actor (the buckets' owner) that a test can kill."""

    def __init__(self):
        self.value, self.rank0 = 0.0, ray.remote(Rank0).options(num_cpus=0).remote()

    def publish_weights(self):
        self.value += 1.0
        return ray.get(self.rank0.put.remote(self.value)), {"bytes": 16.0}


def _wait_dead(handle, timeout_s: float = 60.0) -> None:
    """ray.kill is asynchronous: wait until the actor answers with its death."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(handle.ready.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the killed actor still answers")


def _wait_lost(ref, timeout_s: float = 60.0) -> None:
    """Ray frees a dead owner's objects a moment after its death (measured: a 4 MB object
    still readable at once, lost 1 s later): wait until the driver sees `ref` lost."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(ref, timeout=10)
        except ray.exceptions.ObjectLostError:
            return
        time.sleep(0.2)
    raise TimeoutError("the dead owner's object is still readable")


@pytest.fixture(scope="module")
def actors(ray_cluster):
    remote = ray.remote(Receiver).options(num_cpus=0.1, max_restarts=2, max_task_retries=0)
    handles = {name: remote.remote() for name in ("engine-a", "engine-b", "scorer")}
    ray.get([h.ready.remote() for h in handles.values()])
    yield handles
    for h in handles.values():
        ray.kill(h, no_restart=True)


def test_result_versions_reads_objects_and_lists():
    assert result_versions(Measured(1.0, 3)) == [3]
    assert result_versions([Measured(1.0, 3), Measured(2.0, 4)]) == [3, 4]
    with pytest.raises(TypeError, match="carries no weights_version"):
        result_versions({"x": 1})


def test_publish_versions_and_delivers_to_every_receiver(actors):
    sync, learners = WeightSync(ready_timeout_s=60), Learners()
    for name, handle in actors.items():
        sync.register(name, handle)
    report = sync.publish(learners)
    assert sync.version == 1 and report["buckets"] == 1 and report["bytes"] == 16.0
    assert [ray.get(h.measure.remote()) for h in actors.values()] == [Measured(4.0, 1)] * 3
    sync.publish(learners)
    assert sync.version == 2
    assert sync.call("scorer", "measure") == Measured(8.0, 2)
    assert sync.call("scorer", "measure_list") == [Measured(8.0, 2)] * 2
    assert sync.state() == {"version": 2}


def test_a_restarted_receiver_is_replayed_and_its_stale_answer_redone(actors):
    sync, learners = WeightSync(ready_timeout_s=60), Learners()
    for name, handle in actors.items():
        sync.register(name, handle)
    sync.restore(learners, 5)   # receivers may hold older versions from another test
    assert sync.version == 5
    restart_actor(actors["scorer"])   # back with version 0, as a restarted engine
    # Its answer carries version 0: refused as stale, version 5 replayed from the driver's
    # handles, and the call redone.
    assert sync.call("scorer", "measure") == Measured(4.0, 5)
    assert sync.counts == {"replays": 1, "redos": 1, "restarts": 1, "unreachable": 0,
                           "groups": 0}   # the object store forms no group


def test_two_threads_finding_one_restarted_receiver_replay_once(actors):
    import threading

    sync, learners = WeightSync(ready_timeout_s=60), Learners()
    for name, handle in actors.items():
        sync.register(name, handle)
    sync.restore(learners, 7)
    restart_actor(actors["engine-a"])   # back with version 0
    start, infos, errors = threading.Barrier(2), [], []

    def bring() -> None:
        start.wait()
        try:
            infos.append(sync.bring_current("engine-a", StaleResultError("by the test")))
        except Exception as err:   # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=bring) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    # Unserialised, both would see version 0 and replay; the second push of version 7
    # would be refused by the receiver ("stale push 7 <= 7").
    assert errors == [] and sorted(i["version"] for i in infos) == [0, 7]
    assert sync.counts["replays"] == 1
    assert ray.get(actors["engine-a"].measure.remote()) == Measured(4.0, 7)


def test_publish_skips_an_unreachable_receiver_and_replays_later(actors):
    sync, learners = WeightSync(ready_timeout_s=60), Learners()
    for name, handle in actors.items():
        sync.register(name, handle)
    sync.restore(learners, 10)
    ray.kill(actors["engine-b"], no_restart=True)   # dead for good: unreachable
    _wait_dead(actors["engine-b"])
    report = sync.publish(learners)                 # version 11 reaches the other two
    assert sync.version == 11 and report["unreachable"] == 1
    assert ray.get(actors["engine-a"].measure.remote()) == Measured(8.0, 11)
    with pytest.raises(RuntimeError, match="Ray did not restart it"):
        sync.bring_current("engine-b", StaleResultError("checked by the test"))


def test_restore_behind_what_is_out_goes_out_as_a_new_version(actors):
    # (engine-b is dead since the test above; engine-a serves, holding version 11.)
    sync, learners = WeightSync(ready_timeout_s=60), Learners()
    sync.register("engine-a", actors["engine-a"])
    # Learners that started from the model's files, receivers at version 0 (that is what a
    # fresh WeightSync assumes): nothing to send.
    assert sync.restore(learners, 0)["bytes"] == 0.0 and sync.version == 0
    assert learners.value == 0.0   # publish_weights was not called
    sync.restore(learners, 20)     # a resume: the checkpoint's version
    assert sync.version == 20
    assert ray.get(actors["engine-a"].measure.remote()) == Measured(4.0, 20)
    # Learners restored from an older checkpoint (19) while 20 is out, or from the one of
    # the version out (20): the receivers would refuse either number, so each restored
    # state goes out as the next version.
    sync.restore(learners, 19)
    assert ray.get(actors["engine-a"].measure.remote()) == Measured(8.0, 21)
    sync.restore(learners, 21)
    assert ray.get(actors["engine-a"].measure.remote()) == Measured(12.0, 22)


def test_a_replay_of_weights_that_died_with_the_learners_asks_for_new_learners(actors):
    """Learner rank 0 owns the published buckets; once it is dead, a receiver that
    restarted cannot be replayed from them. bring_current says so (LearnersGone, which the
    trainer answers by replacing the learners) instead of failing the run with Ray's
    OwnerDiedError; the new learners' restore then brings every receiver current."""
    sync, dying = WeightSync(ready_timeout_s=60), MortalLearners()
    sync.register("scorer", actors["scorer"])
    sync.restore(dying, 30)
    assert ray.get(actors["scorer"].measure.remote()) == Measured(4.0, 30)
    ray.kill(dying.rank0)
    _wait_dead(dying.rank0)
    _wait_lost(sync._handles[0])
    restart_actor(actors["scorer"])   # back with version 0, as a restarted engine
    with pytest.raises(LearnersGone, match="holds weights version 0 and needs version 30"):
        sync.call("scorer", "measure")
    new = MortalLearners()
    sync.restore(new, 30)   # the checkpoint's version is what is out: a new one goes out
    assert sync.version == 31
    assert sync.call("scorer", "measure") == Measured(4.0, 31)
    ray.kill(new.rank0)
