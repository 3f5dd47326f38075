"""conf -> what one vLLM engine needs: EngineSettings, the sampling dict, CPU binding.

Pure: nothing here imports vLLM or Ray. The engine actors (actors/engine_host.py) read
these settings in their own process, where the environment of `engine_env` is set before
vLLM is imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from conf.choices import ENGINE_DTYPES
from model_inputs.prompting import MAX_IMAGES_PER_PROMPT
from weight_sync.lora import pushes_adapter


@dataclass(frozen=True)
class EngineSettings:
    """What one engine needs to start; conf keys in brackets (see `settings_from_config`)."""

    model_path: str
    dtype: str = "bfloat16"               # [rollout.dtype]
    max_model_len: int = 4096             # [rollout.max_model_len]
    kv_cache_gib: int = 4                 # [rollout.kv_cache_gib], CPU only
    gpu_memory_utilization: float = 0.6   # [rollout.gpu_memory_utilization], GPU only
    enforce_eager: bool = False           # [rollout.enforce_eager]
    multiprocessing: bool = True          # [rollout.multiprocessing]
    tensor_parallel_size: int = 1         # [rollout.tensor_parallel_size]
    min_pixels: int = 3136                # [model.min_pixels]
    max_pixels: int = 2073600             # [model.max_pixels]
    trust_remote_code: bool = False       # [model.trust_remote_code]
    use_gpu: bool = False                 # [rollout.num_gpus_per_engine] > 0
    num_threads: int = 1                  # CPU only: [rollout.num_cpus_per_engine], >= 1
    cpu_slot: int | None = None           # CPU only: which block of cores to bind to
    max_images_per_prompt: int = MAX_IMAGES_PER_PROMPT
    seed: int = 0                         # [run.seed] + engine index
    prompts: Any = None                   # the config's `prompts` node (None: conf defaults)
    weights_transport: str = "object_store"  # [weights.transport]
    lora: dict | None = None              # [lora] when pushes carry the adapter (lora.push)
    sleep_mode: bool = False              # [placement.colocate] on GPU: vLLM's sleep mode


def settings_from_config(cfg: Any, model_path: str, role: str = "rollout") -> EngineSettings:
    """EngineSettings from a loaded config; role "rollout" or "scoring" picks the CPU/GPU
    share (rollout.num_*_per_engine or scoring.num_*); the engine settings are shared."""
    from omegaconf import OmegaConf

    r = cfg.rollout
    if role == "rollout":
        cpus, gpus = r.num_cpus_per_engine, r.num_gpus_per_engine
    elif role == "scoring":
        cpus, gpus = cfg.scoring.num_cpus, cfg.scoring.num_gpus
    else:
        raise ValueError(f"role must be 'rollout' or 'scoring', got {role!r}")
    if r.dtype not in ENGINE_DTYPES:
        raise ValueError(f"rollout.dtype must be one of {list(ENGINE_DTYPES)}, got {r.dtype!r}")
    return EngineSettings(
        model_path=str(model_path), dtype=r.dtype, max_model_len=r.max_model_len,
        kv_cache_gib=r.kv_cache_gib, gpu_memory_utilization=r.gpu_memory_utilization,
        enforce_eager=r.enforce_eager, multiprocessing=r.multiprocessing,
        tensor_parallel_size=r.tensor_parallel_size, min_pixels=cfg.model.min_pixels,
        max_pixels=cfg.model.max_pixels, trust_remote_code=cfg.model.trust_remote_code,
        use_gpu=gpus > 0, num_threads=max(1, int(cpus)), seed=cfg.run.seed,
        prompts=OmegaConf.to_container(cfg.prompts) if "prompts" in cfg else None,
        weights_transport=cfg.weights.transport,
        lora=OmegaConf.to_container(cfg.lora) if pushes_adapter(cfg.lora) else None,
        sleep_mode=bool(cfg.placement.colocate) and gpus > 0)


SAMPLING_KEYS = ("temperature", "top_p", "max_new_tokens")


def sampling_from_config(cfg: Any, greedy: bool = False) -> dict:
    """The sampling dict `RolloutEngine.generate` takes, from conf `rollout`; greedy=True
    is the evaluations' decoding (temperature 0, as the paper evaluates)."""
    r = cfg.rollout
    sampling = {"temperature": r.temperature, "top_p": r.top_p,
                "max_new_tokens": r.max_new_tokens}
    if greedy:
        sampling.update(temperature=0.0, top_p=1.0)
    return sampling


def cpu_cores_for(slot: int, num_threads: int, allowed: list[int]) -> list[int]:
    """The cores of CPU slot `slot`: consecutive blocks of `num_threads` allowed cores,
    wrapping round when there are more slots than cores (engines then share cores)."""
    if not allowed:
        raise ValueError("no CPU cores are allowed for this process")
    return sorted({allowed[(slot * num_threads + k) % len(allowed)] for k in range(num_threads)})


def engine_env(settings: EngineSettings, cores: list[int] | None) -> dict[str, str]:
    """vLLM environment variables of an engine (read when vLLM is imported)."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1" if settings.multiprocessing else "0",
           # vLLM logs every weight reload and cache reset at INFO, once per step per
           # engine; the driver's terminal stays readable at WARNING. Set the variable
           # yourself to see them.
           "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    if not settings.use_gpu:
        # Ray no longer hides the node's GPUs from an actor that asks for none: without
        # this, vLLM would take its share of GPU 0 and the next engine would fail there.
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["VLLM_CPU_KVCACHE_SPACE"] = str(int(settings.kv_cache_gib))
        if cores:
            # Multiprocess mode: vLLM's worker binds its OpenMP threads to these cores
            # itself; without it every engine on the node binds to the same ones.
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
            env["OMP_NUM_THREADS"] = str(len(cores))
    return env
