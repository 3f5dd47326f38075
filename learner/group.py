"""LearnerGroup: W learner actors forming one DeepSpeed world, driven from the loop.

    group = LearnerGroup(cfg, total_steps=100, model_path=path)   # conf train, learner, ...
    stats = group.step(prompt_groups)                   # one optimizer step
    sync.publish(group)                                 # WeightSync takes publish_weights()
    group.save_checkpoint(run_dir, step=10, trainer_state={...})
    state = group.load_checkpoint(run_dir)              # newest complete, or None

Rendezvous: the driver asks rank 0 for a free port on its node and sets MASTER_ADDR /
MASTER_PORT / RANK / WORLD_SIZE / LOCAL_RANK in every actor before
`deepspeed.init_distributed` (gloo on CPU, nccl on GPU). MASTER_ADDR is 127.0.0.1 when all
ranks share a node, else rank 0's node address; the store listens on that address only.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from learner import checkpoint as ckpt
from learner.experience import (
    PromptGroup,
    flatten_groups,
    loss_units,
    split_for_ranks,
)
from learner.learner_actor import TOKEN_WEIGHTED_STATS, UNIT_WEIGHTED_STATS, LearnerWorker
from weight_sync import lora
from weight_sync.group import KeptGroup
from weight_sync.transport import TRANSPORTS, collective_backend


def _plain_conf(cfg: Any) -> dict:
    """An omegaconf tree (or a dict) as a plain, picklable dict."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(cfg)


