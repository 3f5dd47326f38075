"""The receiving end of a weight update: buckets in, validated, loaded, versioned.

WeightSync (weight_sync/sync.py) calls `update_weights(version, bucket_handles)` on every
rollout engine and on the scoring actor; each of them holds one `WeightReceiver`, which
turns the handles into tensors through the transport's `fetch` (weight_sync/transport.py).
Tensors are named as in a transformers state dict (model.visual.*, model.language_model.*,
lm_head.*).

An update is all or nothing:
1. the version must be above the current one (a stale or repeated push is refused);
2. every bucket is fetched and checked against the model's own parameter list (known
   names, no repeats, matching shapes, floating point, finite values, and every weight
   present) before the engine is touched, so bad data never half-loads;
3. only then the staged tensors are loaded in one call. Should that call itself fail, the
   last good weights are loaded again (the previous push, whose handles are kept, or the
   model's files for version 0); if even that fails the receiver is marked broken and
   the engine refuses to generate until it is restarted.

Keeping the previous push's handles pins one extra copy of the weights in the object store
between updates; that is the price of a rollback that needs no disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from weight_sync.transport import ObjectStoreTransport, Transport

MAX_LISTED = 5  # names quoted in an error message


class WeightUpdateError(RuntimeError):
    """An update was refused or failed; the message says which tensor and what to do."""


class StaleWeightsError(WeightUpdateError):
    """The pushed version is not newer than the loaded one."""


class BrokenEngineError(RuntimeError):
    """A failed load could not be rolled back: the engine must be restarted."""


def check_version(current: int, new: Any) -> int:
    """`new` as an int if it may follow `current`, else StaleWeightsError / TypeError."""
    if isinstance(new, bool) or not isinstance(new, int):
        raise TypeError(f"weights version must be an int, got {new!r}")
    if new <= current:
        raise StaleWeightsError(
            f"weights version {new} refused: this engine already holds version {current}; "
            "versions must increase with every push")
    return new


@dataclass(frozen=True)
class WeightSpec:
    """The tensors a model expects: name -> shape; `optional` holds tied aliases."""

    shapes: Mapping[str, tuple[int, ...]]
    optional: frozenset[str] = frozenset()

    @property
    def required(self) -> set[str]:
        """Names every push must hold."""
        return set(self.shapes) - set(self.optional)


def weight_spec(model_path: str, trust_remote_code: bool = False) -> WeightSpec:
    """The state-dict names and shapes of the model at `model_path`, read from its config.

    The model is built on the meta device (no memory, no weights read), so the names are
    exactly those a transformers model of this config (the learner's) produces.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        try:
            model = AutoModelForImageTextToText.from_config(
                config, trust_remote_code=trust_remote_code)
        except ValueError:  # a text-only model
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    state = model.state_dict()
    owned = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    return WeightSpec(shapes={n: tuple(t.shape) for n, t in state.items()},
                      optional=frozenset(set(state) - owned))


@dataclass
class StagedWeights:
    """Validated tensors of one push, in arrival order."""

    tensors: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    nbytes: int = 0
    num_buckets: int = 0


def _listed(names: Iterable[str]) -> str:
    names = sorted(names)
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def check_bucket(bucket: Any, index: int, spec: WeightSpec, seen: set[str]) -> int:
    """Raise WeightUpdateError unless every tensor of `bucket` fits `spec`; return bytes."""
    where = f"bucket {index}"
    if not isinstance(bucket, Mapping):
        raise WeightUpdateError(f"{where} is a {type(bucket).__name__}, expected a dict of "
                                "name -> tensor")
    unknown = [n for n in bucket if n not in spec.shapes]
    if unknown:
        raise WeightUpdateError(
            f"{where} holds tensors this model does not have: {_listed(unknown)} (expected "
            "transformers state-dict names such as model.language_model.*, model.visual.*)")
    nbytes = 0
    for name, tensor in bucket.items():
        if name in seen:
            raise WeightUpdateError(f"{where}: tensor {name} was already sent in this push")
        seen.add(name)
        if not isinstance(tensor, torch.Tensor):
            raise WeightUpdateError(f"{where}: {name} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != spec.shapes[name]:
            raise WeightUpdateError(f"{where}: {name} has shape {list(tensor.shape)}, the "
                                    f"model expects {list(spec.shapes[name])}")
        if not tensor.is_floating_point():
            raise WeightUpdateError(f"{where}: {name} has dtype {tensor.dtype}; weights must be "
                                    "floating point")
        if not bool(torch.isfinite(tensor).all()):
            raise WeightUpdateError(f"{where}: {name} holds NaN or infinite values; the "
                                    "learner diverged or the bucket is corrupt")
        nbytes += tensor.numel() * tensor.element_size()
    return nbytes


def stage_buckets(handles: Sequence[Any], spec: WeightSpec,
                  source: Transport) -> StagedWeights:
    """Fetch and check every bucket; raise WeightUpdateError before anything is loaded."""
    if not handles:
        raise WeightUpdateError("a weight push needs at least one bucket")
    staged, seen = StagedWeights(), set()
    for index, handle in enumerate(handles):
        try:
            bucket = source.fetch(handle)
        except Exception as err:
            raise WeightUpdateError(f"bucket {index} could not be fetched: {err}") from err
        staged.nbytes += check_bucket(bucket, index, spec, seen)
        staged.tensors.extend(bucket.items())
        staged.num_buckets += 1
    missing = spec.required - seen
    if missing:
        raise WeightUpdateError(f"the push lacks {len(missing)} tensors: {_listed(missing)}; "
                                "send the full set of weights (vision tower included)")
    return staged


Loader = Callable[[list[tuple[str, torch.Tensor]]], None]


class WeightReceiver:
    """Version bookkeeping, staging and rollback around an engine's load function.

    `load(tensors)` puts a full set of checkpoint-format tensors into the engine and resets
    its caches; `load_initial()` reloads the model's own files (version 0).
    """

    def __init__(self, spec: WeightSpec, load: Loader, load_initial: Callable[[], None],
                 source: Transport | None = None):
        self.spec = spec
        self._load = load
        self._load_initial = load_initial
        self.source = source or ObjectStoreTransport()
        self.version = 0
        self.broken: str | None = None
        self._last_good: list[Any] = []   # handles of the loaded version (empty: files)

    def assert_usable(self) -> None:
        """Raise BrokenEngineError if a failed load left unknown weights behind."""
        if self.broken:
            raise BrokenEngineError(self.broken)

    def last_good(self) -> tuple[int, list[Any]]:
        """(version, bucket handles) of the loaded weights; handles are empty at version 0."""
        return self.version, list(self._last_good)

    def update(self, version: int, handles: Sequence[Any]) -> dict:
        """Load a push all-or-nothing (module docstring); return timings and sizes."""
        self.assert_usable()
        version = check_version(self.version, version)
        start = time.perf_counter()
        staged = stage_buckets(list(handles), self.spec, self.source)
        fetched = time.perf_counter()
        try:
            self._load(staged.tensors)
        except Exception as err:
            del staged
            self._roll_back(version, err)
            raise WeightUpdateError(
                f"loading weights version {version} failed ({type(err).__name__}: {err}); "
                f"the engine is back at version {self.version}") from err
        self.version, self._last_good = version, list(handles)
        return {"version": version, "bytes": staged.nbytes, "tensors": len(staged.tensors),
                "buckets": staged.num_buckets, "fetch_s": fetched - start,
                "load_s": time.perf_counter() - fetched}

    def _roll_back(self, failed_version: int, cause: Exception) -> None:
        try:
            if self._last_good:
                self._load(stage_buckets(self._last_good, self.spec, self.source).tensors)
            else:
                self._load_initial()
        except Exception as err:
            self.broken = (f"loading weights version {failed_version} failed ({cause}) and "
                           f"restoring version {self.version} failed too ({err}); restart "
                           "this actor")
            raise BrokenEngineError(self.broken) from err
