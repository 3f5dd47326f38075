"""EngineHost: one vLLM engine inside a Ray actor, with its prompt builder and weights.

`EngineHost` holds what every vLLM-backed actor needs (the engine, the prompt builder, the
weight receiver, CPU thread binding); `RolloutEngine` (actors/rollout_engine.py) adds
generation and `ScoringActor` (actors/scoring_actor.py) teacher forcing. Everything
vLLM-specific happens inside the actor process: environment variables are set before
vLLM is imported.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from actors.adapter_loader import AdapterLoader, vllm_lora_kwargs
from actors.engine_settings import EngineSettings, cpu_cores_for, engine_env
from model_inputs.prompting import PromptBuilder
from weight_sync.lora import adapter_shapes
from weight_sync.receiver import WeightReceiver, WeightSpec, WeightUpdateError, weight_spec
from weight_sync.transport import make_transport

ENGINE_DEAD_EXIT = 75   # the actor's exit status when its vLLM engine core has died


class OncePerKind(logging.Filter):
    """Lets each warning (logger and message template) through once. In-process on CPU,
    vLLM's renderer sets torch's thread count around every multimodal request and the CPU
    worker, which forbids that after binding threads, warns twice per request; the weight
    reload warns per push about layers it rebuilds. One line each is enough."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        kind = (record.name, str(record.msg))
        if kind in self.seen:
            return False
        self.seen.add(kind)
        return True


def warn_once_per_kind(logger_name: str = "vllm") -> None:
    """Install OncePerKind on the handlers of `logger_name` (vLLM logs through its own
    handler, without propagating), once per process."""
    for handler in logging.getLogger(logger_name).handlers:
        if not any(isinstance(f, OncePerKind) for f in handler.filters):
            handler.addFilter(OncePerKind())


