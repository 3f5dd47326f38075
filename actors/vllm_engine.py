"""RolloutEngine: a Ray actor around one vLLM engine that writes think / no-think rollouts.

`EngineHost` holds what every vLLM-backed actor needs (the engine, the prompt builder, the
weight receiver, CPU thread binding); `RolloutEngine` adds generation and the
ScoringActor (actors/scoring_actor.py) adds teacher forcing. Everything vLLM-specific
happens inside the actor process: environment variables are set before vLLM is imported.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from actors.prompting import PromptBuilder
from actors.weights import WeightReceiver, weight_spec


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
    max_images_per_prompt: int = 2        # full-reference prompts carry two images
    seed: int = 0                         # [run.seed] + engine index
    prompts: Any = None                   # the config's `prompts` node (None: conf defaults)


def resolve_model_path(path: str, cache_dir: str | Path) -> str:
    """conf `model.path`: "tiny" is the embedded model (synth.cold_start); else as given."""
    from synth.cold_start import resolve_model_path as resolve

    return resolve(path, cache_dir)


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
    return EngineSettings(
        model_path=str(model_path), dtype=r.dtype, max_model_len=r.max_model_len,
        kv_cache_gib=r.kv_cache_gib, gpu_memory_utilization=r.gpu_memory_utilization,
        enforce_eager=r.enforce_eager, multiprocessing=r.multiprocessing,
        tensor_parallel_size=r.tensor_parallel_size, min_pixels=cfg.model.min_pixels,
        max_pixels=cfg.model.max_pixels, trust_remote_code=cfg.model.trust_remote_code,
        use_gpu=gpus > 0, num_threads=max(1, int(cpus)), seed=cfg.run.seed,
        prompts=OmegaConf.to_container(cfg.prompts) if "prompts" in cfg else None)


def sampling_from_config(cfg: Any) -> dict:
    """The sampling dict `generate` takes, from conf `rollout`."""
    r = cfg.rollout
    return {"temperature": r.temperature, "top_p": r.top_p, "max_new_tokens": r.max_new_tokens}


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
        env["VLLM_CPU_KVCACHE_SPACE"] = str(int(settings.kv_cache_gib))
        if cores:
            # Multiprocess mode: vLLM's worker binds its OpenMP threads to these cores
            # itself; without it every engine on the node binds to the same ones.
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
            env["OMP_NUM_THREADS"] = str(len(cores))
    return env


class WeightLoadExtension:
    """Mixed into vLLM's worker class (engine arg `worker_extension_cls`), so that a load is
    an RPC by method name: vLLM's multiprocess RPC carries bytes but neither tensors nor
    functions."""

    def load_weight_parts(self, parts: list[Any]) -> bool:
        """Reload from (name, tensor) lists (in-process) or safetensors blobs (multiprocess)."""
        from safetensors.torch import load as load_blob

        def items():
            for part in parts:
                yield from (load_blob(part).items() if isinstance(part, bytes) else part)

        reload = self.reload_weights  # type: ignore[attr-defined]  (the worker's method)
        reload(weights_iterator=items(), is_checkpoint_format=True)
        return True


class EngineHost:
    """A vLLM engine with its prompt builder and weight receiver (one per actor process)."""

    role = "engine"

    def __init__(self, settings: EngineSettings):
        self.settings = settings
        self.cores = self._bind_cpu() if not settings.use_gpu else None
        os.environ.update(engine_env(settings, self.cores))
        from vllm import LLM

        self.builder = PromptBuilder(settings.model_path, settings.min_pixels,
                                     settings.max_pixels, settings.prompts,
                                     settings.trust_remote_code)
        kwargs: dict[str, Any] = {}
        if settings.use_gpu:
            kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization
        self.llm = LLM(
            model=settings.model_path, dtype=settings.dtype,
            max_model_len=settings.max_model_len, enforce_eager=settings.enforce_eager,
            tensor_parallel_size=settings.tensor_parallel_size, seed=settings.seed,
            trust_remote_code=settings.trust_remote_code, enable_prefix_caching=True,
            worker_extension_cls=f"{__name__}.WeightLoadExtension",
            limit_mm_per_prompt={"image": settings.max_images_per_prompt},
            mm_processor_kwargs={"min_pixels": settings.min_pixels,
                                 "max_pixels": settings.max_pixels},
            **kwargs)
        self.receiver = WeightReceiver(
            weight_spec(settings.model_path, settings.trust_remote_code),
            load=self._load_weights, load_initial=self._load_initial_weights)
        self._warm_up()

    def _warm_up(self) -> None:
        """One throw-away image request before any real one.

        Seen on the CPU build: the first batch of a fresh engine can return logprobs up to
        ~0.07 off for one of its sequences, later batches agree with transformers to 1e-6.
        Rollout logprobs are the learner's old logprobs, so the first real batch must not
        be that one (tests/test_learner_vllm.py checks a fresh engine's first batch).
        """
        import numpy as np
        from PIL import Image
        from vllm import SamplingParams

        pixels = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
        sample = {"id": "warm-up", "task": "score", "images": [Image.fromarray(pixels)]}
        self.llm.generate([self.builder.prepare(sample, "no_think").engine_input()],
                          SamplingParams(n=2, max_tokens=4, logprobs=0), use_tqdm=False)
        self._reset_caches()

    def _bind_cpu(self) -> list[int] | None:
        """Pin this process (and the OpenMP threads it starts) to its slot's cores."""
        import torch

        if self.settings.cpu_slot is None:
            return None
        cores = cpu_cores_for(self.settings.cpu_slot, self.settings.num_threads,
                              sorted(os.sched_getaffinity(0)))
        os.sched_setaffinity(0, cores)
        # In-process mode vLLM binds nothing itself; set the pool size before vLLM's CPU
        # worker disables torch.set_num_threads.
        torch.set_num_threads(len(cores))
        return cores

    # --- weights -------------------------------------------------------------------
    def _reset_caches(self) -> None:
        # Without the encoder-cache reset the engine dies with "Encoder cache miss".
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()
        if self.llm.reset_prefix_cache() is False:
            raise RuntimeError("vLLM did not reset its prefix cache (requests in flight?)")

    def _load_weights(self, tensors: list[tuple[str, Any]]) -> None:
        if self.settings.multiprocessing:
            # Tensors cannot cross into vLLM's worker process as RPC arguments; bytes can.
            from safetensors.torch import save as save_blob

            parts: list[Any] = [save_blob({n: t.detach().contiguous().clone() for n, t in
                                           tensors})]
        else:
            parts = [tensors]
        self.llm.collective_rpc("load_weight_parts", args=(parts,))
        self._reset_caches()

    def _load_initial_weights(self) -> None:
        self.llm.collective_rpc("reload_weights", kwargs={"is_checkpoint_format": True})
        self._reset_caches()

    def update_weights(self, version: int, bucket_refs: list[Any]) -> dict:
        """Load a weight push (actors/weights.py: all or nothing, versions increase)."""
        return self.receiver.update(version, bucket_refs)

    def weights_version(self) -> int:
        """The version of the loaded weights (0 = the model's files)."""
        return self.receiver.version

    def last_weights(self) -> tuple[int, list[Any]]:
        """(version, bucket handles) of the loaded weights, for re-sending to a peer."""
        return self.receiver.last_good()

    def ready(self) -> dict:
        """Liveness and identity: role, pid, bound cores, weights version."""
        return {"role": self.role, "pid": os.getpid(), "cores": self.cores,
                "version": self.receiver.version}

    # --- engine calls ----------------------------------------------------------------
    def _run(self, prompts: list[dict], params: Any) -> list[Any]:
        self.receiver.assert_usable()
        return self.llm.generate(prompts, params, use_tqdm=False)

    def completion_logprobs(self, samples: list[dict], mode: str,
                            completions: list[list[int]]) -> list[list[float]]:
        """Teacher-forced logprob of every token of each completion after its prompt."""
        from vllm import SamplingParams

        if len(samples) != len(completions):
            raise ValueError(f"{len(samples)} samples but {len(completions)} completions")
        prompts = [self.builder.prepare(s, mode).engine_input(c)
                   for s, c in zip(samples, completions)]
        outs = self._run(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0))
        result = []
        for out, completion in zip(outs, completions):
            tail = out.prompt_logprobs[len(out.prompt_logprobs) - len(completion):]
            result.append([entry[tok].logprob for entry, tok in zip(tail, completion)])
        return result


