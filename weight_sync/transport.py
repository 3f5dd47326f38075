"""How buckets of weights travel from learner rank 0 to the receivers, both ends.

Both transports stream: rank 0 holds one gathered bucket at a time, and a receiver takes
one bucket, loads it and only then takes the next (weight_sync.receiver), so neither end
ever holds the whole model a second time. A *push* is what WeightSync (weight_sync.sync)
hands every receiver's `update_weights(version, push)`:

- `object_store`: a list of Ray ObjectRefs, one per bucket, `ray.put` by rank 0 before the
  delivery (`publish`). It works on every machine, and the refs can be streamed again:
  WeightSync replays them to a restarted receiver, and a receiver rolls back to them.
- `collective`: a process group of its own (`WeightGroup`, backend gloo on CPU, nccl on
  GPU, same code) of learner rank 0 (rank 0 of the group) and every receiver; rank 0
  broadcasts each bucket as it is gathered (`send`) while the receivers take them in
  (`stream`). The push names its group (`id`, with the rendezvous to join it by): each
  end keeps the group it joined and the next push of the same id reuses it, so a run
  forms one communicator, not one per push; WeightSync asks for a new group only when the
  members change (a receiver restarted, died or was replayed to alone) or a push failed,
  and an end whose push failed drops its group (its state is unknown). Nothing is kept
  but the group: a replay is a new push of the learners' weights, which are the current
  version's until the next step. A receiver may run its end inside the vLLM worker
  process, so that the buckets land on the model's own device and go straight into its
  weights (actors/worker_extension.py).

The collective wire format, per bucket: a 2-int64 frame (header bytes, payload bytes; 0, 0
ends the push), the header (JSON: name, dtype, shape and payload offset of each tensor,
and the payload's chunks) and the payload (the tensors' bytes, back to back), one
broadcast per chunk: a large tensor straight from its own memory, small ones packed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from conf.choices import COLLECTIVE_BACKENDS
from conf.choices import TRANSPORTS as TRANSPORT_NAMES
from conf.loader import weights_group_gpus

if TYPE_CHECKING:
    import socket

    import torch


class Transport(Protocol):
    """The receiving half of one way of moving buckets (the sending halves differ)."""

    live: bool        # True: sender and receivers run together (WeightSync starts both)

    def stream(self, push: Any) -> Iterator[Mapping[str, torch.Tensor]]: ...


def dtype_name(tensor: torch.Tensor) -> str:
    """How a tensor's dtype travels beside its bytes: "bfloat16", "float32", ..."""
    return str(tensor.dtype).removeprefix("torch.")


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype `dtype_name` wrote."""
    import torch

    return getattr(torch, name)


class PackedBucket(Mapping):
    """A bucket as the object store keeps it: each tensor's bytes as a numpy array (which
    Ray writes into the store in one copy and hands back zero-copy, mapped from the
    store's shared memory; a torch tensor would be copied out again on every `ray.get`),
    with names, dtypes and shapes beside them (numpy has no bfloat16). After `ray.get`
    it reads as the dict of tensors it was packed from: read-only views of the arrays
    (a load copies them into the engine)."""

    def __init__(self, specs: list[tuple[str, str, tuple[int, ...]]], arrays: list[Any]):
        self.specs, self.arrays = specs, arrays
        self._tensors: dict[str, torch.Tensor] | None = None

    def __reduce__(self) -> tuple:
        return (PackedBucket, (self.specs, self.arrays))   # the views are rebuilt there

    @classmethod
    def pack(cls, bucket: Mapping[str, torch.Tensor]) -> PackedBucket:
        """Zero-copy numpy views of the bucket's (contiguous CPU) tensors."""
        import torch

        specs, arrays = [], []
        for name, tensor in bucket.items():
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            specs.append((name, dtype_name(tensor), tuple(tensor.shape)))
            arrays.append(flat.view(torch.uint8).numpy())
        return cls(specs, arrays)

    def _unpacked(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            import warnings

            import torch

            out = {}
            with warnings.catch_warnings():
                # The store's arrays are read-only; nothing here writes to them.
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                for (name, dtype, shape), array in zip(self.specs, self.arrays):
                    out[name] = torch.from_numpy(array).view(dtype_of(dtype)).reshape(shape)
            self._tensors = out
        return self._tensors

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._unpacked()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._unpacked())

    def __len__(self) -> int:
        return len(self.specs)


