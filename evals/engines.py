"""The model side of every evaluation: the project's rollout engines and scoring actor.

Evaluations run the model exactly as training does: the rollout engines (an
actors.engine_group.EngineGroup, prompts built by model_inputs.prompting) write the answers and
the scoring actor (actors.scoring_actor) gives the digit distribution of Eq. 8. Decoding
is greedy (`actors.engine_settings.sampling_from_config(cfg, greedy=True)`: temperature 0,
one answer per sample), as the paper evaluates ("model.generate() with greedy search").

`EvalEngines.start(cfg, model_path)` starts the actors through cluster.start, the one
start-up training uses too.
`EvalEngines(group, scorer, sampling=..., sync=...)` wraps actors someone else started:
training's validation passes its running engines, scoring actor and WeightSync; tests
start them once per module and run several evaluations on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

if TYPE_CHECKING:
    from actors.scoring_actor import DigitProbs
    from cluster.start import RunningActors
    from weight_sync.sync import WeightSync

# A CLI's --mode value -> the prompt modes it runs (no-think first: it is the cheaper one).
MODE_CHOICES = {"think": ("think",), "no_think": ("no_think",), "both": ("no_think", "think")}


@dataclass
class Generation:
    """The greedy answer to one sample."""

    text: str
    finish_reason: str
    token_ids: list[int]   # the answer as sampled: think Eq. 8 teacher-forces from these
    original_size: tuple[int, int] = (0, 0)   # the judged image as loaded ...
    input_size: tuple[int, int] = (0, 0)      # ... and as the model read it (boxes)


class EvalEngines:
    """Greedy answers (the rollout engines) and Eq. 8 digit distributions (the scoring
    actor), in batches of `batch_size` samples with a progress bar.

    `sampling` is the decoding dict the engines take (`sampling_from_config(cfg,
    greedy=True)` for the paper's evaluation). With `sync`, a WeightSync in which the
    scoring actor is registered as `actors.scoring_actor.SCORER_NAME`, scorer calls go through
    it: an answer of a restarted actor with stale weights is redone, never used.
    `shutdown` stops the actors only when this object started them (`start`).
    """

    def __init__(self, group: Any, scorer: Any = None, *, sampling: dict,
                 batch_size: int = 16, sync: WeightSync | None = None,
                 progress: bool = True) -> None:
        self.group = group
        self.scorer = scorer
        self.sampling = dict(sampling)
        self.batch_size = max(1, batch_size)
        self.sync = sync
        self.progress = progress   # training's validation keeps the step bar alone
        self.running: RunningActors | None = None   # set by `start`: the actors it owns

    @classmethod
    def start(cls, cfg: Any, model_path: str, engines: bool = True, scorer: bool = False,
              max_new_tokens: int | None = None, batch_size: int = 16,
              log_to_driver: bool = True) -> EvalEngines:
        """Start the rollout engines (`engines`) and the scoring actor (`scorer`) of
        `model_path` with the config's engine settings, through cluster.start (the
        start-up training uses), in the cluster of `ray.address`, of RAY_ADDRESS, or a new
        local one. Only Eq. 8 in the no-think mode needs no engines (it reads a fixed
        prefix). `max_new_tokens` overrides the config's rollout.max_new_tokens. Raises
        cluster.resources.ResourceError, before starting anything, when the cluster cannot
        place the actors.
        """
        from actors.engine_settings import sampling_from_config
        from cluster.start import start_actors

        if not (engines or scorer):
            raise ValueError("nothing to start: engines and scorer are both False")
        running = start_actors(cfg, model_path, engines=engines, scorer=scorer, learners=False,
                               log_to_driver=log_to_driver)
        sampling = sampling_from_config(cfg, greedy=True)
        if max_new_tokens is not None:
            sampling["max_new_tokens"] = max_new_tokens
        out = cls(running.engines, running.scorer, sampling=sampling, batch_size=batch_size,
                  sync=running.sync)
        out.running = running
        return out

    def _batches(self, n: int) -> list[tuple[int, int]]:
        return [(start, min(n, start + self.batch_size))
                for start in range(0, n, self.batch_size)]

    def _bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="img", leave=False, disable=not self.progress)

    def generate(self, samples: list[dict], mode: str, desc: str = "generate") -> list[Generation]:
        """One greedy answer per sample, in order."""
        return dict(self.stream(samples, mode, digits=False, desc=desc))["answers"]

    def digit_probs(self, samples: list[dict], mode: str,
                    token_ids: list[list[int] | None] | None = None, digits_before: str = "",
                    desc: str = "digits") -> list[list[float] | None]:
        """p("0") .. p("9") at the integer position of each answer. no_think: after the
        fixed prefix "[answer]Score:"; think: after each sample's own answer (its
        `Generation.token_ids`, one per sample) cut after its score prefix, None where the
        answer block holds none. `digits_before` ("3.") asks about a later digit."""
        return dict(self.stream(samples, mode, answers=False, token_ids=token_ids,
                                digits_before=digits_before, desc=desc))["digits"]

    def stream(self, samples: list[dict], mode: str, answers: bool = True,
               digits: bool = True, token_ids: list[list[int] | None] | None = None,
               digits_before: str = "", desc: str = "evaluate"
               ) -> Iterator[tuple[str, Any]]:
        """Yield ("answers", list[Generation]) and ("digits", list of p("0") .. p("9"),
        as `digit_probs`), each once its last batch is back, in the order they finish.
        Think-mode digits read the answers written here (`token_ids` when `answers` is
        False).

        The rollout engines and the scoring actor work at the same time: no-think digits
        need no answer, think digits of batch k are asked for as soon as batch k's answers
        are back, while the engines write batch k + 1; and each side has its next batch
        queued behind the one it works on (no round trip through this process in
        between). The caller's thread is free between the yields: the scoring evaluation
        draws its plots there while the actors work.
        """
        if answers and self.group is None:
            raise RuntimeError("answers need the rollout engines; start EvalEngines with "
                               "engines=True")
        if digits and self.scorer is None:
            raise RuntimeError("probability-based inference needs the scoring actor; start "
                               "EvalEngines with scorer=True")
        own_ids = digits and mode == "think" and answers
        if digits and mode == "think" and not own_ids and (
                token_ids is None or len(token_ids) != len(samples)):
            raise ValueError("think mode needs the answer's token ids, one per sample")
        chunks = self._batches(len(samples))
        # Two calls in flight per side. The threads only wait on Ray (GIL released); an
        # actor found restarted is brought current by one of them (WeightSync is
        # thread-safe there).
        answer_pool, digit_pool = ThreadPoolExecutor(2), ThreadPoolExecutor(2)
        answer_fs = [answer_pool.submit(self._answer_batch, samples[a:b], mode)
                     for a, b in chunks] if answers else []
        digit_fs = [digit_pool.submit(self._digit_batch, samples[a:b], mode,
                                      answer_fs[k] if own_ids else
                                      None if token_ids is None else list(token_ids[a:b]),
                                      digits_before)
                    for k, (a, b) in enumerate(chunks)] if digits else []
        groups = {kind: fs for kind, fs, asked in (("answers", answer_fs, answers),
                                                   ("digits", digit_fs, digits)) if asked}
        pending = {f for fs in groups.values() for f in fs}
        bar = self._bar(len(samples) * len(groups), desc)
        try:
            while groups:
                for kind in [k for k, fs in groups.items() if all(f.done() for f in fs)]:
                    # result() raises an actor's error here, in the caller's thread
                    yield kind, [x for f in groups.pop(kind) for x in f.result()]
                if pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        bar.update(len(f.result()))
        finally:
            bar.close()
            for f in pending:
                f.cancel()
            answer_pool.shutdown()
            digit_pool.shutdown()

    def _answer_batch(self, samples: list[dict], mode: str) -> list[Generation]:
        out = []
        for pr in self.group.generate(samples, mode, 1, self.sampling):
            r = pr.rollouts[0]
            out.append(Generation(r.text, r.finish_reason, list(r.token_ids),
                                  pr.original_size, pr.input_size))
        return out

    def _digit_batch(self, samples: list[dict], mode: str, ids: Any,
                     digits_before: str) -> list[list[float] | None]:
        if isinstance(ids, Future):   # think mode: this batch's own answers, once written
            ids = [g.token_ids for g in ids.result()]
        return self._digit_distribution(samples, mode, ids, digits_before).probs

    def _digit_distribution(self, *args: Any) -> DigitProbs:
        from actors.scoring_actor import SCORER_NAME

        if self.sync is not None and self.sync.receivers.get(SCORER_NAME) == self.scorer:
            return self.sync.call(SCORER_NAME, "digit_distribution", *args)
        import ray

        return ray.get(self.scorer.digit_distribution.remote(*args))

    def shutdown(self) -> None:
        """Stop the actors this object started (not ones it was handed)."""
        if self.running is not None:
            self.running.shutdown()
            self.running = None