class _CheckpointFiles:
    """File operations of a checkpoint, run by rank 0 (which sees the run directory even
    when the driver sits on another machine)."""

    def begin_checkpoint(self, run_dir: str, step: int) -> str:
        root = ckpt.checkpoint_root(run_dir)
        root.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_tmp(root)
        tmp = ckpt.tmp_dir_for(root, step)
        tmp.mkdir()
        return str(tmp)

    def end_checkpoint(
        self, tmp: str, step: int, trainer_state: dict, keep_last: int, meta: dict
    ) -> str:
        tmp_path = Path(tmp)
        ckpt.write_trainer_state(tmp_path, trainer_state)
        final = ckpt.finalize(tmp_path, tmp_path.parent / ckpt.step_dir_name(step), meta)
        ckpt.prune(tmp_path.parent, keep_last)
        return str(final)

    def newest_checkpoint(self, run_dir: str) -> tuple[str, dict] | None:
        found = ckpt.newest_resumable(ckpt.checkpoint_root(run_dir))
        return (str(found[0]), found[1]) if found else None

    def clear_dir(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def publish_dir(self, tmp: str, final: str, meta: dict) -> str:
        return str(ckpt.finalize(Path(tmp), Path(final), meta))


class Learner(LearnerWorker, _CheckpointFiles):
    """The actor class (the Ray dashboard lists actors by class and name): a DeepSpeed rank
    plus rank 0's checkpoint file operations."""


class LearnerGroup:
    """W Ray actors `learner-0..W-1`, one DeepSpeed world (conf learner.num_learners)."""

    def __init__(
        self,
        cfg: Any,
        total_steps: int,
        model_path: str | Path,
        name_prefix: str = "learner",
        schedule_timeout_s: float = 300.0,
        placement: Any = None,
    ):
        import ray

        self.conf = _plain_conf(cfg)
        learner = self.conf["learner"]
        self.world_size = learner["num_learners"]
        self.model_path = str(model_path)
        actor_cls = ray.remote(Learner)
        self.actors = [
            actor_cls.options(**{
                "name": f"{name_prefix}-{rank}", "num_cpus": learner["num_cpus"],
                "num_gpus": learner["num_gpus"],
                # cluster.placement.Placement: rank r into its bundle (colocated, with the
                # share of the GPU it asks for instead of num_gpus)
                **(placement.options("learners", rank) if placement is not None else {}),
            }).remote(self.conf, rank, self.world_size, self.model_path, total_steps)
            for rank in range(self.world_size)
        ]
        info_refs = [a.node_info.remote() for a in self.actors]
        _, pending = ray.wait(info_refs, num_returns=len(info_refs), timeout=schedule_timeout_s)
        if pending:
            self.shutdown()
            raise RuntimeError(
                f"{len(pending)} of {self.world_size} learner actors could not start within "
                f"{schedule_timeout_s:.0f} s: each asks for num_cpus={learner['num_cpus']} and "
                f"num_gpus={learner['num_gpus']} (conf learner.*), and the cluster has "
                f"{ray.available_resources()} free. Lower the requests or add resources."
            )
        infos = ray.get(info_refs)
        self.rank0_ip = str(infos[0]["ip"])
        self.weights_group = KeptGroup(self._open_weight_socket,
                                       collective_backend(self.conf),
                                       self.conf["weights"]["timeout_s"])
        same_node = len({i["node_id"] for i in infos}) == 1
        host = "127.0.0.1" if same_node else self.rank0_ip
        try:
            port = self.run_on_rank0("pick_port", host)
            self.setup_info = self.run_method("setup", host, port)
        except Exception:
            self.shutdown()  # a half-started world would hold its CPUs/GPUs for nothing
            raise

    # -- calling the ranks ------------------------------------------------------------
    def run_method(self, method: str, *args: Any) -> list[Any]:
        """Call `method` on every rank with the same arguments; the results in rank order
        (a rank's error is raised here)."""
        import ray

        return ray.get([getattr(a, method).remote(*args) for a in self.actors])

    def run_method_per_rank(self, method: str, args_per_rank: list[tuple]) -> list[Any]:
        """Call `method` on rank r with `args_per_rank[r]`; the results in rank order."""
        import ray

        return ray.get([getattr(a, method).remote(*args)
                        for a, args in zip(self.actors, args_per_rank, strict=True)])

    def run_on_rank0(self, method: str, *args: Any) -> Any:
        """Call `method` on rank 0 alone (file operations of checkpoints and exports)."""
        import ray

        return ray.get(getattr(self.actors[0], method).remote(*args))

    # -- training ---------------------------------------------------------------------
    def _split(self, groups: list[PromptGroup]):
        samples = flatten_groups(groups)
        micro = self.conf["train"]["micro_batch_size"]
        return samples, split_for_ranks(samples, self.world_size, micro)

    def step(self, groups: list[PromptGroup]) -> dict[str, float]:
        """One optimizer step on all `groups`; returns loss statistics, grad norm, lr,
        timings (step_s: wall seconds here; forward_s/backward_s/optimizer_s: the slowest
        rank's), and the counts of sequences and tokens."""
        agg = self.conf["train"]["loss_agg"]
        samples, per_rank = self._split(groups)
        total_units = float(loss_units(samples, agg))
        if total_units == 0:
            raise ValueError("every completion is empty: there is no token to train on")
        start = time.perf_counter()
        results = self.run_method_per_rank("train_step",
                                           [(part, total_units) for part in per_rank])
        step_s = time.perf_counter() - start
        tokens = sum(r["tokens"] for r in results)
        stats: dict[str, float] = {}
        for key in UNIT_WEIGHTED_STATS:
            if any(key in r for r in results):
                stats[key] = sum(r.get(key, 0.0) for r in results)
        for key in TOKEN_WEIGHTED_STATS:
            if any(key in r for r in results):
                stats[key] = sum(r.get(key, 0.0) for r in results) / max(tokens, 1.0)
        stats["ratio_max"] = max(r["ratio_max"] for r in results)
        for key in ("forward_s", "backward_s", "optimizer_s"):
            stats[key] = max(r[key] for r in results)
        stats["compute_s"] = max(r["forward_s"] + r["backward_s"] + r["optimizer_s"]
                                 for r in results)
        stats["peak_memory_gb"] = max(r["peak_memory_gb"] for r in results)
        stats.update(grad_norm=results[0]["grad_norm"], lr=results[0]["lr"], step_s=step_s,
                     global_step=results[0]["global_step"], num_tokens=tokens,
                     num_sequences=float(len(samples)))
        return stats

    def compute_logprobs(self, groups: list[PromptGroup]) -> list[list[list[float]]]:
        """Logprob of every completion token under the current weights, shaped like the
        input: result[group][completion][token] (to compare with the engines' values)."""
        samples, per_rank = self._split(groups)
        pairs = [p for part in self.run_method_per_rank("compute_logprobs",
                                                        [(part,) for part in per_rank])
                 for p in part]
        by_index = dict(pairs)
        if len(by_index) != len(samples):
            raise RuntimeError(f"got logprobs for {len(by_index)} of {len(samples)} sequences")
        out, index = [], 0
        for group in groups:
            out.append([by_index[index + c] for c in range(len(group.completions))])
            index += len(group.completions)
        return out

    # -- weights ----------------------------------------------------------------------
    @property
    def live(self) -> bool:
        """Whether conf weights.transport sends while the receivers take in (collective):
        WeightSync then starts both ends together (`start_push`)."""
        return TRANSPORTS[self.conf["weights"]["transport"]].live

    def publish_weights(self) -> tuple[list[Any], dict[str, float]]:
        """Object-store transport: gather the full weights on every rank and publish them
        in buckets (conf weights.bucket_mb) from rank 0: (bucket refs, {bytes, buckets,
        gather_s}). WeightSync (weight_sync/sync.py) versions and delivers them."""
        return self.run_method("publish_weights")[0]

    def start_push(self, num_receivers: int,
                   reuse: bool = False) -> tuple[dict[str, Any], list[Any]]:
        """Collective transport: start sending to a weights group of rank 0 and
        `num_receivers` receivers (every rank gathers); returns (the push each receiver
        joins with its own "rank" added, the refs of the ranks' publish calls, rank 0's
        first: its {bytes, buckets, gather_s}).

        `reuse`: the caller (WeightSync) knows the receivers are the same processes as at
        the last push and that it went through, so the group rank 0 holds is named again
        (one communicator for the run); otherwise a new group is opened. Its store listens
        on rank 0's node address, 127.0.0.1 when the Ray cluster has one node (every
        member is on this machine)."""
        push = self.weights_group.push(num_receivers, reuse)
        return push, [a.publish_weights.remote(push) for a in self.actors]

    def _open_weight_socket(self) -> tuple[str, int]:
        """Rank 0 opens a new weights group's store socket: (host, port)."""
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        host = "127.0.0.1" if len(nodes) == 1 else self.rank0_ip
        return host, int(self.run_on_rank0("open_weight_session", host))

    def full_state_dict(self) -> dict:
        """The full weights as CPU tensors (transformers state-dict names)."""
        return self.run_method("full_state_dict")[0]

    # -- checkpoints ------------------------------------------------------------------
    def save_checkpoint(self, run_dir: str | Path, step: int, trainer_state: dict) -> Path:
        """Atomically write `checkpoints/step_<step>/` (DeepSpeed state, RNG, the loop's
        trainer_state as JSON, an HF export) and keep the last conf checkpoint.keep_last."""
        tmp = self.run_on_rank0("begin_checkpoint", str(run_dir), step)
        self.run_method("save_state", tmp)
        # LoRA: the adapter alone (the base weights are the model's files)
        self.run_method("export_hf", str(Path(tmp) / ckpt.HF_DIR),
                        lora.enabled(self.conf["lora"]))
        meta = {"step": step, "world_size": self.world_size,
                "zero_stage": self.conf["learner"]["zero_stage"]}
        return Path(self.run_on_rank0("end_checkpoint", tmp, step, dict(trainer_state),
                                      self.conf["checkpoint"]["keep_last"], meta))

    def load_checkpoint(self, run_dir: str | Path) -> dict | None:
        """Restore the newest complete checkpoint of `run_dir` on every rank and return the
        trainer_state saved with it (None when there is none). The world size and ZeRO
        stage must match the saving run's."""
        found = self.run_on_rank0("newest_checkpoint", str(run_dir))
        if found is None:
            return None
        path, trainer_state = found
        self.run_method("load_state", path)
        self.last_loaded = Path(path)
        return trainer_state

    def export_hf(self, out_dir: str | Path, meta: dict | None = None) -> Path:
        """A Hugging Face model directory of the current weights, written atomically;
        `meta` goes into its COMPLETE marker (JSON)."""
        out_dir = Path(out_dir)
        tmp = out_dir.with_name(f"{ckpt.TMP_PREFIX}{out_dir.name}")
        self.run_on_rank0("clear_dir", str(tmp))   # leftovers of a crashed export
        self.run_method("export_hf", str(tmp))
        return Path(self.run_on_rank0("publish_dir", str(tmp), str(out_dir),
                                      {"export": True, **(meta or {})}))

    def offload_states(self) -> bool:
        """Every rank's states off the GPU (colocated; Learner.offload_states)."""
        return all(self.run_method("offload_states"))

    def reload_states(self) -> bool:
        """Every rank's states back on the GPU (colocated; Learner.reload_states)."""
        return all(self.run_method("reload_states"))

    def shutdown(self) -> None:
        """Kill the learner actors (frees their names and resources)."""
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
