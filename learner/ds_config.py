"""Configuration -> DeepSpeed config dict and learning-rate schedule. Pure functions.

Reads conf keys train.* (micro_batch_size, grad_clip, precision, lr, warmup_ratio,
lr_schedule) and learner.* (zero_stage, offload). One `LearnerGroup.step` is one optimizer
step over all the experience it is given, however many micro-batches that takes, so
DeepSpeed runs with `managed_gradient_accumulation: false` (the caller owns the boundary:
backward only accumulates, `engine.step()` reduces and updates) and
`gradient_accumulation_steps: 1`; the learner weights each micro-batch's loss itself so the
update is the one of the whole batch (see learner_actor.py).
"""

from __future__ import annotations

import math
from typing import Any

from conf.choices import LR_SCHEDULES, PRECISIONS, ZERO_STAGES

ACCELERATORS = ("cpu", "cuda")


def build_ds_config(train: Any, learner: Any, world_size: int, accelerator: str) -> dict:
    """The DeepSpeed config dict for the learner.

    Args:
        train: the conf `train` section (attribute or item access).
        learner: the conf `learner` section.
        world_size: number of learner ranks.
        accelerator: "cpu" or "cuda" (DeepSpeed's accelerator name).

    On "cpu" the offload setting is ignored: parameters and optimizer state already live in
    host memory, and offload would only add copies (and require DeepSpeed's compiled CPU
    Adam). On "cuda" with offload, ZeRO-3 offloads parameters and optimizer state to host
    memory (Table 7: "Deepspeed Stage 3 Offload"); ZeRO-1/2 offload the optimizer state.
    """
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {list(ACCELERATORS)}, got {accelerator!r}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    stage = int(learner["zero_stage"])
    if stage not in ZERO_STAGES:
        raise ValueError(f"learner.zero_stage must be one of {list(ZERO_STAGES)}, got {stage}")
    precision = str(train["precision"])
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {list(PRECISIONS)}, got {precision!r}")
    micro = int(train["micro_batch_size"])
    if micro < 1:
        raise ValueError(f"train.micro_batch_size must be >= 1, got {micro}")

    zero: dict[str, Any] = {"stage": stage}
    if stage == 3:
        # Gather whole layers at a time; the defaults are sized for big models and are fine.
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    if accelerator == "cuda" and bool(learner["offload"]) and stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}

    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro * world_size,
        "managed_gradient_accumulation": False,
        "gradient_clipping": float(train["grad_clip"]),
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        # The optimizer is a client torch AdamW (or DeepSpeedCPUAdam with offload on GPU):
        # DeepSpeed's config optimizer would JIT-compile its fused Adam first.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return config


def states_can_move(ds_config: dict, accelerator: str) -> bool:
    """Whether the learner's states leave the GPU while colocated vLLM engines generate
    (DeepSpeed's `offload_states` / `reload_states`, ZeRO stages 1-3): on "cuda" only, and
    only without ZeRO offload, which already keeps them in host memory (DeepSpeed refuses
    to move offloaded parameters). On "cpu" they are in host memory anyway."""
    zero = ds_config["zero_optimization"]
    return (accelerator == "cuda" and zero["stage"] > 0 and "offload_optimizer" not in zero
            and "offload_param" not in zero)


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Warm-up length in optimizer steps: ceil(ratio * total), as transformers rounds it."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"train.warmup_ratio must lie in [0, 1), got {warmup_ratio}")
    return math.ceil(warmup_ratio * total_steps)


def lr_multiplier(step: int, total_steps: int, warmup: int, schedule: str = "cosine") -> float:
    """Factor on the peak learning rate for optimizer step `step` (0-based).

    Linear warm-up (step + 1) / warmup over the first `warmup` steps, so the first update
    is never taken at lr 0; then "cosine" decays as 0.5 (1 + cos(pi p)) with
    p = (step - warmup) / (total_steps - warmup) (Table 7: cosine decay), which stays above
    0 on the last step; "constant" holds 1.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"train.lr_schedule must be one of {list(LR_SCHEDULES)}, got "
                         f"{schedule!r}")
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
