"""Shared fixtures: the embedded tiny model (built once per machine and reused), its engine
settings, and the one Ray fixture: a fresh local cluster per test module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Tests share one cache folder (git-ignored); the builder keys it by its settings, so a
# changed builder rebuilds instead of reusing stale bytes.
TEST_CACHE = REPO / ".cache" / "refine-iqa"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny Qwen2.5-VL model directory (synth.tiny_model), built on first use."""
    from synth.tiny_model import build_tiny_model

    return build_tiny_model(TEST_CACHE)


@pytest.fixture(scope="session")
def tiny_engine_settings(tiny_model_dir):
    """EngineSettings of a CPU engine on the tiny model: float32 (so logprobs compare with
    transformers to 1e-4), in-process, 1 GiB KV cache, the tiny processor's pixel limits."""
    from actors.engine_settings import EngineSettings

    return EngineSettings(model_path=str(tiny_model_dir), dtype="float32",
                          max_model_len=1024, kv_cache_gib=1, enforce_eager=True,
                          multiprocessing=False, min_pixels=56 * 56, max_pixels=224 * 224)


@pytest.fixture(scope="module")
def ray_cluster():
    """A new local Ray cluster for the module (never one that happens to run on the
    machine: address="local"), 4 logical CPUs so that two engines, a scoring actor and a
    learner fit on 2 cores; shut down when the module is done."""
    ray = pytest.importorskip("ray")
    env = {k: os.environ.pop(k) for k in ("RAY_ADDRESS",) if k in os.environ}
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    os.environ.update(env)
