"""A collective push taken inside vLLM's worker process, over one group kept for the run.

A real vLLM engine (CPU build, multiprocess mode: the worker runs in the engine core, a
child process of the Ray actor) and a rank-0 sender actor form a real gloo group on
127.0.0.1. The worker joins it itself (actors/worker_extension.py `receive_weights`), so
the buckets go from the group into the model without passing through the actor. What
the engine computes afterwards is compared with transformers running the same weights
(float32, 1e-4), as in tests/test_weight_sync_receiver.py, whose helpers this module uses.
"""

from __future__ import annotations

import sys

import pytest
import torch

from tests import test_weight_sync_receiver as receiver_tests
from tests.test_weight_sync_receiver import (
    assert_close,
    buckets_of,
    engine_logprobs,
    hf_completion_logprobs,
    load_hf,
    perturbed,
)
from weight_sync.group import KeptGroup
from weight_sync.receiver import StaleWeightsError, WeightUpdateError
from weight_sync.transport import CollectiveTransport

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


# The same fixtures as there: the tiny model, its prompt builder, a photo and a completion.
model_dir, builder, case = receiver_tests.model_dir, receiver_tests.builder, receiver_tests.case


class Sender:
    """Rank 0 of the weights group, keeping its end between pushes as a learner does."""

    def __init__(self):
        self.transport = CollectiveTransport()
        self.listener = None

    def open(self) -> int:
        from weight_sync.group import listen_on

        self.listener = listen_on("127.0.0.1")
        return int(self.listener.getsockname()[1])

    def send(self, push: dict, buckets: list[dict]) -> int:
        listener, self.listener = self.listener, None
        self.transport.send(iter(buckets), push, listener)
        return self.transport.joins


@pytest.fixture(scope="module")
def engine(ray_cluster, tiny_engine_settings):
    from dataclasses import replace

    from actors.engine_host import wait_ready
    from actors.rollout_engine import start_rollout_engine

    settings = replace(tiny_engine_settings, multiprocessing=True,
                       weights_transport="collective")
    handle = start_rollout_engine(settings, 0, num_cpus=1)
    wait_ready([handle], 600)
    yield handle
    ray.kill(handle, no_restart=True)


@pytest.fixture(scope="module")
def sender(ray_cluster):
    handle = ray.remote(Sender).options(num_cpus=0.1).remote()
    yield handle
    ray.kill(handle, no_restart=True)


@pytest.fixture(scope="module")
def kept(sender):
    """The group the sender holds, kept as LearnerGroup keeps it."""
    return KeptGroup(lambda: ("127.0.0.1", ray.get(sender.open.remote())), "gloo", 60.0)


def push_over_group(sender, engine, kept, version: int, state: dict,
                    reuse: bool) -> tuple[dict, int]:
    """Send `state` in 256 kB buckets through the group held (`reuse`) or a new one:
    (the engine's report, the sender's groups joined so far)."""
    push = kept.push(1, reuse)
    sent = sender.send.remote(push, buckets_of(state, 256 * 1024))
    got = engine.update_weights.remote(version, {**push, "rank": 1})
    try:
        return ray.get(got, timeout=300), ray.get(sent, timeout=300)
    finally:
        ray.get(sent, timeout=300)   # the sender must never be left waiting


def test_the_worker_takes_pushes_over_one_group(engine, sender, kept, builder, case,
                                                model_dir):
    actor_pid = ray.get(engine.ready.remote())["pid"]
    assert ray.get(engine.weights_group.remote())["joins"] == 0

    first = perturbed(load_hf(model_dir), seed=11)
    report, sender_joins = push_over_group(sender, engine, kept, 1, first.state_dict(), False)
    assert report["version"] == 1 and report["buckets"] > 1
    assert_close(engine_logprobs(engine, case), hf_completion_logprobs(first, builder, *case))
    where = ray.get(engine.weights_group.remote())
    assert where["pid"] != actor_pid, "the group was joined by the actor, not vLLM's worker"
    assert where["joins"] == 1 and sender_joins == 1

    # The next push names the same group: nobody joins again.
    second = perturbed(load_hf(model_dir), seed=12)
    report, sender_joins = push_over_group(sender, engine, kept, 2, second.state_dict(),
                                           True)
    assert report["version"] == 2
    assert_close(engine_logprobs(engine, case), hf_completion_logprobs(second, builder, *case))
    assert ray.get(engine.weights_group.remote())["joins"] == 1 and sender_joins == 1


def test_a_refused_push_is_drained_in_the_worker_and_the_group_goes_on(engine, sender, kept,
                                                                      builder, case,
                                                                      model_dir):
    # Runs after the test above: the engine holds version 2 and the group kept.
    state = perturbed(load_hf(model_dir), seed=13).state_dict()

    # A stale version: refused before loading, the worker still takes the push whole.
    with pytest.raises(ray.exceptions.RayTaskError) as err:
        push_over_group(sender, engine, kept, 2, state, True)
    assert isinstance(err.value.as_instanceof_cause(), StaleWeightsError)

    # NaN in the last tensor: the earlier buckets are loaded by then, so the engine goes
    # back to the model's files (version 0: a collective push cannot be fetched again).
    poisoned = dict(state)
    last = list(poisoned)[-1]
    poisoned[last] = torch.full_like(poisoned[last], float("nan"))
    with pytest.raises(ray.exceptions.RayTaskError, match="NaN") as err:
        push_over_group(sender, engine, kept, 3, poisoned, True)
    assert isinstance(err.value.as_instanceof_cause(), WeightUpdateError)
    assert ray.get(engine.weights_version.remote()) == 0
    base = load_hf(model_dir)
    assert_close(engine_logprobs(engine, case), hf_completion_logprobs(base, builder, *case))

    # Both pushes ended on the wire as they should: the same group carries the next one.
    report, sender_joins = push_over_group(sender, engine, kept, 4, state, True)
    assert report["version"] == 4 and sender_joins == 1
    assert ray.get(engine.weights_group.remote())["joins"] == 1
    model = perturbed(load_hf(model_dir), seed=13)
    assert_close(engine_logprobs(engine, case), hf_completion_logprobs(model, builder, *case))

    # A new group (the members changed, as after a restart): the worker leaves the old
    # one and joins it.
    report, sender_joins = push_over_group(sender, engine, kept, 5, state, False)
    assert report["version"] == 5 and sender_joins == 2
    assert ray.get(engine.weights_group.remote())["joins"] == 2
