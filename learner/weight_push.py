"""Weights learner -> rollout engines and scoring actor: gather, cut into buckets, send.

Every parameter travels in a bucket of many tensors (never one call per parameter), keyed
by its transformers state-dict name (model.visual.*, model.language_model.*, lm_head.*),
with a version number. Under ZeRO-3 every rank enters `GatheredParameters` for the same
bucket at the same time (the gather is a collective); only rank 0 keeps the full tensors
and sends them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch


def plan_buckets(sizes: list[tuple[str, int]], bucket_bytes: int) -> list[list[str]]:
    """Group (name, nbytes) in order into buckets of at most `bucket_bytes`.

    A tensor is never split; one larger than a bucket travels alone in its own bucket.
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket size must be positive, got {bucket_bytes} bytes")
    buckets: list[list[str]] = []
    current: list[str] = []
    current_bytes = 0
    for name, nbytes in sizes:
        if current and current_bytes + nbytes > bucket_bytes:
            buckets.append(current)
            current, current_bytes = [], 0
        current.append(name)
        current_bytes += nbytes
    if current:
        buckets.append(current)
    return buckets


def _full_numel(param: torch.Tensor) -> int:
    # ZeRO-3 keeps an empty local tensor and records the full size in ds_numel.
    return int(getattr(param, "ds_numel", param.numel()))


def state_tensors(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(state-dict name, parameter or buffer) for every entry of module.state_dict(),
    tied weights listed under each of their names (a strict load needs every key)."""
    params = dict(module.named_parameters(remove_duplicate=False))
    buffers = dict(module.named_buffers(remove_duplicate=False))
    entries = []
    for name in module.state_dict():
        tensor = params.get(name, buffers.get(name))
        if tensor is None:
            raise KeyError(f"state-dict key {name!r} is neither a parameter nor a buffer")
        entries.append((name, tensor))
    return entries


def iter_gathered_buckets(
    module: torch.nn.Module, bucket_bytes: int, zero3: bool, keep: bool
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield buckets of full CPU tensors (empty dicts where `keep` is False).

    With `zero3`, every rank must run this generator to the end together: each bucket's
    parameters are gathered with `deepspeed.zero.GatheredParameters`, a collective. Only
    the ranks with `keep` (rank 0) copy the gathered tensors out.
    """
    entries = state_tensors(module)
    by_name = dict(entries)
    sizes = [(name, _full_numel(t) * t.element_size()) for name, t in entries]
    for names in plan_buckets(sizes, bucket_bytes):
        tensors = [by_name[n] for n in names]
        params = list({id(t): t for t in tensors if isinstance(t, torch.nn.Parameter)}.values())
        if zero3 and params:
            import deepspeed  # here, not at import: the pure helpers above need no DeepSpeed

            context: Any = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        else:
            context = _NullContext()
        with context:
            if keep:
                yield {n: by_name[n].detach().to("cpu", copy=True).contiguous() for n in names}
            else:
                yield {}


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def bucket_nbytes(bucket: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors in a bucket."""
    return sum(t.numel() * t.element_size() for t in bucket.values())


class WeightTransport:
    """How buckets of weights reach the receivers (rollout engines, the scoring actor).

    A receiver is a Ray actor with `update_weights(version, bucket_refs)`; what
    `bucket_refs` holds depends on the transport. `send` returns timings and byte counts.

    Transports:
    - ObjectStoreTransport (here): `ray.put` each bucket of CPU tensors, then one
      `update_weights.remote(version, [ObjectRef, ...])` per receiver, each ref resolving to
      dict[str, torch.Tensor]. Works on every machine; tested on CPU.
    - An NCCL / CUDA-IPC transport is the GPU fast path and plugs in here as another
      subclass: at start-up, rank 0 of the learner and every receiver join a
      `torch.distributed` (NCCL) group of their own (a `ray.util.collective` group or a
      `StatelessProcessGroup`-style rendezvous); `send` then calls
      `receiver.update_weights.remote(version, metadata)` with only names, shapes and dtypes
      per bucket, and broadcasts each bucket as one flat GPU buffer that the receivers
      unflatten and load; receivers on the learner's GPU can take CUDA IPC handles instead.
      Buckets then never leave GPU memory. This path cannot be exercised on a machine
      without a GPU and is not implemented or tested here; conf `weights.transport: nccl`
      is refused with a message until it is.
    """

    def send(
        self, version: int, buckets: Iterable[dict[str, torch.Tensor]], receivers: list[Any]
    ) -> dict[str, float]:
        """Deliver all buckets to every receiver under `version`; block until loaded."""
        raise NotImplementedError


class ObjectStoreTransport(WeightTransport):
    """Buckets through the Ray object store (see WeightTransport)."""

    def send(
        self, version: int, buckets: Iterable[dict[str, torch.Tensor]], receivers: list[Any]
    ) -> dict[str, float]:
        import ray

        refs = []
        total_bytes = 0
        put_s = 0.0
        produce_start = time.perf_counter()
        for bucket in buckets:  # a generator: gathering the next bucket happens here
            start = time.perf_counter()
            refs.append(ray.put(bucket))
            put_s += time.perf_counter() - start
            total_bytes += bucket_nbytes(bucket)
        produce_s = time.perf_counter() - produce_start
        start = time.perf_counter()
        calls = [r.update_weights.remote(version, refs) for r in receivers]
        unreachable = []
        for index, call in enumerate(calls):
            try:
                ray.get(call)
            except ray.exceptions.RayActorError as err:
                # A receiver that died (or is restarting) is skipped, not fatal: a restarted
                # rollout engine is brought to the newest version by its EngineGroup, which
                # finds these buckets on a live peer. A refused or failed load still raises.
                unreachable.append(f"receiver {index}: {str(err).splitlines()[0]}")
        if unreachable and len(unreachable) == len(receivers):
            raise RuntimeError(f"no receiver took weights version {version}: {unreachable}")
        receive_s = time.perf_counter() - start
        return {
            "bytes": float(total_bytes),
            "num_buckets": float(len(refs)),
            "gather_s": produce_s - put_s,
            "put_s": put_s,
            "receive_s": receive_s,
            "unreachable": float(len(unreachable)),
        }


def make_transport(name: str) -> WeightTransport:
    """The transport named by conf `weights.transport`."""
    if name == "object_store":
        return ObjectStoreTransport()
    if name == "nccl":
        raise NotImplementedError(
            "weights.transport=nccl (the GPU fast path) is not implemented yet; "
            "use weights.transport=object_store (see learner.weight_push.WeightTransport)"
        )
    raise ValueError(f"unknown weights.transport {name!r}; choose object_store or nccl")


def resolve_buckets(bucket_refs: list[Any]) -> dict[str, torch.Tensor]:
    """A receiver's helper: fetch the buckets of ObjectStoreTransport into one state dict."""
    import ray

    state: dict[str, torch.Tensor] = {}
    for bucket in ray.get(list(bucket_refs)):
        overlap = state.keys() & bucket.keys()
        if overlap:
            raise ValueError(f"weight buckets repeat tensors: {sorted(overlap)[:3]}")
        state.update(bucket)
    return state