class ObjectStoreTransport:
    """Buckets as Ray ObjectRefs: `ray.put` on rank 0, `ray.get` one at a time in the
    receiver (the bucket before is dropped by then)."""

    live = False

    def publish(self, buckets: Iterable[dict[str, torch.Tensor]]) -> list[Any]:
        """One ObjectRef per bucket (rank 0), each a PackedBucket."""
        import ray

        return [ray.put(PackedBucket.pack(bucket)) for bucket in buckets]

    def stream(self, push: list[Any]) -> Iterator[Mapping[str, torch.Tensor]]:
        """The push's buckets, fetched one by one (PackedBucket, or a plain dict of tensors
        as some tests put)."""
        import ray

        for ref in push:
            got = ray.get(ref)
            yield got
            del got


SMALL_BYTES = 1 << 20   # tensors below this travel packed together in one broadcast
ALIGN = 16


def _frame(group: Any, header_len: int = 0, payload_len: int = 0) -> tuple[int, int]:
    import torch

    frame = torch.tensor([header_len, payload_len], dtype=torch.int64, device=group.device)
    group.broadcast(frame)
    return int(frame[0]), int(frame[1])


def _bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    import torch

    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def _aligned(offset: int) -> int:
    # Every tensor starts at a multiple of ALIGN in the payload, so that the receiver can
    # view its bytes as the tensor's dtype whatever came before it.
    return -(-offset // ALIGN) * ALIGN


def _chunks(raws: list[torch.Tensor], starts: list[int]) -> list[tuple[int, int, list[int]]]:
    """(start, end, tensor indices) of each broadcast: a large tensor alone (sent from its
    own memory, no staging copy), consecutive small ones together (one call, not many);
    empty tensors need none."""
    chunks: list[tuple[int, int, list[int]]] = []
    open_small = False
    for index, (raw, start) in enumerate(zip(raws, starts)):
        size = int(raw.numel())
        if size == 0:
            continue
        if size >= SMALL_BYTES or not open_small or chunks[-1][1] - chunks[-1][0] >= SMALL_BYTES:
            chunks.append((start, start + size, [index]))
        else:
            first, _, members = chunks[-1]
            chunks[-1] = (first, start + size, [*members, index])
        open_small = size < SMALL_BYTES
    return chunks


class CollectiveTransport:
    """Buckets broadcast through a process group of rank 0 and the receivers; the group is
    kept from push to push while the pushes name it (module docstring)."""

    live = True

    def __init__(self) -> None:
        self._group: Any = None
        self._group_id: str | None = None
        self.joins = 0   # groups this end has joined: one per run unless the members change

    @staticmethod
    def _join(push: Mapping[str, Any], listener: socket.socket | None = None) -> Any:
        from weight_sync.group import WeightGroup, own_address, tcp_store

        rank, host = int(push["rank"]), str(push["host"])
        store = tcp_store(host, int(push["port"]), int(push["world_size"]), rank,
                          float(push["timeout_s"]), listener)
        return WeightGroup(store, rank, int(push["world_size"]), str(push["backend"]),
                           own_address(host, serving=rank == 0), float(push["timeout_s"]),
                           prefix=f"weights/{push['id']}/")

    def _group_for(self, push: Mapping[str, Any],
                   listener: socket.socket | None = None) -> Any:
        """The group `push` names: the one this end holds, or a new one joined (the one
        held before is closed)."""
        if self._group is not None and self._group_id == str(push["id"]):
            return self._group
        self.close()
        if int(push["rank"]) == 0 and listener is None:
            raise RuntimeError(f"weights group {push['id']} is not open on rank 0 and no "
                               "socket was opened for it (open_weight_session)")
        self._group = self._join(push, listener)
        self._group_id = str(push["id"])
        self.joins += 1
        return self._group

    def close(self) -> None:
        """Leave the group held, if any (after a failed push its state is unknown)."""
        if self._group is not None:
            self._group.close()
        self._group, self._group_id = None, None

    def send(self, buckets: Iterable[dict[str, torch.Tensor]], push: Mapping[str, Any],
             listener: socket.socket | None = None) -> None:
        """Rank 0: broadcast every bucket, then the end frame. A push of a new group needs
        `listener`, the socket its store serves on (bound to push["host"],
        weight_sync.group.listen_on); a push of the group held needs none."""
        import torch

        group = self._group_for({**push, "rank": 0}, listener)
        try:
            for bucket in buckets:
                tensors, raws, starts, offset = [], [], [], 0
                for name, tensor in bucket.items():
                    raw = _bytes_of(tensor)
                    offset = _aligned(offset)
                    tensors.append([name, dtype_name(tensor),
                                    list(tensor.shape), offset])
                    raws.append(raw)
                    starts.append(offset)
                    offset += raw.numel()
                chunks = _chunks(raws, starts)
                meta = torch.frombuffer(bytearray(json.dumps(
                    {"tensors": tensors, "chunks": [c[:2] for c in chunks]}).encode()),
                    dtype=torch.uint8)
                _frame(group, meta.numel(), offset)
                group.broadcast(meta.to(group.device))
                for start, end, members in chunks:
                    if len(members) == 1:
                        data = raws[members[0]]
                    else:   # small tensors packed, padding included
                        data = torch.zeros(end - start, dtype=torch.uint8)
                        for i in members:
                            data[starts[i] - start:starts[i] - start + raws[i].numel()] = raws[i]
                    group.broadcast(data.to(group.device))
            _frame(group)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _receive(group: Any) -> tuple[list, Any] | None:
        """One bucket: (tensor list, payload), or None at the end of the push.

        Each bucket gets a buffer of its own, never one reused: vLLM's layerwise reload
        keeps the tensors of a layer whose other tensors are still to come (a bucket may
        end mid-layer) and processes them later, so a reused buffer would overwrite
        them."""
        import torch

        header_len, payload_len = _frame(group)
        if header_len == 0:
            return None
        meta = group.broadcast(torch.empty(header_len, dtype=torch.uint8, device=group.device))
        header = json.loads(bytes(meta.cpu().tolist()))
        payload = torch.empty(payload_len, dtype=torch.uint8, device=group.device)
        for start, end in header["chunks"]:
            group.broadcast(payload[start:end])
        return header["tensors"], payload

    def stream(self, push: Mapping[str, Any]) -> Iterator[Mapping[str, torch.Tensor]]:
        """Receiver: the buckets in order, each the views of its own buffer. Closed early
        (a refused bucket), it still takes the rest of the push, so that rank 0 and the
        other receivers are not left waiting; the group is kept unless a broadcast
        failed."""

        group = self._group_for(push)
        try:
            while True:
                got = self._receive(group)
                if got is None:
                    return
                tensors, payload = got
                bucket = {}
                for name, dtype, shape, offset in tensors:
                    kind = dtype_of(dtype)
                    size = kind.itemsize * math.prod(shape)
                    bucket[name] = payload[offset:offset + size].view(kind).reshape(shape)
                del payload, got
                yield bucket
                del bucket
        except GeneratorExit:   # closed early: take what rank 0 still sends
            try:
                while self._receive(group) is not None:
                    pass
            except BaseException:
                self.close()
                raise
            raise
        except BaseException:   # a broadcast failed: the group's state is unknown
            self.close()
            raise


def collective_backend(conf: Mapping[str, Any]) -> str:
    """gloo or nccl for conf `weights.backend`; auto: nccl when every member of the group
    has a whole GPU of its own or more, else gloo. A fraction of a GPU may share the GPU
    with another member, and NCCL refuses two ranks of one group on one GPU (conf.loader
    refuses an explicit nccl there)."""
    choice = conf["weights"]["backend"]
    if choice not in COLLECTIVE_BACKENDS:
        raise ValueError(f"weights.backend must be one of {list(COLLECTIVE_BACKENDS)}, "
                         f"got {choice!r}")
    if choice != "auto":
        return choice
    return "nccl" if all(g >= 1 for g in weights_group_gpus(conf).values()) else "gloo"


# conf `weights.transport` -> its class, in the order of conf.choices.TRANSPORTS.
TRANSPORTS: dict[str, type] = dict(zip(TRANSPORT_NAMES, (ObjectStoreTransport,
                                                        CollectiveTransport), strict=True))


def make_transport(name: str) -> Any:
    """The transport named by conf `weights.transport`."""
    try:
        return TRANSPORTS[name]()
    except KeyError:
        raise ValueError(f"unknown weights.transport {name!r}; choose one of "
                         f"{sorted(TRANSPORTS)}") from None
