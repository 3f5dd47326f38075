"""cluster.resources and cluster.placement: the bundles each role asks for, the node-by-node fit check, and the
one-line refusal before any actor starts.

Bundle sizes are worked out by hand from conf/tiny.yaml (learner 0.5 CPU, engine 0.5 CPU,
scorer 0.25 CPU) next to each assertion; the tests place real actors in placement groups
on two nodes in tests/test_multinode.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cluster.resources import (
    LABEL_AMOUNT,
    PlacementError,
    ResourceError,
    check_fits,
    check_resources,
    layout,
)
from conf import load_config
from tests.conftest import REPO


def test_roles_add_up_each_nodes_ranks_and_put_the_scorer_on_the_first_rollout_node():
    cfg = load_config("tiny", ["learner.num_learners=4", "placement.learner_nodes=2",
                               "rollout.num_engines=2", "placement.rollout_nodes=2",
                               "placement.learner_resource=trainer"])
    learners, rollout = layout(cfg, scorer=True)
    # 4 ranks over 2 nodes: 2 x 0.5 CPU per node, ranks 0-1 on the first, 2-3 on the second.
    assert learners.bundles == [{"CPU": 1.0, "trainer": LABEL_AMOUNT}] * 2
    assert learners.slots == [0, 0, 1, 1]
    # 2 engines over 2 nodes: 0.5 CPU each; the scorer's 0.25 joins the first.
    assert rollout.bundles == [{"CPU": 0.75}, {"CPU": 0.5}]
    assert rollout.slots == [0, 1]
    # Stage-1 (no scorer) and an evaluation (engines and scorer, no learners).
    assert [r.name for r in layout(cfg, scorer=False)] == ["learners", "rollout"]
    assert [r.name for r in layout(cfg, learners=False, scorer=True)] == ["rollout"]


def test_uneven_split_is_refused():
    cfg = load_config("tiny", ["learner.num_learners=3", "placement.learner_nodes=2"])
    with pytest.raises(PlacementError, match="learner.num_learners=3 does not split evenly "
                                             "over placement.learner_nodes=2"):
        layout(cfg)


def test_fit_is_checked_node_by_node():
    cfg = load_config("tiny", ["learner.num_learners=2", "placement.learner_nodes=2",
                               "placement.learner_resource=trainer"])
    roles = layout(cfg, scorer=True)
    two = [{"CPU": 1.0, "trainer": 1.0}, {"CPU": 2.0, "trainer": 1.0}]
    check_fits(roles, two)   # learners 0.5 + 0.5 on distinct nodes, rollout 0.75 beside
    # The same 3 CPUs in total, but only one node carries the label: the learners' two
    # bundles cannot be on distinct labelled nodes.
    with pytest.raises(PlacementError) as err:
        check_fits(roles, [{"CPU": 1.0, "trainer": 1.0}, {"CPU": 2.0}])
    message = str(err.value)
    assert "learners: 2 node(s) with 0.5 CPU, 0.001 trainer" in message
    assert "placement.learner_nodes" in message and "rollout.num_engines" not in message
    assert "\n" not in message
    # Totals fit (1.25 CPU <= 1.5) but no node has the learner's 0.5 beside the 0.75.
    small = load_config("tiny")
    with pytest.raises(ResourceError, match="does not fit"):
        check_resources(small, {"CPU": 1.5}, nodes=[{"CPU": 0.75}, {"CPU": 0.4}, {"CPU": 0.35}])
    check_resources(small, {"CPU": 1.5}, nodes=[{"CPU": 0.75}, {"CPU": 0.75}])


@pytest.mark.slow
def test_launch_refuses_a_layout_the_cluster_cannot_hold(tmp_path):
    # A local cluster is one node; learners asked to spread over two cannot be placed.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "launch.py", "conf=tiny", "learner.num_learners=2",
         "placement.learner_nodes=2", f"run.output_dir={tmp_path}", "ray.num_cpus=4",
         "ray.dashboard=false"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not fit" in errors[0], proc.stderr[-2000:]
    assert "placement.learner_nodes" in errors[0]
    assert "Traceback" not in proc.stderr
    assert "Learner pid" not in proc.stderr and "RolloutEngine pid" not in proc.stderr
