"""One learner rank: a transformers model under DeepSpeed, run inside a Ray actor.

`LearnerWorker` is a plain class; learner/group.py wraps it with `ray.remote` and names
each actor `learner-<rank>`. All methods that touch parameters (train_step,
compute_logprobs, publish_weights, save/load/export) are collectives under ZeRO: the group
calls them on every rank together.

Devices: conf `learner.num_gpus` decides. A rank without a GPU hides every GPU of its node
(CUDA_VISIBLE_DEVICES empty, DeepSpeed's accelerator forced to `cpu`: Ray no longer hides
them from an actor that asks for none) and runs the `cpu` accelerator and gloo, as the
tests and conf=tiny do. Torch's threads follow the rank's CPUs (OMP_NUM_THREADS, which Ray
sets from learner.num_cpus), on CPU and GPU alike: with ZeRO offload, DeepSpeed's CPU Adam
updates on them. The CUDA path (nccl backend, ZeRO-3 with CPU offload as in Table 7,
bf16) is written against DeepSpeed's documented config and `init_distributed`; it has not
been run on a GPU yet (the tests run the CPU path only).
"""

from __future__ import annotations

import functools
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from learner import checkpoint as ckpt
from learner.ds_config import build_ds_config, lr_multiplier, states_can_move, warmup_steps
from learner.experience import MicroBatch, collate, loss_units
from learner.image_inputs import StepImageInputs
from learner.loss import policy_loss
from learner.model_setup import (
    load_policy,
    make_optimizer,
    make_reference,
    skip_shm_comm_build,
    special_token_ids,
)
from weight_sync import lora
from weight_sync.buckets import bucket_nbytes, iter_gathered_buckets
from weight_sync.group import join_world, listen_on
from weight_sync.transport import make_transport

TOKEN_WEIGHTED_STATS = ("clip_frac", "approx_kl", "ratio_mean", "entropy")
UNIT_WEIGHTED_STATS = ("loss", "pg_loss", "kl_ref")
STORE_TIMEOUT_S = 600.0   # ranks that do not all join the world within this fail setup


def peak_memory_gb(accelerator: str) -> float:
    """This rank's peak memory so far, in GB (1e9 bytes): the GPU's allocated memory on
    cuda (torch's counter), the process's peak resident size on cpu."""
    if accelerator == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9   # KiB on Linux


