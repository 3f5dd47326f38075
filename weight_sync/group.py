"""Process groups bound to one address: the weights group and the learners' store.

Two things in this project rendezvous over TCP: the learners' DeepSpeed world (learner/
learner_actor.py) and the collective weight transport (weight_sync/transport.py), where
learner rank 0 and every receiver form a group of their own. Both listen on rank 0's node
address only (127.0.0.1 on one machine), never on every interface:

- the store: torch's TCPStore binds all interfaces when it opens its own socket, so the
  socket is opened here, bound to the node address, and handed over as `master_listen_fd`;
- the data plane: gloo binds to the device's address, given here explicitly
  (`ProcessGroupGloo.create_device(hostname=...)`); torch.distributed's own gloo reads
  GLOO_SOCKET_IFNAME, set from `interface_of`. NCCL picks its interfaces itself
  (NCCL_SOCKET_IFNAME when set).

`WeightGroup` is a group that leaves torch.distributed's global state alone (learner rank
0 is already in the DeepSpeed world): the same code with backend gloo (CPU, what CI runs)
or nccl (GPU). The NCCL branch follows torch's documented ProcessGroupNCCL constructor, as
vLLM's stateless groups do; it has not been run on a GPU yet (the tests run gloo).
"""

from __future__ import annotations

import datetime
import socket
import uuid
from collections.abc import Callable
from typing import Any

import torch

BACKENDS = ("gloo", "nccl")


def listen_on(host: str) -> socket.socket:
    """A TCP socket listening on `host` at a free port (the store's, kept open until
    the store takes it: no race with another process for the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def own_address(rendezvous_host: str, serving: bool = False) -> str:
    """The address this process binds its sockets to for a group that rendezvous at
    `rendezvous_host`: that host itself when this process serves the store or the group is
    on loopback (one machine), else this node's own address."""
    if serving or rendezvous_host.startswith("127."):
        return rendezvous_host
    import ray

    return ray.util.get_node_ip_address()


def interface_of(address: str) -> str | None:
    """The network interface that holds `address` (lo for 127.0.0.1), or None."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == address for a in addrs):
            return name
    return None


def tcp_store(host: str, port: int, world_size: int, rank: int, timeout_s: float,
              listener: socket.socket | None = None) -> Any:
    """Rank 0 serves the store on `listener` (bound to `host`); the others connect."""
    from torch.distributed import TCPStore

    timeout = datetime.timedelta(seconds=timeout_s)
    if rank == 0:
        if listener is None:
            raise ValueError("rank 0 serves the store: pass the socket from listen_on(host)")
        # TCPStore owns the descriptor from here on.
        return TCPStore(host, port, world_size, True, timeout, wait_for_workers=False,
                        master_listen_fd=listener.detach())
    return TCPStore(host, port, world_size, False, timeout)


def join_world(master_addr: str, master_port: int, rank: int, world_size: int,
               backend: str, timeout_s: float, listener: socket.socket | None) -> None:
    """torch.distributed's default world (the learners') over a store that rank 0 serves
    on `listener` (bound to `master_addr`), with gloo's sockets on this node's address
    (GLOO_SOCKET_IFNAME, unless the user set it)."""
    import os

    interface = interface_of(own_address(master_addr))
    if interface and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = interface
    store = tcp_store(master_addr, master_port, world_size, rank, timeout_s, listener)
    torch.distributed.init_process_group(backend, store=store, rank=rank,
                                         world_size=world_size)


class WeightGroup:
    """Ranks 0..N-1 of one group (rank 0 the sender) over `backend`, outside torch's
    global process-group state; `broadcast` sends rank 0's tensor to every rank."""

    def __init__(self, store: Any, rank: int, world_size: int, backend: str,
                 own_address: str, timeout_s: float, prefix: str):
        from torch.distributed import PrefixStore

        if backend not in BACKENDS:
            raise ValueError(f"unknown collective backend {backend!r}; choose one of "
                             f"{list(BACKENDS)}")
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.device = torch.device("cuda" if backend == "nccl" else "cpu")
        # A prefix per group: one store could serve several groups without key clashes.
        store = PrefixStore(prefix, store)
        self._store_ref = store   # the store must outlive the backend
        timeout = datetime.timedelta(seconds=timeout_s)
        if backend == "gloo":
            from torch.distributed.distributed_c10d import ProcessGroupGloo

            options = ProcessGroupGloo._Options()
            options._timeout = timeout
            options._devices = [ProcessGroupGloo.create_device(hostname=own_address)]
            self._pg = ProcessGroupGloo(store, rank, world_size, options)
        else:
            from torch.distributed.distributed_c10d import ProcessGroupNCCL

            options = ProcessGroupNCCL.Options()
            options._timeout = timeout
            self._pg = ProcessGroupNCCL(store, rank, world_size, options)

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """In place: rank 0's `tensor` lands in every rank's (same shape and dtype)."""
        from torch.distributed import BroadcastOptions

        options = BroadcastOptions()
        options.rootRank = 0
        self._pg.broadcast([tensor], options).wait()
        return tensor

    def close(self) -> None:
        """Drop the backend (its sockets close with it)."""
        self._pg = None
        self._store_ref = None


class KeptGroup:
    """The driver's record of the collective group learner rank 0 holds: the push each
    receiver joins (rendezvous, world size, backend, timeout, id). `push` names the held
    group again when the caller (WeightSync) says the members are those of its last clean
    push, else opens a new one: `open_socket()` has rank 0 open its store socket and
    returns (host, port). Ids are unique across learner restarts too, since a receiver
    reuses a group by its id."""

    def __init__(self, open_socket: Callable[[], tuple[str, int]], backend: str,
                 timeout_s: float) -> None:
        self.open_socket, self.backend, self.timeout_s = open_socket, backend, timeout_s
        self.held: dict[str, Any] | None = None
        self.opened = 0   # groups opened so far

    def push(self, num_receivers: int, reuse: bool) -> dict[str, Any]:
        """The push of a group of rank 0 and `num_receivers` receivers (a copy)."""
        world = num_receivers + 1
        if not (reuse and self.held is not None and self.held["world_size"] == world):
            host, port = self.open_socket()
            self.opened += 1
            self.held = {"host": host, "port": port, "world_size": world,
                         "backend": self.backend, "timeout_s": self.timeout_s,
                         "id": f"{port}-{uuid.uuid4().hex[:12]}"}
        return dict(self.held)
