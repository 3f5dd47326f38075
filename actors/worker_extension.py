"""The vLLM worker extension that loads weight buckets inside vLLM's worker process.

vLLM mixes this class into its worker (engine argument `worker_extension_cls`), so a load
is an RPC by method name (`llm.collective_rpc("load_weight_parts", ...)`). Checked on the
CPU build in both vLLM modes (tests/test_weight_update.py); the GPU worker takes the same
extension and the same `reload_weights` call.
"""

from __future__ import annotations

from typing import Any


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


