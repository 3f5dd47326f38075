"""WeightSync: the one owner of weights versions, on the driver.

    sync = WeightSync()
    engines = EngineGroup(settings, 2, sync=sync)    # each engine registers as a receiver
    sync.register("scoring-actor", scorer)
    sync.publish(learners)                           # the next version, delivered to all
    engines.generate(...)                            # every rollout's version is checked
    sync.call("scoring-actor", "pd_scores", ...)     # checked too; a stale result is redone

It assigns the version and delivers the learners' weights to every receiver. With the
object-store transport it takes the bucket refs from learner rank 0
(`LearnerGroup.publish_weights`), hands them to every receiver and keeps them, to replay
to a receiver that restarted (Ray brings a dead actor back with the model's initial
weights: version 0). With the collective transport (`learners.live`) it starts rank 0's
broadcast and every live receiver's intake together (`LearnerGroup.start_push`), in the
group of the push before when the members are the same processes (receiver name and pid)
and that push went through: one communicator for the run, a new one only after a member
changed or a push failed. No weights are kept; a replay is a new push of the learners'
weights to that receiver alone (the learners hold the current version's weights until
their next step).

Every result a receiver returns carries the `weights_version` it was computed with; a
result older than the current version comes from such a restarted receiver, so the
receiver is brought up to date and the call redone: a stale result is never used.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

PUSH_TRIES = 3   # collective pushes redone after a receiver died mid-push


class StaleResultError(RuntimeError):
    """A receiver answered with weights older than the current version."""


class LearnersGone(RuntimeError):
    """A receiver must be brought to the current version, but the learners that hold its
    weights died: the object store's buckets die with their owner, learner rank 0, and a
    collective replay needs a live rank 0. The caller replaces the learners; their
    restore publishes a new version to every receiver (driver.trainer)."""


@dataclass
class _PushOutcome:
    """How one collective push ended: rank 0's info, the receivers that died, those whose
    intake failed (the group broke, or they refused the push), rank 0's send error."""

    info: dict = field(default_factory=dict)
    died: list[str] = field(default_factory=list)
    failed: dict[str, BaseException] = field(default_factory=dict)
    send_error: BaseException | None = None

    def raise_failure(self) -> None:
        """A receiver's error first (what it refused says most), else rank 0's."""
        for error in self.failed.values():
            raise error
        if self.send_error is not None:
            raise self.send_error


def _await_push(calls: dict[str, Any], sending: list[Any]) -> _PushOutcome:
    """Wait for every receiver's intake and every learner rank's publish together, in the
    order they finish; a learner rank's death (RayActorError) is raised at once."""
    import ray

    who = {ref: ("receiver", name) for name, ref in calls.items()}
    who.update({ref: ("learner", rank) for rank, ref in enumerate(sending)})
    out = _PushOutcome()
    pending = list(who)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        kind, name = who[done[0]]
        try:
            value = ray.get(done[0])
        except ray.exceptions.RayActorError:
            if kind == "learner":
                raise   # the caller replaces the learners; that frees the receivers
            out.died.append(name)
        except ray.exceptions.RayError as err:
            if kind == "learner":
                out.send_error = out.send_error or err
            else:
                out.failed[name] = err
        else:
            if kind == "learner" and name == 0:
                out.info = value[1]
    return out


def result_versions(result: Any) -> list[int]:
    """The weights versions a receiver's result carries (one object or a list of them)."""
    items = result if isinstance(result, list) else [result]
    versions = []
    for item in items:
        version = getattr(item, "weights_version", None)
        if version is None:
            raise TypeError(f"a {type(item).__name__} carries no weights_version; only "
                            "results of versioned receiver methods can be checked")
        versions.append(int(version))
    return versions