class EngineHost:
    """A vLLM engine with its prompt builder and weight receiver (one per actor process)."""

    role = "engine"

    def __init__(self, settings: EngineSettings):
        self.settings = settings
        self.last_run_s = 0.0   # seconds of the latest vLLM call (_run)
        self.cores = self._bind_cpu() if not settings.use_gpu else None
        os.environ.update(engine_env(settings, self.cores))
        from vllm import LLM

        self.builder = PromptBuilder(settings.model_path, settings.min_pixels,
                                     settings.max_pixels, settings.prompts,
                                     settings.trust_remote_code)
        kwargs: dict[str, Any] = {}
        if settings.use_gpu:
            kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization
        if settings.sleep_mode:   # vLLM refuses it on CPU, where sleep only pauses
            kwargs["enable_sleep_mode"] = True
        if settings.lora:
            kwargs.update(vllm_lora_kwargs(settings))
        self.llm = LLM(
            model=settings.model_path, dtype=settings.dtype,
            max_model_len=settings.max_model_len, enforce_eager=settings.enforce_eager,
            tensor_parallel_size=settings.tensor_parallel_size, seed=settings.seed,
            trust_remote_code=settings.trust_remote_code, enable_prefix_caching=True,
            worker_extension_cls="actors.worker_extension.WeightLoadExtension",
            limit_mm_per_prompt={"image": settings.max_images_per_prompt},
            mm_processor_kwargs={"min_pixels": settings.min_pixels,
                                 "max_pixels": settings.max_pixels},
            **kwargs)
        warn_once_per_kind()   # after LLM(): vLLM configures its logging on engine start
        if settings.multiprocessing:
            self._watch_engine_core()
        # LoRA: pushes carry the adapter, which actors.adapter_loader serves.
        self.adapter = AdapterLoader(self, settings) if settings.lora else None
        spec = (WeightSpec(adapter_shapes(settings.model_path, settings.lora,
                                          settings.trust_remote_code))
                if settings.lora else weight_spec(settings.model_path, settings.trust_remote_code))
        self.receiver = WeightReceiver(spec, engine=self.adapter or self,
                                       source=make_transport(settings.weights_transport),
                                       direct=self if self.takes_pushes_in_worker else None)
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
        self.reset_caches()

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
    def reset_caches(self) -> None:
        # Without the encoder-cache reset the engine dies with "Encoder cache miss".
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()
        if self.llm.reset_prefix_cache() is False:
            raise RuntimeError("vLLM did not reset its prefix cache (requests in flight?)")

    # The receiver's load session (weight_sync.receiver.EngineLoader), run through the
    # worker extension (actors/worker_extension.py) by method name.
    def begin(self) -> None:
        """Start a load session: the next parts replace the weights layer by layer."""
        self._engine_call(self.llm.collective_rpc, "begin_bucket_session")

    def load_part(self, tensors: list[tuple[str, Any]]) -> None:
        """Load one bucket (the session processes each layer once it is complete)."""
        if self.settings.multiprocessing:
            # Tensors cannot cross into vLLM's worker process as RPC arguments; bytes can.
            from safetensors.torch import save as save_blob

            part: Any = save_blob({n: t.detach().cpu().contiguous() for n, t in tensors})
        else:
            part = tensors
        self._engine_call(self.llm.collective_rpc, "load_bucket_part", args=(part,))

    def finish(self) -> None:
        """End the session (also after a failure: untouched layers keep their weights)."""
        self._engine_call(self.llm.collective_rpc, "end_bucket_session")
        self.reset_caches()

    def load_initial(self) -> None:
        """The model's own files again (version 0)."""
        self._engine_call(self.llm.collective_rpc, "reload_weights",
                          kwargs={"is_checkpoint_format": True})
        self.reset_caches()

    @property
    def takes_pushes_in_worker(self) -> bool:
        """Whether a collective push is taken inside vLLM's worker (`receive`): one worker
        (tensor parallel 1), full weights. Several workers would each need a rank of the
        group, and a LoRA adapter is written to a folder for vLLM's LoRA loader: those
        take it here and load it through the RPC."""
        return (self.settings.weights_transport == "collective"
                and self.settings.tensor_parallel_size == 1 and not self.settings.lora)

    # weight_sync.receiver.DirectIntake: the worker is the group member.
    def receive(self, push: Any, spec: WeightSpec, totals: dict[str, int]) -> None:
        """Have vLLM's worker join the push's group and load the buckets where they land
        (actors/worker_extension.py); raise as the receiver's own load would."""
        shapes = {name: list(shape) for name, shape in spec.shapes.items()}
        got = self._engine_call(self.llm.collective_rpc, "receive_weights",
                                args=(dict(push), shapes, sorted(spec.optional)))[0]
        totals.update({k: int(got[k]) for k in ("bytes", "tensors", "buckets", "loaded")
                       if k in got})
        if got.get("loaded"):
            self.reset_caches()
        if "error" in got:
            raise (WeightUpdateError if got["refused"] else RuntimeError)(got["error"])

    def drain(self, push: Any) -> None:
        """Take a refused push in the worker, loading nothing."""
        self._engine_call(self.llm.collective_rpc, "drain_weights", args=(dict(push),))

    def weights_group(self) -> dict:
        """The worker's end of the weights group (pid, groups joined), for checks."""
        return self._engine_call(self.llm.collective_rpc, "weights_group")[0]

    def update_weights(self, version: int, push: Any) -> dict:
        """Load a weight push (weight_sync/receiver.py: streamed bucket by bucket, all or
        nothing, versions increase)."""
        return self.receiver.update(version, push)

    def weights_version(self) -> int:
        """The version of the loaded weights (0 = the model's files)."""
        return self.receiver.version

    def ready(self) -> dict:
        """Liveness and identity: role, pid, bound cores, weights version."""
        return {"role": self.role, "pid": os.getpid(), "cores": self.cores,
                "version": self.receiver.version}

    # --- GPU sharing (placement.colocate, driver.gpu_sharing) ---------------------------
    def sleep(self) -> bool:
        """Give the GPU to the learner: vLLM's sleep level 1 (weights to host memory, KV
        cache dropped; level 2 would drop the weights, which a failed push would then leave
        unknown). On CPU vLLM moves nothing and only pauses its scheduler. Returns vLLM's
        is_sleeping. The GPU path is vLLM 0.32's `LLM.sleep`, read in its source, not yet
        run on a GPU."""
        self._engine_call(self.llm.sleep, level=1)
        return self.is_sleeping()

    def wake_up(self, tags: list[str] | None = None) -> bool:
        """Take the GPU back: ["weights"] first (a push loads into them), ["kv_cache"]
        after the learner has freed the GPU; None: both. Returns whether fully awake."""
        return bool(self._engine_call(self.llm.wake_up, tags))

    def is_sleeping(self) -> bool:
        """vLLM's own answer (kept out of ready(), which must answer without the engine)."""
        return bool(self._engine_call(self.llm.llm_engine.is_sleeping))

    # --- engine calls ----------------------------------------------------------------
    def _run(self, prompts: list[dict], params: Any) -> list[Any]:
        """vLLM's generate on `prompts`; its wall seconds are kept in `last_run_s` (the
        results report them, so the driver can tell model work from overhead)."""
        self.receiver.assert_usable()
        start = time.perf_counter()
        try:
            return self._engine_call(self.llm.generate, prompts, params, use_tqdm=False,
                                     lora_request=self.adapter.request if self.adapter else None)
        finally:
            self.last_run_s = time.perf_counter() - start

    def _watch_engine_core(self, period_s: float = 1.0, find_timeout_s: float = 60.0) -> None:
        """Exit this actor when a vLLM engine core process (a child, in multiprocess mode)
        is gone. vLLM notices the death too, but a call already waiting for the core's
        output then waits forever; exiting lets Ray restart the actor with a new engine."""
        import threading

        import psutil

        def is_core(proc: psutil.Process) -> bool:
            try:   # vLLM titles the process "VLLM::EngineCore..." (setproctitle)
                return "EngineCore" in " ".join([proc.name(), *proc.cmdline()])
            except psutil.Error:
                return False

        def alive(proc: psutil.Process) -> bool:
            # vLLM's own monitor reaps a dead core: a zombie seen by is_running() may be
            # gone by status(), whose NoSuchProcess would end this thread unnoticed and
            # leave the actor waiting forever.
            try:
                return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        def watch() -> None:
            # The core titles itself with setproctitle, which may come after the engine
            # is up (seen under load: no title yet when looked at once, so nothing was
            # watched and a killed core left calls waiting forever): look for a while.
            cores: list[psutil.Process] = []
            deadline = time.monotonic() + find_timeout_s
            while not cores and time.monotonic() < deadline:
                cores = [p for p in psutil.Process().children(recursive=True) if is_core(p)]
                if not cores:
                    time.sleep(period_s)
            if not cores:
                logging.getLogger("refine_iqa").warning(
                    "%s: no vLLM engine core process found to watch", self.role)
                return
            while all(alive(core) for core in cores):
                time.sleep(period_s)
            logging.getLogger("refine_iqa").error(
                "%s: a vLLM engine core process died; exiting so that Ray restarts this "
                "actor", self.role)
            os._exit(ENGINE_DEAD_EXIT)

        threading.Thread(target=watch, name="engine-core-watch", daemon=True).start()

    def _engine_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call into vLLM; when its engine core process has died (vLLM's EngineDeadError,
        unrecoverable in place) this whole actor exits, so that Ray restarts it with a new
        engine and the caller sees an actor death, which EngineGroup and WeightSync
        recover from (weights replayed, work redone)."""
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            return fn(*args, **kwargs)
        except EngineDeadError:
            logging.getLogger("refine_iqa").error(
                "%s: the vLLM engine core died; exiting so that Ray restarts this actor",
                self.role)
            os._exit(ENGINE_DEAD_EXIT)

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


def start_engine_actor(cls: type, settings: EngineSettings, name: str, num_cpus: float,
                       num_gpus: float = 0.0, max_restarts: int = 4,
                       placement: dict | None = None, **kwargs: Any) -> Any:
    """Start `cls` (an EngineHost subclass) as a named Ray actor; returns its handle.

    `max_restarts` lets Ray bring a dead engine back (WeightSync replays its weights, the
    caller redoes its work); task retries stay off so that no call reaches a restarted
    engine before its weights are. `placement`: actor options from cluster.placement (a
    placement-group bundle, where a restarted actor comes back; colocated, also the GPU
    share asked for instead of `num_gpus`).
    """
    import ray

    return ray.remote(cls).options(**{
        "name": name, "num_cpus": num_cpus, "num_gpus": num_gpus,
        "max_restarts": max_restarts, "max_task_retries": 0, "max_concurrency": 1,
        **(placement or {})}).remote(settings, **kwargs)


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
