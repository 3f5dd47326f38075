"""cluster.resources: what the actor groups ask Ray for, and a clear error when it is missing.

Numbers come from conf/tiny.yaml and conf/stage2.yaml (the values they set are written
next to each assertion).
"""

from __future__ import annotations

import pytest

from cluster.resources import ResourceError, check_resources, requested
from conf import load_config


def test_requested_counts_each_group_of_the_config():
    cfg = load_config("tiny")
    # tiny: 1 engine x 0.5 CPU + 1 learner x 0.5 CPU + the scoring actor's 0.25 CPU.
    assert requested(cfg) == {"CPU": 1.25, "GPU": 0.0}
    # An evaluation starts engines and the scorer only; Stage-1 training has no scorer.
    assert requested(cfg, learners=False, scorer=True) == {"CPU": 0.75, "GPU": 0.0}
    assert requested(load_config("tiny_stage1")) == {"CPU": 1.0, "GPU": 0.0}
    # stage2: 3 engines x 1 GPU + 4 learners x 1 GPU + the scorer's 1 GPU.
    assert requested(load_config("stage2"))["GPU"] == 8.0


def test_check_names_the_keys_to_change():
    check_resources(load_config("tiny"), {"CPU": 2.0})
    # 8 engines x 0.5 + 0.5 + 0.25 = 4.75 CPUs.
    with pytest.raises(ResourceError, match=r"ask for 4.75 CPU .*rollout.num_engines"):
        check_resources(load_config("tiny", ["rollout.num_engines=8"]), {"CPU": 2.0})
    with pytest.raises(ResourceError, match="8 GPU.*scoring.num_gpus.*has 0"):
        check_resources(load_config("stage2"), {"CPU": 64.0})
    # Engines alone (an evaluation without the scorer) name only the engine keys.
    with pytest.raises(ResourceError) as err:
        check_resources(load_config("stage2"), {"CPU": 64.0}, scorer=False, learners=False)
    assert "learner.num_learners" not in str(err.value)
    assert "scoring" not in str(err.value)