class WeightSync:
    """Versions, newest buckets and receivers (module docstring)."""

    def __init__(self, ready_timeout_s: float = 900.0, max_redos: int = 2) -> None:
        self.version = 0
        self.receivers: dict[str, Any] = {}
        self.ready_timeout_s = ready_timeout_s
        self.max_redos = max_redos
        self.counts = {"replays": 0, "redos": 0, "restarts": 0, "unreachable": 0,
                       "groups": 0}   # collective groups formed (one for a calm run)
        # Callers on several threads (an evaluation's answers and digits, rollouts made
        # ahead) may find the same restarted receiver at once: one replays, the other
        # then finds it current.
        self._bringing = threading.Lock()
        self._handles: list[Any] = []
        self._learners: Any = None   # the collective transport replays from them
        # The collective group's members at its last clean push: (name, pid) in rank order.
        self._group_members: tuple[tuple[str, int], ...] | None = None
        self._group_id: str | None = None   # the group of the latest collective push

    def register(self, name: str, handle: Any) -> None:
        """Add a receiver (a Ray actor with update_weights / ready); it gets every version."""
        self.receivers[name] = handle

    # -- versions in ----------------------------------------------------------------
    def publish(self, learners: Any) -> dict[str, float]:
        """The learners' current weights become the next version, delivered to every
        receiver. Returns gather_s, deliver_s, bytes, buckets, unreachable."""
        return self._install(learners, self.version + 1)

    def restore(self, learners: Any, version: int) -> dict[str, float]:
        """Deliver the weights `learners` restored from a checkpoint saved at `version`:
        under that version when it is newer than what is out (a resume: the receivers
        start from the model's files, version 0), else under a new one (the learners went
        back while the receivers hold later weights). At version 0 on both sides nothing
        is sent: the receivers already hold the model's files, as the learners do."""
        if version == self.version == 0:
            self._learners = learners
            return {"gather_s": 0.0, "deliver_s": 0.0, "bytes": 0.0, "unreachable": 0.0}
        return self._install(learners, version if version > self.version else self.version + 1)

    def state(self) -> dict[str, int]:
        """What a checkpoint stores."""
        return {"version": self.version}

    def _install(self, learners: Any, version: int) -> dict[str, float]:
        start = time.perf_counter()
        self._learners = learners
        if getattr(learners, "live", False):
            self.version, self._handles = version, []
            info, unreachable = self._push_live(list(self.receivers))
            gathered = start + float(info.get("gather_s", 0.0))
        else:
            handles, info = learners.publish_weights()
            gathered = time.perf_counter()
            self.version, self._handles = version, list(handles)
            unreachable = self._deliver(list(self.receivers))
        return {"gather_s": gathered - start, "deliver_s": time.perf_counter() - gathered,
                "bytes": float(info.get("bytes", 0.0)),
                "buckets": float(info.get("buckets", len(self._handles))),
                "unreachable": float(len(unreachable))}

    def _deliver(self, names: list[str]) -> list[str]:

        calls = {name: self.receivers[name].update_weights.remote(self.version, self._handles)
                 for name in names}
        unreachable = self._gather(calls)
        self.counts["unreachable"] += len(unreachable)
        return unreachable

    @staticmethod
    def _gather(calls: dict[str, Any]) -> list[str]:
        import ray

        unreachable = []
        for name, call in calls.items():
            try:
                ray.get(call)
            except ray.exceptions.RayActorError:
                # Dead or restarting: it is brought up to date when it is next used
                # (bring_current). A refused or failed load raises instead.
                unreachable.append(name)
        # Even when none is reachable (the single engine of a Stage-1 run, restarting) the
        # version stands: its buckets are kept, and every receiver is brought to it when
        # next used; one that never comes back fails there, with Ray's reason.
        return unreachable

    def _answers(self, name: str, timeout_s: float = 60.0) -> dict | None:
        """Receiver `name`'s ready() info, or None when it does not answer."""
        import ray

        try:
            return ray.get(self.receivers[name].ready.remote(), timeout=timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return None

    def _push_live(self, names: list[str]) -> tuple[dict, list[str]]:
        """Collective transport: a group of rank 0 and the receivers that answer now (one
        that cannot join would leave the others waiting); the rest are unreachable.

        A receiver that dies mid-push breaks the group for every member (the others roll
        back, weight_sync.receiver): the push is made again with those that answer then,
        at most PUSH_TRIES times; one that missed it is brought up to date when next used.
        A learner rank that dies fails the push at once (its RayActorError), without
        waiting for the receivers: they wait on rank 0, which waits on the dead rank in a
        gather, until the caller replaces the learners."""
        delivered: list[str] = []
        info: dict = {}
        for _ in range(PUSH_TRIES):
            infos = {name: self._answers(name) for name in names}
            alive = [name for name in names if infos[name] is not None]
            if not alive:
                break
            members = tuple((name, int(infos[name].get("pid", -1))) for name in alive)
            reuse, self._group_members = members == self._group_members, None
            push, sending = self._learners.start_push(len(alive), reuse=reuse)
            if push.get("id") != self._group_id:
                self._group_id = push.get("id")
                self.counts["groups"] += 1
            calls = {name: self.receivers[name].update_weights.remote(
                self.version, {**push, "rank": rank}) for rank, name in enumerate(alive, 1)}
            got = _await_push(calls, sending)
            if not (got.died or got.failed or got.send_error is not None):
                self._group_members = members   # every member holds the group: keep it
            if got.died and (got.failed or got.send_error is not None):
                continue   # the dead receiver broke the group: again, without it
            if not got.died:
                got.raise_failure()   # a refused push (NaN, wrong shapes), or a failed send
            info, delivered = got.info, [name for name in alive if name not in got.died]
            break
        else:
            raise RuntimeError(f"the weight push failed {PUSH_TRIES} times: a receiver died "
                               "in each (see the receivers' logs)")
        unreachable = [name for name in names if name not in delivered]
        self.counts["unreachable"] += len(unreachable)
        return info, unreachable

    # -- versions out ---------------------------------------------------------------
    def is_current(self, version: int) -> bool:
        """Whether a result computed with `version` may be used."""
        return int(version) == self.version

    def bring_current(self, name: str, cause: BaseException) -> dict:
        """Wait until receiver `name` answers again (Ray restarts a dead actor) and replay
        the newest weights to it when it is behind; returns its ready() info. One caller
        at a time (thread-safe)."""
        with self._bringing:
            return self._bring_current(name, cause)

    def _bring_current(self, name: str, cause: BaseException) -> dict:
        import ray

        handle = self.receivers[name]
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                info = ray.get(handle.ready.remote(),
                               timeout=max(1.0, deadline - time.monotonic()))
                break
            except ray.exceptions.ActorUnavailableError:
                time.sleep(1.0)   # restarting: calls are refused for a moment
            except ray.exceptions.GetTimeoutError:
                raise TimeoutError(f"{name} did not come back within "
                                   f"{self.ready_timeout_s:.0f} s after: {cause}") from cause
            except ray.exceptions.RayActorError as dead:
                raise RuntimeError(f"{name} died and Ray did not restart it (max_restarts "
                                   f"used up?): {dead}") from cause
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not come back: {cause}") from cause
        behind = int(info["version"]) < self.version   # versions only rise: a restart
        if behind or isinstance(cause, ray.exceptions.RayActorError):
            self.counts["restarts"] += 1
        if behind:
            self._replay(name, int(info["version"]), cause)
            self.counts["replays"] += 1
        return info

    def _replay(self, name: str, held: int, cause: BaseException) -> None:
        """The current version again, to receiver `name` alone (it holds `held`)."""
        import ray

        from weight_sync.receiver import WeightsLostError

        live = getattr(self._learners, "live", False)
        try:
            if live:
                _, missed = self._push_live([name])
                if missed:
                    raise RuntimeError(f"{name} could not take the weights replay") from cause
            else:
                ray.get(self.receivers[name].update_weights.remote(self.version,
                                                                   self._handles))
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError,
                WeightsLostError) as err:
            # Live: receivers' deaths are handled inside _push_live, so an actor error is
            # a learner rank's. Object store: a receiver that died again is a RayActorError
            # too, and is not the learners' fault.
            if not live and isinstance(err, ray.exceptions.RayActorError):
                raise
            raise LearnersGone(f"{name} holds weights version {held} and needs version "
                               f"{self.version}, but the learners that hold it died "
                               f"({type(err).__name__})") from err

    def call(self, name: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """`ray.get` of a versioned method of receiver `name`; redone (at most max_redos
        times) after an actor death or a stale version, once the receiver is current."""
        import ray

        last: BaseException | None = None
        for _ in range(self.max_redos + 1):
            try:
                result = ray.get(getattr(self.receivers[name], method).remote(*args, **kwargs))
            except ray.exceptions.RayActorError as err:
                last = err
            else:
                stale = [v for v in result_versions(result) if not self.is_current(v)]
                if not stale:
                    return result
                last = StaleResultError(f"{name}.{method} answered with weights version "
                                        f"{stale[0]}, the current one is {self.version}")
            self.bring_current(name, last)
            self.counts["redos"] += 1
        raise RuntimeError(f"{name}.{method} failed {self.max_redos + 1} times; giving up "
                           f"(last: {last})") from last
