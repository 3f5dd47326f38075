"""Two Ray nodes on this machine: the tiny loop runs to the end across them, with both
weight transports.

Ray's own multi-node harness (`ray.cluster_utils.Cluster`) starts a head and a worker
node, each with its own raylet, object store and node id, both on 127.0.0.1 (nothing
binds the machine's external address). Custom resources mark them: the rollout engine and
the scoring actor are placed on the head (`placement.rollout_resource`), the two learner
ranks on the worker (`placement.learner_resource`), so every weight push crosses from one
node's object store or process-group member to the other's. The harness runs in a helper
interpreter of its own, because Ray must see RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 at its
first import (this test process may have imported ray long before). After each run the
helper reads Ray's actor table, independently of the run's own code, to check where each
actor ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from driver import metrics as M
from tests.conftest import REPO, TEST_CACHE

pytestmark = pytest.mark.slow
STEPS = 2

HELPER = r"""
import json, sys
import ray
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 2, "node_ip_address": "127.0.0.1", "resources": {"rollout_node": 1},
    "include_dashboard": False})
cluster.add_node(num_cpus=2, resources={"learner_node": 1}, node_ip_address="127.0.0.1")
cluster.wait_for_nodes()
print(json.dumps({"address": cluster.address}), flush=True)
for line in sys.stdin:          # "actors": where each named actor ran, then "" to stop
    if line.strip() != "actors":
        break
    if not ray.is_initialized():
        ray.init(address=cluster.address, log_to_driver=False)
    nodes = {n["NodeID"]: sorted(k for k in n["Resources"] if k.endswith("_node"))
             for n in ray.nodes()}
    placed = {}
    for actor in ray._private.state.state.actor_table(None).values():
        name, node = actor.get("Name"), actor.get("Address", {}).get("NodeID")
        if name:
            placed.setdefault(name, set()).update(nodes.get(node, ["?"]))
    print(json.dumps({"nodes": list(nodes.values()),
                      "placed": {k: sorted(v) for k, v in placed.items()}}), flush=True)
if ray.is_initialized():
    ray.shutdown()
cluster.shutdown()
"""


@pytest.fixture(scope="module")
def two_nodes():
    """(address, helper process) of a head + worker cluster on 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # loopback, read at `import ray`
    helper = subprocess.Popen([sys.executable, "-c", HELPER], cwd=REPO, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        line = helper.stdout.readline()
        if not line:
            pytest.fail(f"the two-node cluster did not start (rc {helper.wait(120)})")
        yield json.loads(line)["address"], helper
    finally:
        if helper.poll() is None:
            helper.stdin.close()
            try:
                helper.wait(timeout=120)
            except subprocess.TimeoutExpired:
                helper.kill()


def _placed(helper: subprocess.Popen) -> dict:
    helper.stdin.write("actors\n")
    helper.stdin.flush()
    return json.loads(helper.stdout.readline())


@pytest.mark.parametrize("transport", ["object_store", "collective"])
def test_tiny_loop_across_two_nodes(two_nodes, transport, tmp_path):
    address, helper = two_nodes
    env = {**os.environ, "RAY_ADDRESS": address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    args = ["conf=tiny", f"train.max_steps={STEPS}", "eval.every=0", "eval.max_samples=2",
            "checkpoint.every=0", "learner.num_learners=2", "learner.num_cpus=0.5",
            "placement.learner_resource=learner_node",
            "placement.rollout_resource=rollout_node", f"weights.transport={transport}",
            f"run.output_dir={tmp_path}", "run.name=run", f"model.cache_dir={TEST_CACHE}",
            "ray.dashboard=false"]
    out = subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]

    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x["step"] > 0]
    assert [x["step"] for x in steps] == list(range(1, STEPS + 1))
    for line in steps:   # every step metric, weights timing included, on every step
        assert not set(M.required_keys(2)) - set(line), sorted(set(M.required_keys(2)) - set(line))
        assert line[M.TIMING_WEIGHTS] > 0
        assert line[M.UNREACHABLE] == 0

    seen = _placed(helper)
    assert sorted(seen["nodes"]) == [["learner_node"], ["rollout_node"]]
    where = seen["placed"]
    for name in ("learner-0", "learner-1"):
        assert where[name] == ["learner_node"], where
    for name in ("rollout-engine-0", "scoring-actor"):
        assert where[name] == ["rollout_node"], where
