"""How buckets of weights travel from learner rank 0 to the receivers, both ends.

Both transports stream: rank 0 holds one gathered bucket at a time, and a receiver takes
one bucket, loads it and only then takes the next (weight_sync.receiver), so neither end
ever holds the whole model a second time. A *push* is what WeightSync (weight_sync.sync)
hands every receiver's `update_weights(version, push)`:

- `object_store`: a list of Ray ObjectRefs, one per bucket, `ray.put` by rank 0 before the
  delivery (`publish`). It works on every machine, and the refs can be streamed again:
  WeightSync replays them to a restarted receiver, and a receiver rolls back to them.
- `collective`: the rendezvous of a process group of its own (`WeightGroup`, backend gloo
  on CPU, nccl on GPU, same code) that learner rank 0 (rank 0 of the group) and every
  receiver join for one push; rank 0 broadcasts each bucket as it is gathered (`send`)
  while the receivers take them in (`stream`). Nothing is kept: a replay is a new push of
  the learners' weights, which are the current version's until the next step.

The collective wire format, per bucket: a 2-int64 frame (header bytes, payload bytes; 0, 0
ends the push), the header (JSON: name, dtype, shape, offset of each tensor) and the
payload (the tensors' bytes, back to back).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the conf loader imports TRANSPORTS; keep that free of torch
    import socket

    import torch

COLLECTIVE_BACKENDS = ("auto", "gloo", "nccl")


class Transport(Protocol):
    """The receiving half of one way of moving buckets (the sending halves differ)."""

    name: str
    live: bool        # True: sender and receivers run together (WeightSync starts both)

    def stream(self, push: Any) -> Iterator[Mapping[str, torch.Tensor]]: ...


class ObjectStoreTransport:
    """Buckets as Ray ObjectRefs: `ray.put` on rank 0, `ray.get` one at a time in the
    receiver (the bucket before is dropped by then)."""

    name = "object_store"
    live = False

    def publish(self, buckets: Iterable[dict[str, torch.Tensor]]) -> list[Any]:
        """One ObjectRef per bucket (rank 0)."""
        import ray

        return [ray.put(bucket) for bucket in buckets]

    def stream(self, push: list[Any]) -> Iterator[Mapping[str, torch.Tensor]]:
        """The push's buckets, fetched one by one."""
        import ray

        for ref in push:
            yield ray.get(ref)


def _frame(group: Any, header_len: int = 0, payload_len: int = 0) -> tuple[int, int]:
    import torch

    frame = torch.tensor([header_len, payload_len], dtype=torch.int64, device=group.device)
    group.broadcast(frame)
    return int(frame[0]), int(frame[1])


def _bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    import torch

    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


class CollectiveTransport:
    """Buckets broadcast through a process group of rank 0 and the receivers."""

    name = "collective"
    live = True

    @staticmethod
    def _join(push: Mapping[str, Any], listener: socket.socket | None = None) -> Any:
        from weight_sync.group import WeightGroup, tcp_store

        rank, host = int(push["rank"]), str(push["host"])
        store = tcp_store(host, int(push["port"]), int(push["world_size"]), rank,
                          float(push["timeout_s"]), listener)
        # On one machine everyone binds loopback; across nodes each end its own address.
        own = host if rank == 0 or host.startswith("127.") else _node_address()
        return WeightGroup(store, rank, int(push["world_size"]), str(push["backend"]), own,
                           float(push["timeout_s"]), prefix=f"weights/{push['id']}/")

    def send(self, buckets: Iterable[dict[str, torch.Tensor]], push: Mapping[str, Any],
             listener: socket.socket) -> None:
        """Rank 0: broadcast every bucket, then the end frame; `listener` is the socket
        the store serves on (bound to push["host"], weight_sync.group.listen_on)."""
        import torch

        group = self._join({**push, "rank": 0}, listener)
        try:
            for bucket in buckets:
                header, offset, parts = [], 0, []
                for name, tensor in bucket.items():
                    raw = _bytes_of(tensor)
                    header.append([name, str(tensor.dtype).removeprefix("torch."),
                                   list(tensor.shape), offset])
                    parts.append(raw)
                    offset += raw.numel()
                meta = torch.frombuffer(bytearray(json.dumps(header).encode()),
                                        dtype=torch.uint8)
                _frame(group, meta.numel(), offset)
                group.broadcast(meta.to(group.device))
                payload = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)
                del parts
                group.broadcast(payload.to(group.device))
                del payload
            _frame(group)
        finally:
            group.close()

    def stream(self, push: Mapping[str, Any]) -> Iterator[Mapping[str, torch.Tensor]]:
        """Receiver: the buckets in order. Closed early (a refused bucket), it still takes
        the rest of the push, so that rank 0 and the other receivers are not left waiting."""
        import torch

        group = self._join(push)
        finished = False
        try:
            while True:
                header_len, payload_len = _frame(group)
                if header_len == 0:
                    finished = True
                    return
                meta = group.broadcast(torch.empty(header_len, dtype=torch.uint8,
                                                   device=group.device))
                payload = group.broadcast(torch.empty(payload_len, dtype=torch.uint8,
                                                      device=group.device))
                bucket = {}
                for name, dtype, shape, offset in json.loads(bytes(meta.cpu().tolist())):
                    kind = getattr(torch, dtype)
                    size = kind.itemsize * _numel(shape)
                    bucket[name] = payload[offset:offset + size].view(kind).reshape(shape)
                del payload
                yield bucket
                del bucket
        finally:
            try:
                while not finished:   # drain what rank 0 still sends
                    header_len, payload_len = _frame(group)
                    if header_len == 0:
                        break
                    group.broadcast(torch.empty(header_len, dtype=torch.uint8,
                                                device=group.device))
                    group.broadcast(torch.empty(payload_len, dtype=torch.uint8,
                                                device=group.device))
            finally:
                group.close()


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count


def _node_address() -> str:
    import ray

    return ray.util.get_node_ip_address()


def collective_backend(conf: Mapping[str, Any]) -> str:
    """gloo or nccl for conf `weights.backend`; auto: nccl when every member of the group
    (learners, engines, and the scorer in Stage-2) has a GPU, else gloo."""
    choice = str(conf["weights"]["backend"])
    if choice != "auto":
        return choice
    gpus = [float(conf["learner"]["num_gpus"]), float(conf["rollout"]["num_gpus_per_engine"])]
    if int(conf["stage"]) == 2:
        gpus.append(float(conf["scoring"]["num_gpus"]))
    return "nccl" if all(g > 0 for g in gpus) else "gloo"


# conf `weights.transport` takes its choices from here (conf/loader.py).
TRANSPORTS: dict[str, type] = {"object_store": ObjectStoreTransport,
                               "collective": CollectiveTransport}


def make_transport(name: str) -> Any:
    """The transport named by conf `weights.transport`."""
    try:
        return TRANSPORTS[name]()
    except KeyError:
        raise ValueError(f"unknown weights.transport {name!r}; choose one of "
                         f"{sorted(TRANSPORTS)}") from None
