"""A local cluster started by cluster.connect.connect registers 127.0.0.1 and listens there
only, without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER preset in the environment (Ray reads it
once, at `import ray`): both when nothing imported ray before connect, and when a caller
did (the late case the variable alone cannot fix).

Each case runs in a fresh interpreter, so that no earlier `import ray` of the test
process hides the bug; every listening socket of the cluster's processes is read with
psutil, independently of Ray's own view.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
if sys.argv[1] == "early":
    import ray  # noqa: F401  (a caller that imported ray before connect)
import psutil
from conf import load_config
from cluster.connect import connect

cfg = load_config("tiny", ["ray.num_cpus=1", "ray.dashboard=false"])
connect(cfg, log_to_driver=False)
import ray

listeners = set()
for proc in psutil.Process().children(recursive=True):
    try:
        conns = proc.net_connections(kind="inet")
    except psutil.Error:
        continue
    listeners.update(c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN)
print(json.dumps({"nodes": [n["NodeManagerAddress"] for n in ray.nodes()],
                  "listeners": sorted(listeners)}))
ray.shutdown()
"""


@pytest.mark.parametrize("order", ["late", "early"])
def test_local_cluster_stays_on_loopback_without_the_variable_preset(order):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, order], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["nodes"] == ["127.0.0.1"]
    assert seen["listeners"], "no listening socket found: the check would pass vacuously"
    # An IPv6 socket bound to ::ffff:127.0.0.1 (IPv4-mapped) is loopback too; :: or the
    # machine's external address is what the bug looked like.
    assert all(_loopback(ip) for ip in seen["listeners"]), seen["listeners"]


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback
