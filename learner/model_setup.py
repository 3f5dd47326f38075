"""What a learner rank trains: the policy model, its reference copy and its optimizer.

Pure set-up, called once per rank by learner.learner_actor.LearnerWorker.setup inside the
DeepSpeed world; conf keys in brackets.
- `load_policy`: the model of `model_path` in the compute dtype [train.precision], its
  parameters partitioned while loading under ZeRO-3 (deepspeed.zero.Init through
  transformers' HfDeepSpeedConfig, which must stay alive as long as the model), the vision
  tower frozen [model.freeze_vision], activation checkpointing [learner.
  activation_checkpointing], the attention implementation [model.attn_implementation];
  with LoRA [lora.rank > 0] wrapped by peft: adapters on the configured linear layers
  (weight_sync.lora), every base weight frozen, so the optimizer holds adapter state only;
- `special_token_ids`: the image, video and padding token ids the collation needs;
- `make_optimizer`: DeepSpeed's CPU Adam when ZeRO offloads the optimizer state to the host
  (the fast one there), else torch's AdamW [train.lr, train.weight_decay];
- `make_reference`: a frozen copy of the starting policy for the KL term [train.kl_coef]
  (not with LoRA: the learner then switches the adapter off for the reference pass).
"""

from __future__ import annotations

from typing import Any

import torch

from weight_sync import lora


def skip_shm_comm_build() -> None:
    """DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce on first init
    (~2 min, 1.5 GB); gloo does the same job here, so the op is marked unavailable."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def attention_kwargs(conf: dict) -> dict[str, str]:
    """from_pretrained's attn_implementation [model.attn_implementation]; null: none given
    (transformers picks, sdpa where it can)."""
    choice = conf["model"]["attn_implementation"]
    return {"attn_implementation": choice} if choice else {}


def load_policy(conf: dict, model_path: str, dtype: torch.dtype, zero_stage: int,
                ds_config: dict) -> tuple[torch.nn.Module, Any]:
    """(the trainable model, the HfDeepSpeedConfig to keep alive with it or None)."""
    from transformers import AutoModelForImageTextToText

    hf_ds_config = None
    if zero_stage == 3:
        # Partition parameters while loading instead of building the full model first.
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds_config = HfDeepSpeedConfig(ds_config)
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype,
                                                        **attention_kwargs(conf))
    if conf["model"]["freeze_vision"]:
        for name, param in model.named_parameters():
            if name.startswith("model.visual."):
                param.requires_grad_(False)
    if conf["learner"]["activation_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if lora.enabled(conf["lora"]):
        from peft import get_peft_model

        model = get_peft_model(model, lora.lora_config(conf["lora"]))
    return model, hf_ds_config


def special_token_ids(model_path: str) -> tuple[int | None, int | None, int]:
    """(image token id, video token id, padding id: the pad token, else end of text, else 0)."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return (getattr(config, "image_token_id", None), getattr(config, "video_token_id", None),
            int(pad if pad is not None else 0))


def make_optimizer(conf: dict, params: list, ds_config: dict) -> torch.optim.Optimizer:
    """The optimizer of `params` (module docstring)."""
    train = conf["train"]
    kwargs = {"lr": train["lr"], "weight_decay": train["weight_decay"]}
    if "offload_optimizer" in ds_config["zero_optimization"]:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def make_reference(conf: dict, model_path: str, dtype: torch.dtype, zero_stage: int,
                   ds_config: dict, device: torch.device) -> Any:
    """A frozen copy of the starting policy: a DeepSpeed engine under ZeRO-3 (partitioned
    like the policy, no optimizer), else the model on `device`."""
    import deepspeed
    from transformers import AutoModelForImageTextToText

    ref = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype,
                                                      **attention_kwargs(conf))
    ref.requires_grad_(False)
    ref.eval()
    if zero_stage == 3:
        ref_config = {k: v for k, v in ds_config.items() if k != "gradient_clipping"}
        ref_config["zero_optimization"] = {
            k: v for k, v in ds_config["zero_optimization"].items() if k != "offload_optimizer"}
        engine, *_ = deepspeed.initialize(model=ref, config=ref_config, dist_init_required=False)
        return engine
    return ref.to(device)
