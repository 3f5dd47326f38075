"""The one place a config becomes running actors, for training and for evaluation alike.

    running = start_actors(cfg, model_path, engines=True, scorer=True, learners=True)
    learners = running.start_learners(total_steps)   # again after a learner rank died
    ...
    running.shutdown()

In order: connect (join the job's cluster or start a local one), check resources (totals,
then node by node: one line naming the conf keys instead of a job that waits forever),
one placement group per role (held for the run, so restarted actors take the same
bundle), the WeightSync that owns the weights versions from then on, and the vLLM actors:
the rollout engines and the scoring actor, started at once and ready on return, each
registered as a receiver of the WeightSync. The learner ranks start when the caller asks
(`start_learners`), in the learner role's bundles. Evaluations ask for no learners and
push no weights; their WeightSync still owns the version every answer is checked against
and replays it to an engine Ray restarted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from actors.engine_group import EngineGroup
from actors.engine_host import wait_ready
from actors.engine_settings import settings_from_config
from actors.scoring_actor import SCORER_NAME, start_scoring_actor
from cluster import local_processes
from cluster.connect import connect, node_resources, starts_local_cluster
from cluster.placement import Placement
from cluster.resources import check_resources, layout, with_scorer
from weight_sync.sync import WeightSync


@dataclass
class RunningActors:
    """The actors of a run, the placement they live in and their WeightSync."""

    cfg: Any
    model_path: str
    sync: WeightSync
    placement: Placement
    engines: EngineGroup | None
    scorer: Any | None

    def start_learners(self, total_steps: int) -> Any:
        """A learner.group.LearnerGroup of conf `learner.num_learners` ranks (one DeepSpeed
        world) in the learner role's bundles; its LR schedule spans `total_steps`."""
        from learner.group import LearnerGroup

        return LearnerGroup(self.cfg, total_steps=total_steps, model_path=self.model_path,
                            placement=self.placement)

    def shutdown(self) -> None:
        """Stop the vLLM actors and give the placement's resources back (learner groups
        are stopped by their own `shutdown`)."""
        import ray

        if self.engines is not None:
            self.engines.shutdown()
        if self.scorer is not None:
            ray.kill(self.scorer, no_restart=True)
        self.placement.remove()


def start_actors(cfg: Any, model_path: str, engines: bool = True, scorer: bool | None = None,
                 learners: bool = True, log_to_driver: bool = True,
                 ready_timeout_s: float = 900.0) -> RunningActors:
    """Connect, check, place and start the roles asked for (module docstring). `scorer`
    None: as training (Stage-2 only). `learners` reserves the learner role's bundles;
    `RunningActors.start_learners` starts the ranks. `log_to_driver=False` keeps the
    actors' logs out of this process's stdout (a command whose stdout is machine-read).
    Raises cluster.resources.ResourceError before starting anything when the cluster
    cannot place them."""
    scorer = with_scorer(cfg, scorer)
    if not (engines or scorer or learners):
        raise ValueError("nothing to start: engines, scorer and learners are all False")
    if starts_local_cluster(cfg) and cfg.ray.num_cpus is not None:
        # The local cluster will have ray.num_cpus CPUs: too few is said before it starts
        # (its GPUs are only known once it runs).
        check_resources(cfg, {"CPU": float(cfg.ray.num_cpus), "GPU": math.inf}, engines,
                        scorer, learners)
    available = connect(cfg, log_to_driver=log_to_driver)
    check_resources(cfg, available, engines, scorer, learners, nodes=node_resources())
    placement = Placement(layout(cfg, engines, scorer, learners))
    sync = WeightSync(ready_timeout_s)
    scorer_handle = group = None
    try:
        if scorer:   # started first: it loads while the engines start
            scorer_handle = start_scoring_actor(
                settings_from_config(cfg, model_path, "scoring"),
                num_cpus=cfg.scoring.num_cpus, num_gpus=cfg.scoring.num_gpus,
                pd_digits=cfg.reward.pd_digits, cpu_slot=cfg.rollout.num_engines,
                placement=placement.options("rollout", -1))
        if engines:
            group = EngineGroup.from_config(cfg, settings_from_config(cfg, model_path, "rollout"),
                                            ready_timeout_s=ready_timeout_s, sync=sync,
                                            placement=placement)
        if scorer_handle is not None:
            wait_ready([scorer_handle], ready_timeout_s)
            sync.register(SCORER_NAME, scorer_handle)
    except BaseException:
        RunningActors(cfg, model_path, sync, placement, group, scorer_handle).shutdown()
        raise
    local_processes.refresh()   # a local cluster's record gains the actors' processes
    return RunningActors(cfg, model_path, sync, placement, group, scorer_handle)
