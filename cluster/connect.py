"""Connect to Ray: join the job's cluster, or start a local one bound to 127.0.0.1.

`ray job submit ... -- python launch.py` runs the driver inside the cluster, where
`RAY_ADDRESS` is set and `ray.init()` joins it; `ray.address=auto` joins a cluster
started with `ray start` on this machine. Otherwise the driver starts a local cluster
bound to 127.0.0.1 with its dashboard on 127.0.0.1:8265 (`ray.num_cpus` sizes it). Ray's token
authentication stays as Ray configures it (on by default). A local cluster's processes are
recorded, and those of a driver that was killed are ended before the next local cluster
starts (cluster.local_processes).
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from cluster import local_processes


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


def starts_local_cluster(cfg: Any) -> bool:
    """Whether `connect` would start a new local cluster (no address to join, none
    joined yet): its size, ray.num_cpus, is then known before it starts."""
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    joined = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    return not address and not joined


def connect(cfg: Any, log_to_driver: bool = True) -> dict:
    """Join the cluster this job runs in, or start a local one; returns its resources.

    log_to_driver=False keeps the actors' logs out of this process's stdout (for a
    command whose stdout is machine-read, such as `evals.score --json`)."""
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    local = starts_local_cluster(cfg)
    if local:
        _pin_local_cluster_to_loopback()
        ended = local_processes.clean_stale()
        if ended:
            print(f"# ended {len(ended)} processes left by the local cluster of a killed "
                  f"run: {', '.join(ended)}", file=sys.stderr)
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=log_to_driver)
        else:
            # A new local cluster, never a guess: Ray's own default would join whatever
            # /tmp/ray/ray_current_cluster names, and hangs when that cluster is gone.
            ray.init(address="local", num_cpus=cfg.ray.num_cpus,
                     include_dashboard=cfg.ray.dashboard, dashboard_host="127.0.0.1",
                     _node_ip_address="127.0.0.1", log_to_driver=log_to_driver)
    if local:
        # Killed with -9, this driver leaves its cluster's agents running for a minute:
        # the next local start ends them from this record (cluster.local_processes).
        local_processes.record()
        atexit.register(local_processes.forget)
    return dict(ray.cluster_resources())


def node_resources() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
