"""Memory each role will need, estimated from the model's size and the config.

Estimates, not measurements: they count the tensors whose size the settings fix and say
what they leave out (activations, allocator slack, CUDA context). Bytes per parameter:
2 in bf16, 4 in fp32. Per role:

- rollout engine and scoring actor (vLLM): the weights in `rollout.dtype`; on a GPU the KV
  cache takes what is left of `rollout.gpu_memory_utilization` of the GPU, on a CPU
  `rollout.kv_cache_gib` of host memory;
- learner rank (DeepSpeed, `learner.num_learners` = W ranks, ZeRO stage z): parameters
  (sharded over W at z = 3), gradients (sharded at z >= 2), and the AdamW state: an fp32
  master copy and two fp32 moments, 12 bytes per parameter in bf16 training (8 in fp32,
  whose parameters are the master copy), sharded at z >= 1. With `learner.offload` on a GPU
  the optimizer state moves to host memory (and the parameters too at z = 3). With LoRA
  (`lora.rank` > 0) the base weights are frozen: gradients and AdamW state exist for the
  adapter's parameters alone;
- the object store (`weights.transport=object_store`): one weight push is the full weights
  in the learner's precision (with LoRA and lora.push=adapter, the adapter), and a node
  keeps the newest two (the previous for a rollback);
- a colocated GPU (`placement.colocate` on GPUs): a learner rank and a vLLM actor in turn
  (driver/gpu_sharing.py). Its known peak is the push: the rank's GPU share and the
  woken vLLM weights (the KV cache still asleep); while generating, the vLLM actor's
  fraction of the GPU plus what of the rank stays (nothing when DeepSpeed moves its
  states out, all of it when ZeRO offload already keeps the rest on the host).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.resources import with_scorer
from learner.ds_config import build_ds_config, states_can_move

GIB = 2**30


def local_model_dir(model_path: str | Path) -> Path | None:
    """The directory holding a model: `model_path` itself, or a hub id's snapshot in the
    local Hugging Face cache (nothing is downloaded); None when it is not on this machine."""
    folder = Path(model_path)
    if folder.is_dir():
        return folder
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model_path), local_files_only=True))
    except Exception:   # noqa: BLE001 - any failure means: not in the cache
        return None


def num_parameters(model_dir: str | Path) -> int | None:
    """Parameters of a local model directory, read from its safetensors headers (nothing
    is loaded); None when it has none."""
    folder = Path(model_dir)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    total = 0
    for file in files:
        with file.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def _bytes(precision: str) -> int:
    return 2 if precision in ("bf16", "bfloat16", "float16", "fp16", "half") else 4


@dataclass
class RoleMemory:
    """One actor's estimated memory, in GiB: on its GPU (0 without one) and on the host."""

    role: str
    count: int
    gpu_gib: float
    host_gib: float
    note: str


def estimate(cfg: Any, params: int, adapter_params: int = 0) -> list[RoleMemory]:
    """Per-actor estimates for the roles a run starts (module docstring); `adapter_params`:
    the LoRA adapter's parameters (weight_sync.lora.adapter_shapes), with lora.rank > 0."""
    r, ln, t = cfg.rollout, cfg.learner, cfg.train
    lora = cfg.lora.rank > 0
    trained = adapter_params if lora else params   # what has gradients and optimizer state
    weights = params * _bytes(r.dtype) / GIB
    out = []
    for role, count, gpus in (("rollout engine", r.num_engines, r.num_gpus_per_engine),
                              ("scoring actor", int(with_scorer(cfg, None)),
                               cfg.scoring.num_gpus)):
        if count == 0:
            continue
        if gpus > 0:
            out.append(RoleMemory(role, count, weights, 0.0,
                                  f"weights {weights:.1f} GiB; the KV cache takes the rest of "
                                  f"{r.gpu_memory_utilization:g} of the GPU"))
        else:
            out.append(RoleMemory(role, count, 0.0, weights + r.kv_cache_gib,
                                  f"weights + a {r.kv_cache_gib} GiB KV cache, on the host"))
    b, w, z = _bytes(t.precision), ln.num_learners, ln.zero_stage
    held = params + adapter_params if lora else params
    param = held * b / (w if z == 3 else 1) / GIB
    grads = trained * b / (w if z >= 2 else 1) / GIB
    optim = trained * (12 if b == 2 else 8) / (w if z >= 1 else 1) / GIB
    offload = ln.offload and ln.num_gpus > 0 and z >= 1
    if ln.num_gpus > 0:
        gpu = param * (z != 3 or not offload) + grads + optim * (not offload)
        host = optim * offload + param * (offload and z == 3)
    else:
        gpu, host = 0.0, param + grads + optim
    # With LoRA the reference is the policy with its adapter off: no second model.
    kl = " + the KL reference model" if t.kl_coef > 0 and not lora else ""
    out.append(RoleMemory("learner rank", w, gpu, host,
                          f"parameters {param:.1f} + gradients {grads:.1f} + AdamW state "
                          f"{optim:.1f} GiB ({'offloaded to the host' if offload else 'kept'})"
                          f"{kl}; activations not counted"))
    if cfg.placement.colocate and ln.num_gpus > 0:
        moves = states_can_move(build_ds_config(t, ln, w, "cuda"), "cuda")
        stays = 0.0 if moves else gpu
        out.append(RoleMemory("colocated GPU", w, gpu + weights, 0.0,
                              f"at the push: learner {gpu:.1f} + vLLM weights {weights:.1f} "
                              f"GiB; generating: {r.gpu_memory_utilization:g} of the GPU + "
                              f"{stays:.1f} GiB of the learner rank"))
    if cfg.weights.transport == "object_store":   # the collective transport keeps none
        push = (adapter_params if lora and cfg.lora.push == "adapter" else params) * b / GIB
        out.append(RoleMemory("object store, per node", 1, 0.0, 2 * push,
                              f"two weight pushes of {push:.1f} GiB (the newest and the "
                              "previous)"))
    return out
