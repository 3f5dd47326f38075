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
# The tests' local clusters stay on loopback: Ray reads this once, at its first import
# (tests/test_driver_loopback.py checks cluster.connect without it, in fresh interpreters).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session", autouse=True)
def embedded_model_built() -> Path:
    """What `model.path=tiny` names (the tiny model after its warm-up), built once per
    cache before any test runs: the warm-up takes minutes on 2 cores, which would
    otherwise fall inside the first launched run's time limits."""
    from learner.cold_start import embedded_model

    return embedded_model(TEST_CACHE)


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
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()
    os.environ.update(env)


def restart_actor(handle, timeout_s: float = 300.0) -> int:
    """Kill a Ray actor that has restarts left and wait until Ray has brought it back (its
    ready() answers from a new process): a test of what follows a restart must not race
    the kill. Returns the new pid."""
    import time

    import ray

    old = ray.get(handle.ready.remote())["pid"]
    ray.kill(handle, no_restart=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid = ray.get(handle.ready.remote(), timeout=60)["pid"]
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError,
                ray.exceptions.GetTimeoutError):
            time.sleep(0.5)
            continue
        if pid != old:
            return pid
        time.sleep(0.2)
    raise TimeoutError(f"the actor did not come back within {timeout_s:.0f} s")
