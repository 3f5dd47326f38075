"""The sending end's buckets: a model's full weights cut into groups of many tensors.

Every parameter travels in a bucket of many tensors (never one message per parameter),
keyed by its transformers state-dict name (model.visual.*, model.language_model.*,
lm_head.*). Under ZeRO-3 every learner rank enters `GatheredParameters` for the same bucket
at the same time (the gather is a collective); only rank 0 keeps the full tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch


def plan_buckets(sizes: list[tuple[str, int]], bucket_bytes: int,
                 unit: Callable[[str], str] | None = None) -> list[list[str]]:
    """Group (name, nbytes) in order into buckets of at most `bucket_bytes`.

    A tensor is never split; one larger than a bucket travels alone in its own bucket.
    With `unit`, consecutive names of one unit (`unit(name)` equal) share a bucket: a LoRA
    layer's base weight and adapter, which are merged together (weight_sync.lora).
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket size must be positive, got {bucket_bytes} bytes")
    units: list[tuple[list[str], int]] = []
    for name, nbytes in sizes:
        if units and unit is not None and unit(name) == unit(units[-1][0][-1]):
            units[-1] = (units[-1][0] + [name], units[-1][1] + nbytes)
        else:
            units.append(([name], nbytes))
    buckets: list[list[str]] = []
    current: list[str] = []
    current_bytes = 0
    for names, nbytes in units:
        if current and current_bytes + nbytes > bucket_bytes:
            buckets.append(current)
            current, current_bytes = [], 0
        current.extend(names)
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
    module: torch.nn.Module, bucket_bytes: int, zero3: bool, keep: bool,
    entries: list[tuple[str, torch.Tensor]] | None = None,
    unit: Callable[[str], str] | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield buckets of full CPU tensors (empty dicts where `keep` is False): of every
    state-dict entry of `module`, or of `entries` (name, tensor) alone (a LoRA push: the
    adapter's tensors, weight_sync.lora).

    With `zero3`, every rank must run this generator to the end together: each bucket's
    parameters are gathered with `deepspeed.zero.GatheredParameters`, a collective. Only
    the ranks with `keep` (rank 0) copy the gathered tensors out. `unit`: see
    plan_buckets.
    """
    entries = state_tensors(module) if entries is None else list(entries)
    by_name = dict(entries)
    sizes = [(name, _full_numel(t) * t.element_size()) for name, t in entries]
    for names in plan_buckets(sizes, bucket_bytes, unit):
        tensors = [by_name[n] for n in names]
        params = list({id(t): t for t in tensors if isinstance(t, torch.nn.Parameter)}.values())
        if zero3 and params:
            import deepspeed  # here, not at import: the pure helpers above need no DeepSpeed

            context: Any = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        else:
            context = contextlib.nullcontext()
        with context:
            if keep:
                yield {n: by_name[n].detach().to("cpu", copy=True).contiguous() for n in names}
            else:
                yield {}


def bucket_nbytes(bucket: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors in a bucket."""
    return sum(t.numel() * t.element_size() for t in bucket.values())
