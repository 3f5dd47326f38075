"""The one place a config becomes vLLM actors: the rollout engines and the scoring actor.

Training (launch.py) and every evaluation start them here, so both run the model with the
same engine settings, CPU slots and prompts. Each actor registers as a receiver of the
WeightSync it is given, which owns the weights versions from then on.
"""

from __future__ import annotations

from typing import Any

from actors.engine_group import EngineGroup
from actors.engine_host import wait_ready
from actors.engine_settings import settings_from_config
from actors.scoring_actor import start_scoring_actor
from weight_sync.sync import WeightSync

SCORER_NAME = "scoring-actor"


def start_vllm_actors(cfg: Any, model_path: str, sync: WeightSync, engines: bool = True,
                      scorer: bool = True, ready_timeout_s: float = 900.0,
                      placement: Any = None) -> tuple[EngineGroup | None, Any | None]:
    """(EngineGroup of conf `rollout.num_engines` engines on CPU slots 0..N-1, the
    ScoringActor on slot N), each left out when not asked for; both start at once and are
    ready on return. `placement` (driver.placement.Placement, or None: where Ray likes)
    puts them into the rollout role's bundles, the scorer on the first rollout node."""
    scorer_handle = None
    if scorer:
        scorer_handle = start_scoring_actor(
            settings_from_config(cfg, model_path, "scoring"), num_cpus=cfg.scoring.num_cpus,
            num_gpus=cfg.scoring.num_gpus, pd_digits=int(cfg.reward.pd_digits),
            cpu_slot=int(cfg.rollout.num_engines),
            placement=placement.options("rollout", -1) if placement is not None else None)
    group = None
    if engines:
        group = EngineGroup.from_config(cfg, settings_from_config(cfg, model_path, "rollout"),
                                        ready_timeout_s=ready_timeout_s, sync=sync,
                                        placement=placement)
    if scorer_handle is not None:
        wait_ready([scorer_handle], ready_timeout_s)
        sync.register(SCORER_NAME, scorer_handle)
    return group, scorer_handle
