"""The driver's side of Ray: connect (or start a local cluster) and check resources.

`ray job submit ... -- python launch.py` runs the driver inside the cluster, where
`RAY_ADDRESS` is set and `ray.init()` joins it; `ray.address=auto` joins a cluster
started with `ray start` on this machine. Otherwise the driver starts a local cluster
bound to 127.0.0.1 with its dashboard on 127.0.0.1:8265 (`ray.num_cpus` sizes it). Ray's token
authentication stays as Ray configures it (on by default).

Ray schedules actors by logical resources and never fails a request it cannot meet: it
waits. `check_resources` compares what the configured actor groups ask for with what the
cluster has and fails at once with the numbers, instead of a job that hangs.
"""

from __future__ import annotations

import os
import sys
from typing import Any


class ResourceError(RuntimeError):
    """The configured actors do not fit the cluster."""


def _pin_local_cluster_to_loopback() -> None:
    """Make the next local cluster register 127.0.0.1 and listen there only.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when `ray` is first imported; set
    after that import it reaches the cluster's processes but not this driver, which then
    registers the machine's external address and its listeners bind every interface
    (measured with ray 2.60). Only for a cluster this process starts: set while joining
    a multi-node cluster, it would make the driver look for its raylet on 127.0.0.1.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" in sys.modules:
        # Imported too early (a caller's own `import ray`): the constant Ray's address
        # lookup consults at call time is brought in line with the variable.
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def connect(cfg: Any, log_to_driver: bool = True) -> dict:
    """Join the cluster this job runs in, or start a local one; returns its resources.

    log_to_driver=False keeps the actors' logs out of this process's stdout (for a
    command whose stdout is machine-read, such as `evals.score --json`)."""
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    joined = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    if not address and not joined:
        _pin_local_cluster_to_loopback()
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=log_to_driver)
        else:
            # A new local cluster, never a guess: Ray's own default would join whatever
            # /tmp/ray/ray_current_cluster names, and hangs when that cluster is gone.
            ray.init(address="local", num_cpus=cfg.ray.num_cpus,
                     include_dashboard=bool(cfg.ray.dashboard), dashboard_host="127.0.0.1",
                     _node_ip_address="127.0.0.1", log_to_driver=log_to_driver)
    return dict(ray.cluster_resources())


def _with_scorer(cfg: Any, scorer: bool | None) -> bool:
    # Training starts the scoring actor in Stage-2 only (Stage-1 has no PD reward).
    return int(cfg.stage) == 2 if scorer is None else bool(scorer)


def requested(cfg: Any, engines: bool = True, scorer: bool | None = None,
              learners: bool = True) -> dict[str, float]:
    """CPU and GPU that the named actor groups ask Ray for (scorer None: as training)."""
    r, s, learner = cfg.rollout, cfg.scoring, cfg.learner
    cpu = gpu = 0.0
    if engines:
        cpu += r.num_engines * r.num_cpus_per_engine
        gpu += r.num_engines * r.num_gpus_per_engine
    if learners:
        cpu += learner.num_learners * learner.num_cpus
        gpu += learner.num_learners * learner.num_gpus
    if _with_scorer(cfg, scorer):
        cpu, gpu = cpu + s.num_cpus, gpu + s.num_gpus
    return {"CPU": float(cpu), "GPU": float(gpu)}


def check_resources(cfg: Any, available: dict, engines: bool = True,
                    scorer: bool | None = None, learners: bool = True,
                    nodes: list[dict[str, float]] | None = None) -> None:
    """Raise ResourceError, naming the conf keys to change, when the named actor groups
    cannot all be placed (Ray would wait for them forever): first against the cluster's
    totals `available`, then, given `nodes` (each alive node's resources), the conf
    `placement` layout node by node (driver/placement.py)."""
    need = requested(cfg, engines, scorer, learners)
    for kind, amount in need.items():
        have = float(available.get(kind, 0.0))
        if amount <= have + 1e-9:
            continue
        k = kind.lower()
        parts = [f"rollout.num_engines x rollout.num_{k}s_per_engine"] if engines else []
        parts += [f"learner.num_learners x learner.num_{k}s"] if learners else []
        parts += [f"scoring.num_{k}s"] if _with_scorer(cfg, scorer) else []
        hint = (" (on a CPU-only machine use conf tiny, or set those num_gpus keys to 0)"
                if kind == "GPU" else "")
        raise ResourceError(
            f"the actors ask for {amount:g} {kind} ({' + '.join(parts)}) but the Ray cluster "
            f"has {have:g}: lower those values, or start the cluster with more (ray start "
            f"--num-{k}s N, or ray.num_cpus=N for a local one){hint}")
    if nodes is not None:
        from driver.placement import check_fits, roles

        check_fits(roles(cfg, engines, _with_scorer(cfg, scorer), learners), nodes)
