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
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


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