@dataclass
class Rollout:
    """One sampled completion."""

    text: str                      # tokenizer.decode(token_ids, skip_special_tokens=True)
    token_ids: list[int]
    logprobs: list[float]          # of each sampled token, as vLLM computed it
    finish_reason: str             # "stop" (EOS / stop string) or "length"
    stripped_tokens: int = 0       # image placeholder tokens removed from the completion


@dataclass
class PromptRollouts:
    """The n rollouts of one sample."""

    sample_id: str
    mode: str
    prompt_token_ids: list[int]    # placeholders expanded: what the learner must feed
    rollouts: list[Rollout] = field(default_factory=list)
    weights_version: int = 0


class RolloutEngine(EngineHost):
    """Generates rollouts; hosted as a Ray actor (see `start_rollout_engine`)."""

    role = "rollout"

    def generate(self, samples: list[dict], mode: str, n: int,
                 sampling: dict) -> list[PromptRollouts]:
        """n rollouts per sample. `sampling`: temperature, top_p, max_new_tokens (+ seed).

        Logprobs are vLLM's "raw" ones: log-softmax of the model's logits before
        temperature and top-p, i.e. the policy's own logprobs at temperature 1.
        """
        from vllm import SamplingParams

        unknown = set(sampling) - {"temperature", "top_p", "max_new_tokens", "seed"}
        if unknown:
            raise ValueError(f"unknown sampling keys {sorted(unknown)}; use temperature, "
                             "top_p, max_new_tokens, seed")
        params = SamplingParams(
            n=int(n), temperature=float(sampling.get("temperature", 1.0)),
            top_p=float(sampling.get("top_p", 1.0)),
            max_tokens=int(sampling.get("max_new_tokens", 256)), logprobs=0,
            seed=sampling.get("seed"), detokenize=False)
        prepared = [self.builder.prepare(s, mode) for s in samples]
        outs = self._run([p.engine_input() for p in prepared], params)
        return [PromptRollouts(sample_id=p.sample_id, mode=mode,
                               prompt_token_ids=list(out.prompt_token_ids),
                               rollouts=[self._rollout(c) for c in out.outputs],
                               weights_version=self.receiver.version)
                for p, out in zip(prepared, outs)]

    def _rollout(self, completion: Any) -> Rollout:
        ids = list(completion.token_ids)
        if completion.logprobs is None or len(completion.logprobs) != len(ids):
            raise RuntimeError("vLLM returned no logprob for some sampled token")
        logprobs = [entry[tok].logprob for entry, tok in zip(completion.logprobs, ids)]
        kept, kept_logprobs = strip_tokens(ids, logprobs, self.builder.vision_token_ids)
        # The text is by definition the decoding of the returned ids (vLLM's incremental
        # detokenizer, switched off, holds back a trailing partial UTF-8 character).
        text = self.builder.tokenizer.decode(kept, skip_special_tokens=True)
        return Rollout(text=text, token_ids=kept, logprobs=kept_logprobs,
                       finish_reason=str(completion.finish_reason),
                       stripped_tokens=len(ids) - len(kept))


