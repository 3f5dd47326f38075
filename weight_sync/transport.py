"""How buckets of weights travel from learner rank 0 to the receivers, both ends.

A transport has two halves that must agree on what a bucket *handle* is:

- `publish(buckets)` runs on learner rank 0: it takes the gathered buckets
  (dict[name, CPU tensor], weight_sync.buckets) and returns one handle per bucket;
- `fetch(handle)` runs inside a receiver (rollout engine, scoring actor): it turns one
  handle back into its tensors (weight_sync.receiver stages them all before loading).

Handles travel through the driver: WeightSync (weight_sync.sync) hands them to every
receiver's `update_weights(version, handles)` and keeps the newest ones to replay.

`object_store` (here): a handle is a Ray ObjectRef of one bucket. It works on every machine
and is what the tests run. A collective transport (gloo on CPU, NCCL on GPU) plugs in as
another entry of `TRANSPORTS`: its handles would carry names, shapes and dtypes, and
`fetch` would receive the flat buffer from a process group that rank 0 and the receivers
join at start-up; the receivers' all-or-nothing staging stays as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the conf loader imports TRANSPORTS; keep that free of torch
    import torch


class Transport(Protocol):
    """Both ends of one way of moving buckets."""

    name: str

    def publish(self, buckets: Iterable[dict[str, torch.Tensor]]) -> list[Any]: ...

    def fetch(self, handle: Any) -> Mapping[str, torch.Tensor]: ...


class ObjectStoreTransport:
    """Buckets as Ray ObjectRefs: `ray.put` on rank 0, `ray.get` in the receiver."""

    name = "object_store"

    def publish(self, buckets: Iterable[dict[str, torch.Tensor]]) -> list[Any]:
        import ray

        return [ray.put(bucket) for bucket in buckets]

    def fetch(self, handle: Any) -> Mapping[str, torch.Tensor]:
        import ray

        return ray.get(handle)


# conf `weights.transport` takes its choices from here (conf/loader.py).
TRANSPORTS: dict[str, type] = {"object_store": ObjectStoreTransport}


def make_transport(name: str) -> Transport:
    """The transport named by conf `weights.transport`."""
    try:
        return TRANSPORTS[name]()
    except KeyError:
        raise ValueError(f"unknown weights.transport {name!r}; choose one of "
                         f"{sorted(TRANSPORTS)}") from None