class LearnerWorker:
    """One DeepSpeed rank of the learner (see module docstring)."""

    def __init__(self, conf: dict, rank: int, world_size: int, model_path: str, total_steps: int):
        self.conf = conf
        self.rank = rank
        self.world_size = world_size
        self.model_path = str(model_path)
        self.total_steps = int(total_steps)
        self.engine: Any = None
        self.ref_engine: Any = None       # the KL reference model, when one is loaded
        self.ref_is_base = False          # LoRA: the reference is the adapter switched off
        self._hf_ds_config: Any = None  # must stay alive while ZeRO-3 is in use (load_policy)
        self._builder: Any = None
        self._store_listener: Any = None     # rank 0: the world store's bound socket
        self._weights_listener: Any = None   # rank 0: a new weights group's store socket
        self._weights_transport: Any = None  # rank 0: keeps the collective group between pushes

    # -- rendezvous -------------------------------------------------------------------
    def node_info(self) -> dict[str, str]:
        """This actor's Ray node id and IP, for the driver's rendezvous."""
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(),
                "ip": ray.util.get_node_ip_address()}

    def pick_port(self, host: str) -> int:
        """Rank 0: open the torch.distributed store's socket on `host` (its node address,
        127.0.0.1 when every rank shares the node; never all interfaces) and return its
        port. The socket stays open until `setup` hands it to the store."""
        self._store_listener = listen_on(host)
        return int(self._store_listener.getsockname()[1])

    def setup(self, master_addr: str, master_port: int) -> dict[str, Any]:
        """Join the DeepSpeed world, load the model, build optimizer and schedule."""
        os.environ.update({
            "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port),
            "RANK": str(self.rank), "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": "0",  # Ray shows each GPU actor only its own device(s)
        })
        if not self.conf["learner"]["num_gpus"]:   # before torch or DeepSpeed look for CUDA
            os.environ.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        # DeepSpeed calls torch collectives that torch 2.13 marks deprecated, once per
        # gather: thousands of identical lines in the actor logs on the dashboard.
        warnings.filterwarnings(
            "ignore", category=FutureWarning,
            message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)`")
        accel = get_accelerator()
        self.accelerator = "cuda" if accel.device_name() == "cuda" else "cpu"
        torch.set_num_threads(max(1, int(float(os.environ.get("OMP_NUM_THREADS") or 1))))
        if self.accelerator == "cpu":
            skip_shm_comm_build()
        else:
            accel.set_device(0)
        # torch.distributed's world first, its store bound to rank 0's node address
        # (DeepSpeed's env:// init would listen on every interface); DeepSpeed adopts it.
        join_world(master_addr, master_port, self.rank, self.world_size,
                   accel.communication_backend_name(), STORE_TIMEOUT_S, self._store_listener)
        self._store_listener = None
        deepspeed.init_distributed(dist_backend=accel.communication_backend_name(),
                                   auto_mpi_discovery=False)
        train, learner = self.conf["train"], self.conf["learner"]
        torch.manual_seed(self.conf["run"]["seed"] + self.rank)
        ds_config = build_ds_config(train, learner, self.world_size, self.accelerator)
        self.zero_stage = learner["zero_stage"]
        self.compute_dtype = torch.bfloat16 if train["precision"] == "bf16" else torch.float32
        model, self._hf_ds_config = load_policy(self.conf, self.model_path, self.compute_dtype,
                                                self.zero_stage, ds_config)
        self.image_token_id, self.video_token_id, self.pad_token_id = special_token_ids(
            self.model_path)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(self.conf, params, ds_config)
        warm = warmup_steps(self.total_steps, train["warmup_ratio"])
        schedule = functools.partial(lr_multiplier, total_steps=self.total_steps, warmup=warm,
                                     schedule=train["lr_schedule"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config,
            dist_init_required=False)
        self.device = self.engine.device
        self.states_move = states_can_move(ds_config, self.accelerator)
        # The KL term's reference is the starting policy. With LoRA that is the policy with
        # its adapter switched off (the adapter starts at zero: the base model exactly), so
        # no second model is loaded; otherwise a frozen copy.
        self.ref_is_base = train["kl_coef"] > 0 and lora.enabled(self.conf["lora"])
        if train["kl_coef"] > 0 and not self.ref_is_base:
            self.ref_engine = make_reference(self.conf, self.model_path, self.compute_dtype,
                                             self.zero_stage, ds_config, self.device)
        return {"rank": self.rank, "accelerator": self.accelerator,
                "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "threads": torch.get_num_threads(),
                "trainable_params": sum(int(getattr(p, "ds_numel", p.numel())) for p in params),
                "warmup_steps": warm,
                "kl_reference": ("adapter off" if self.ref_is_base else
                                 "model" if self.ref_engine is not None else None)}

    # -- forward ----------------------------------------------------------------------
    def _forward_logprobs(
        self, module: Any, batch: dict[str, torch.Tensor], want_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, T] logprobs of the completion tokens (and their entropy, without gradient)."""
        kwargs = {k: batch[k].to(self.device) for k in
                  ("input_ids", "attention_mask", "mm_token_type_ids")}
        if "pixel_values" in batch:
            kwargs["pixel_values"] = batch["pixel_values"].to(self.device, self.compute_dtype)
            kwargs["image_grid_thw"] = batch["image_grid_thw"].to(self.device)
        logits = module(**kwargs, use_cache=False).logits
        rows = torch.arange(logits.shape[0], device=logits.device).unsqueeze(1)
        # Only the positions that predict completion tokens, in float32 for the softmax.
        selected = logits[rows, batch["logit_positions"].to(self.device)].float()
        log_norm = torch.logsumexp(selected, dim=-1)
        targets = batch["completion_ids"].to(self.device).unsqueeze(-1)
        logp = selected.gather(-1, targets).squeeze(-1) - log_norm
        entropy = None
        if want_entropy:
            with torch.no_grad():
                entropy = log_norm - (torch.softmax(selected, dim=-1) * selected).sum(-1)
        return logp, entropy

    def _prompt_builder(self) -> Any:
        """The prompt builder the engines use (made on first use)."""
        if self._builder is None:
            from model_inputs.prompting import PromptBuilder

            model = self.conf["model"]
            self._builder = PromptBuilder(self.model_path, model["min_pixels"],
                                          model["max_pixels"], self.conf.get("prompts"),
                                          model["trust_remote_code"])
        return self._builder

    def _collate(self, micro: MicroBatch, images: StepImageInputs) -> dict[str, torch.Tensor]:
        return collate(micro.samples, self.pad_token_id, self.image_token_id,
                       self.video_token_id, images.of(micro))

    # -- training ---------------------------------------------------------------------
    def train_step(self, micro_batches: list[MicroBatch], total_units: float) -> dict[str, float]:
        """Forward/backward every micro-batch, then one optimizer step.

        Each micro-batch loss (a mean over its own tokens or sequences) is weighted by
        units_m / total_units * world_size, so that after DeepSpeed averages gradients over
        ranks the update is the one of the loss averaged over the whole global batch, for
        any split into ranks and micro-batches. Returns partial sums the group combines.
        The images of later micro-batches are prepared while earlier ones run
        (learner/image_inputs.py).
        """
        with StepImageInputs(self._prompt_builder, micro_batches) as images:
            stats = self._train_micro_batches(micro_batches, total_units, images)
        return {**stats, "peak_memory_gb": peak_memory_gb(self.accelerator)}

    def _train_micro_batches(self, micro_batches: list[MicroBatch], total_units: float,
                             images: StepImageInputs) -> dict[str, float]:
        train = self.conf["train"]
        agg = train["loss_agg"]
        recompute = self.conf["learner"]["recompute_old_logprobs"]
        sums: dict[str, float] = {"tokens": 0.0, "ratio_max": 0.0}
        timings = {"forward_s": 0.0, "backward_s": 0.0}
        self.engine.train()
        for micro in micro_batches:
            batch = self._collate(micro, images)
            start = time.perf_counter()
            logp_new, entropy = self._forward_logprobs(self.engine, batch, want_entropy=True)
            logp_ref = None
            if self.ref_engine is not None:
                with torch.no_grad():
                    logp_ref, _ = self._forward_logprobs(self.ref_engine, batch, False)
            elif self.ref_is_base:
                with torch.no_grad(), self.engine.module.disable_adapter():
                    logp_ref, _ = self._forward_logprobs(self.engine, batch, False)
            mask = batch["completion_mask"].to(self.device)
            # The weights do not change inside a step, so "recomputed" old logprobs are this
            # very forward's values: rho = 1 exactly, without a second pass.
            logp_old = logp_new.detach() if recompute else batch["old_logprobs"].to(self.device)
            loss, stats = policy_loss(
                logp_new, logp_old, batch["advantages"].to(self.device), mask,
                clip_eps=train["clip_eps"], agg=agg, kl_coef=train["kl_coef"],
                logp_ref=logp_ref, token_entropy=entropy)
            units = float(loss_units(micro.samples, agg)) if micro.active else 0.0
            share = units / total_units if total_units > 0 else 0.0
            timings["forward_s"] += time.perf_counter() - start
            start = time.perf_counter()
            self.engine.backward(loss * (share * self.world_size), scale_wrt_gas=False)
            timings["backward_s"] += time.perf_counter() - start
            if not micro.active:
                continue
            tokens = stats["num_tokens"]
            sums["tokens"] += tokens
            sums["ratio_max"] = max(sums["ratio_max"], stats["ratio_max"])
            for key in UNIT_WEIGHTED_STATS:
                if key in stats:
                    sums[key] = sums.get(key, 0.0) + stats[key] * share
            for key in TOKEN_WEIGHTED_STATS:
                if key in stats:
                    sums[key] = sums.get(key, 0.0) + stats[key] * tokens
        lr = float(self.engine.optimizer.param_groups[0]["lr"])
        start = time.perf_counter()
        self.engine.step()
        timings["optimizer_s"] = time.perf_counter() - start
        norm = self.engine.get_global_grad_norm()
        return {**sums, **timings, "lr": lr,
                "grad_norm": float(norm) if norm is not None else float("nan"),
                "global_step": float(self.engine.global_steps)}

    @torch.no_grad()
    def compute_logprobs(self, micro_batches: list[MicroBatch]) -> list[tuple[int, list[float]]]:
        """(sequence index, logprob of each completion token) under the current weights."""
        out = []
        with StepImageInputs(self._prompt_builder, micro_batches) as images:
            for micro in micro_batches:
                logp, _ = self._forward_logprobs(self.engine, self._collate(micro, images),
                                                 want_entropy=False)
                if not micro.active:
                    continue
                for row, (index, sample) in enumerate(zip(micro.indices, micro.samples)):
                    out.append((index, logp[row, : len(sample.completion_ids)].cpu().tolist()))
        return out

    # -- weights ----------------------------------------------------------------------
    def _buckets(self, bucket_bytes: int, adapter_only: bool = False):
        """Gathered buckets of the full state dict, or of the adapter's tensors alone
        (LoRA: what a push carries, under peft's saved names). With LoRA, the full state
        dict comes merged (base + adapter, the base model's names), a layer's parts kept
        in one bucket to be merged there."""
        module = self.engine.module
        gather = functools.partial(iter_gathered_buckets, module, bucket_bytes,
                                   zero3=self.zero_stage == 3, keep=self.rank == 0)
        if adapter_only:
            return gather(entries=lora.adapter_parameters(module))
        if not lora.enabled(self.conf["lora"]):
            return gather()
        return (lora.merged_state_dict(b, self.conf["lora"]) if b else b
                for b in gather(unit=lora.module_of))

    def open_weight_session(self, host: str) -> int:
        """Rank 0, collective transport: open a new weights group's store socket on `host`
        (this node's address) and return its port; the next `publish_weights` serves on it
        and keeps the group for the pushes after it."""
        self._weights_listener = listen_on(host)
        return int(self._weights_listener.getsockname()[1])

    def publish_weights(self, push: dict | None = None) -> tuple[list[Any], dict[str, float]]:
        """Gather the full weights (every rank: a collective under ZeRO-3) and send them
        from rank 0 through conf `weights.transport`, bucket by bucket as gathered:
        object store, `push` None: rank 0 returns the bucket refs; collective, `push` the
        group's rendezvous (WeightSync starts the receivers at the same time): the buckets
        are broadcast and rank 0 returns no handles. Rank 0 also returns {bytes, buckets,
        gather_s}; the other ranks ([], {})."""
        weights = self.conf["weights"]
        bucket_bytes = int(weights["bucket_mb"] * 2**20)
        adapter = lora.pushes_adapter(self.conf["lora"])
        start = time.perf_counter()
        if self.rank != 0:
            for _ in self._buckets(bucket_bytes, adapter):
                pass
            return [], {}
        counts = {"bytes": 0.0, "buckets": 0.0}

        def counted():
            for bucket in self._buckets(bucket_bytes, adapter):
                counts["bytes"] += bucket_nbytes(bucket)
                counts["buckets"] += 1
                yield bucket

        if self._weights_transport is None:
            self._weights_transport = make_transport(str(weights["transport"]))
        transport = self._weights_transport
        if transport.live:
            if push is None:
                raise RuntimeError("the collective transport needs a push from WeightSync")
            listener, self._weights_listener = self._weights_listener, None
            buckets = counted()
            try:
                transport.send(buckets, push, listener)
            finally:   # a failed send: the other ranks would wait in the next gather
                for _ in buckets:
                    pass
            handles: list[Any] = []
        else:
            handles = transport.publish(counted())
        return handles, {**counts, "gather_s": time.perf_counter() - start}

    def _gathered_state(self, adapter_only: bool) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for bucket in self._buckets(int(self.conf["weights"]["bucket_mb"] * 2**20),
                                    adapter_only):
            state.update(bucket)
        return state

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The full weights as CPU tensors on rank 0 ({} elsewhere), a LoRA adapter merged
        into the base weights (weight_sync.lora.merged_state_dict); all ranks must call."""
        return self._gathered_state(False)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA: the adapter's tensors under peft's saved names on rank 0 ({} elsewhere)."""
        return self._gathered_state(True)

    # -- checkpoints ------------------------------------------------------------------
    def export_hf(self, directory: str, adapter_only: bool = False) -> None:
        """save_pretrained of the full weights plus tokenizer/processor files (rank 0).
        LoRA: the adapter merged in, and the adapter itself in `adapter/` (peft's format);
        `adapter_only` writes that folder alone (a checkpoint's: adapter-sized)."""
        directory_path = Path(directory)
        if lora.enabled(self.conf["lora"]):
            adapter = self.adapter_state_dict()
            if self.rank == 0:
                lora.write_adapter(directory_path / ckpt.ADAPTER_DIR, self.conf["lora"],
                                   self.model_path, adapter)
            if adapter_only:
                return
        state = self.full_state_dict()
        if self.rank != 0:
            return
        directory_path.mkdir(parents=True, exist_ok=True)
        module = self.engine.module
        base = module.get_base_model() if hasattr(module, "get_base_model") else module
        base.save_pretrained(directory_path, state_dict=state)
        if Path(self.model_path).is_dir():
            ckpt.copy_processor_files(self.model_path, directory_path)
        else:
            from transformers import AutoProcessor

            AutoProcessor.from_pretrained(self.model_path).save_pretrained(directory_path)

    def save_state(self, directory: str) -> None:
        """DeepSpeed state (every rank writes its shard) and this rank's RNG state."""
        directory_path = Path(directory)
        # LoRA: the frozen base weights are the model's files; the state is adapter-sized.
        self.engine.save_checkpoint(str(directory_path / ckpt.DEEPSPEED_DIR), tag=ckpt.DEEPSPEED_TAG,
                                    exclude_frozen_parameters=lora.enabled(self.conf["lora"]))
        rng_dir = directory_path / ckpt.RNG_DIR
        rng_dir.mkdir(parents=True, exist_ok=True)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, rng_dir / f"rank_{self.rank:05d}.pt")

    def load_state(self, directory: str) -> dict[str, float]:
        """Restore model, optimizer, scheduler, step and RNG from a checkpoint folder."""
        directory_path = Path(directory)
        load_path, _ = self.engine.load_checkpoint(
            str(directory_path / ckpt.DEEPSPEED_DIR), tag=ckpt.DEEPSPEED_TAG,
            load_optimizer_states=True, load_lr_scheduler_states=True,
            load_module_strict=not lora.enabled(self.conf["lora"]))
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed state under {directory_path}")
        rng_file = directory_path / ckpt.RNG_DIR / f"rank_{self.rank:05d}.pt"
        if rng_file.is_file():
            rng = torch.load(rng_file, weights_only=True)
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        return {"global_step": float(self.engine.global_steps)}

    def offload_states(self) -> bool:
        """Colocated (driver.gpu_sharing): free the GPU for the vLLM engines; returns
        whether anything moved (learner.ds_config.states_can_move). The CUDA call is
        DeepSpeed 0.19.8's `DeepSpeedEngine.offload_states`, read in its source, not yet
        run on a GPU; on CPU this is a no-op, which the CPU tests take."""
        if self.states_move:
            self.engine.offload_states()
        return self.states_move

    def reload_states(self) -> bool:
        """The states back on the GPU before an update or a checkpoint (see offload_states)."""
        if self.states_move:
            self.engine.reload_states()
        return self.states_move

    def barrier(self) -> None:
        """torch.distributed barrier across the learner ranks."""
        import torch.distributed as dist

        dist.barrier()