def strip_tokens(token_ids: list[int], logprobs: list[float],
                 forbidden: frozenset[int] | set[int]) -> tuple[list[int], list[float]]:
    """Drop `forbidden` tokens (image placeholders) from a completion with their logprobs."""
    if len(token_ids) != len(logprobs):
        raise ValueError(f"{len(token_ids)} tokens but {len(logprobs)} logprobs")
    keep = [i for i, tok in enumerate(token_ids) if tok not in forbidden]
    return [token_ids[i] for i in keep], [logprobs[i] for i in keep]


def start_engine_actor(cls: type, settings: EngineSettings, name: str, num_cpus: float,
                       num_gpus: float = 0.0, max_restarts: int = 4, **kwargs: Any) -> Any:
    """Start `cls` (an EngineHost subclass) as a named Ray actor; returns its handle.

    `max_restarts` lets Ray bring a dead engine back (EngineGroup re-sends its work); task
    retries stay off so that no call reaches a restarted engine before its weights are.
    """
    import ray

    return ray.remote(cls).options(
        name=name, num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts,
        max_task_retries=0, max_concurrency=1).remote(settings, **kwargs)


def start_rollout_engine(settings: EngineSettings, index: int, num_cpus: float,
                         num_gpus: float = 0.0, max_restarts: int = 4) -> Any:
    """Rollout engine `index` as the Ray actor "rollout-engine-<index>", bound to CPU slot
    `index` and seeded with settings.seed + index."""
    settings = replace(settings, cpu_slot=index if settings.cpu_slot is None else
                       settings.cpu_slot, seed=settings.seed + index)
    return start_engine_actor(RolloutEngine, settings, f"rollout-engine-{index}", num_cpus,
                              num_gpus, max_restarts)


def wait_ready(handles: list[Any], timeout_s: float) -> list[dict]:
    """ready() of every handle, or a clear error when Ray cannot place them in time."""
    import ray

    start = time.perf_counter()
    try:
        return ray.get([h.ready.remote() for h in handles], timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(
            f"{len(handles)} engine actor(s) not ready after {time.perf_counter() - start:.0f}s."
            " Ray may lack the CPUs/GPUs they ask for (check `ray status`; on a small "
            "machine use fractional num_cpus or start Ray with more logical CPUs)") from None
