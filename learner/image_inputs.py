"""The image inputs a learner rank trains on, built from each sample by the prompt builder
the engines use, once per prompt of a step, ahead of the micro-batches that need them.

A step's micro-batches are run one after the other; the prompts they need are known when
the step starts. `StepImageInputs` builds them in that order on one background thread, so
that while the first micro-batch runs forward and backward the next prompts' images are
decoded and processed (on the tiny run the engines are idle during the update and their
core is free; image decoding and the processor's numpy work release the GIL). The first
micro-batch still waits for its own prompt. Built here, not sent by the driver: the
driver carries sample references, never pixels (docs/architecture.md, "Data moves once").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from learner.experience import MicroBatch

Key = tuple[str, str]   # (sample id, mode)


def _key(seq: Any) -> Key:
    return str(seq.sample["id"]), seq.mode


class StepImageInputs:
    """(pixel_values, image_grid_thw) of every sequence of `micro_batches`, per prompt.

    `builder` returns the prompt builder (model_inputs.prompting.PromptBuilder; made on first
    use). Each prompt's ids built here are checked against the engine's: a mismatch would
    make the learner's logprobs differ from the sampler's, so it is an error.
    """

    def __init__(self, builder: Callable[[], Any], micro_batches: Sequence[MicroBatch]) -> None:
        self._builder = builder
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="image-inputs")
        self._built: dict[Key, Future] = {}
        for micro in micro_batches:
            for seq in micro.samples:
                if seq.sample is not None and _key(seq) not in self._built:
                    self._built[_key(seq)] = self._pool.submit(self._build, seq)

    def _build(self, seq: Any) -> tuple[Any, Any]:
        inputs = self._builder().learner_inputs(seq.sample, seq.mode)
        if inputs["prompt_ids"] != list(seq.prompt_ids):
            raise RuntimeError(f"sample {_key(seq)[0]}: the learner's prompt ids differ from "
                               "the engine's; prompt building is out of sync")
        return inputs["pixel_values"], inputs["image_grid_thw"]

    def of(self, micro: MicroBatch) -> list | None:
        """Each sequence's (pixel_values, image_grid_thw); None for text-only sequences."""
        if micro.samples[0].sample is None:
            return None
        # result() raises the builder's error here, in the training thread
        return [self._built[_key(seq)].result() for seq in micro.samples]

    def close(self) -> None:
        """Stop the background thread (after an error, without waiting for the rest)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> StepImageInputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
