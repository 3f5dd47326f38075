"""The vLLM worker extension that loads weight buckets inside vLLM's worker process.

vLLM mixes this class into its worker (engine argument `worker_extension_cls`), so a load
is an RPC by method name (`llm.collective_rpc("load_bucket_part", ...)`). One push is one
load session, the three steps of vLLM's own in-place reload (`reload_weights`) called one
bucket at a time, as vLLM's weight-transfer engines do: `begin_bucket_session` (layers set
up for layerwise loading), `load_bucket_part` per bucket (a layer is processed into the
kernel format, the CPU backend's repacking included, once all its tensors arrived, so a
bucket may end in the middle of a layer), `end_bucket_session` (layers that got nothing
keep their weights). Checked on the CPU build in both vLLM modes
(tests/test_weight_sync_receiver.py); the GPU worker has the same model runner calls.

With the collective transport the worker takes a push itself (`receive_weights`): it is
a member of the weights group (weight_sync/transport.py; one group kept for the run), the
buckets arrive on the model's device (a CUDA buffer under NCCL) and go from there into
`model.load_weights`, checked as the receiver checks them (weight_sync.receiver
`load_stream`): no copy through host memory, no tensors through vLLM's RPC, which carries
only the rendezvous in and the totals out. Checked on the CPU build over gloo in both vLLM
modes (tests/test_weight_sync_in_worker.py, tests/test_multinode.py); under NCCL the same
code runs with the buffers on the worker's current CUDA device, written against torch's
ProcessGroupNCCL and not yet run on a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _SessionSteps:
    """weight_sync.receiver.EngineLoader over the extension's own session steps."""

    def __init__(self, worker: WeightLoadExtension) -> None:
        self.worker = worker

    def begin(self) -> None:
        self.worker.begin_bucket_session()

    def load_part(self, tensors: list) -> None:
        self.worker.load_bucket_part(tensors)

    def finish(self) -> None:
        self.worker.end_bucket_session()


class WeightLoadExtension:
    """Mixed into vLLM's worker class (engine arg `worker_extension_cls`), so that a load is
    an RPC by method name: vLLM's multiprocess RPC carries bytes but neither tensors nor
    functions."""

    @contextmanager
    def _model_in_config(self) -> Iterator[tuple[Any, Any]]:
        """(the worker's model, its vLLM config), with that config current: vLLM's loaders
        read it from there."""
        from vllm.config import set_current_vllm_config

        config = self.vllm_config  # type: ignore[attr-defined]  (the worker's)
        with set_current_vllm_config(config):
            yield self.model_runner.get_model(), config  # type: ignore[attr-defined]

    def begin_bucket_session(self) -> bool:
        """Start a load session."""
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        with self._model_in_config() as (model, _):
            initialize_layerwise_reload(model)
        return True

    def load_bucket_part(self, part: Any) -> int:
        """Load one bucket: a (name, tensor) list (in-process) or a safetensors blob
        (multiprocess); returns the number of tensors."""
        from safetensors.torch import load as load_blob

        tensors = list(load_blob(part).items()) if isinstance(part, bytes) else list(part)
        with self._model_in_config() as (model, _):
            model.load_weights(iter(tensors))
        return len(tensors)

    def end_bucket_session(self) -> bool:
        """End the session: the layers still waiting are processed or given back."""
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        with self._model_in_config() as (model, config):
            finalize_layerwise_reload(model, config.model_config)
        return True

    # -- the collective transport, taken here ---------------------------------------------
    def _weights_transport(self) -> Any:
        """This worker's end of the weights group, kept between pushes."""
        transport = getattr(self, "_weights_group_end", None)
        if transport is None:
            from weight_sync.transport import CollectiveTransport

            transport = self._weights_group_end = CollectiveTransport()
        return transport

    def receive_weights(self, push: dict, shapes: dict, optional: list) -> dict:
        """Take one collective push here: join (or reuse) its group, check each bucket
        against `shapes` (name -> shape; `optional`: tied aliases) and load it. Returns
        the totals (bytes, tensors, buckets, loaded) and, when the push failed, "error"
        and "refused" (its content was refused, rather than the group failing): an
        exception would reach the caller as vLLM's text only."""
        from weight_sync.receiver import WeightSpec, WeightUpdateError, load_stream

        spec = WeightSpec({n: tuple(s) for n, s in shapes.items()}, frozenset(optional))
        totals: dict[str, int] = {}
        try:
            load_stream(self._weights_transport().stream(push), spec, _SessionSteps(self),
                        totals)
        except Exception as err:
            return {**totals, "error": f"{type(err).__name__}: {err}",
                    "refused": isinstance(err, WeightUpdateError)}
        return totals

    def drain_weights(self, push: dict) -> bool:
        """Take a push and load nothing (its version was refused), so nobody waits."""
        for _ in self._weights_transport().stream(push):
            pass
        return True

    def weights_group(self) -> dict:
        """Where this worker's end of the weights group lives: pid, groups joined."""
        transport = getattr(self, "_weights_group_end", None)
        return {"pid": os.getpid(), "joins": transport.joins if transport else 0}
