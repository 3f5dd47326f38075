"""Ray actors around vLLM: rollout engines, the PD scoring actor, the weight receiving end.

- actors.prompting: the one prompt builder (sample + mode -> chat text, resized images,
  token ids; the learner's processor inputs; box conversion original <-> model pixels).
- actors.vllm_engine: EngineSettings (from conf), RolloutEngine (Ray actor "rollout-engine-i").
- actors.engine_group: EngineGroup (spread a batch, gather in order, survive engine deaths).
- actors.scoring_actor: ScoringActor (Ray actor "scoring-actor"): z_think / z_ref of the PD
  reward (Eqs. 2-4) and digit distributions (Eq. 8).
- actors.weights: update_weights(version, buckets): validation, versioning, rollback.

vLLM is imported only inside the actor processes.
"""

from actors.engine_group import EngineGroup, split_evenly
from actors.prompting import (
    PreparedPrompt,
    PromptBuilder,
    box_to_model,
    box_to_original,
    model_input_size,
)
from actors.scoring_actor import PDScores, ScoringActor, start_scoring_actor
from actors.vllm_engine import (
    EngineSettings,
    PromptRollouts,
    Rollout,
    RolloutEngine,
    resolve_model_path,
    sampling_from_config,
    settings_from_config,
    start_rollout_engine,
)
from actors.weights import BrokenEngineError, StaleWeightsError, WeightUpdateError

__all__ = [
    "BrokenEngineError", "EngineGroup", "EngineSettings", "PDScores", "PreparedPrompt",
    "PromptBuilder", "PromptRollouts", "Rollout", "RolloutEngine", "ScoringActor",
    "StaleWeightsError", "WeightUpdateError", "box_to_model", "box_to_original",
    "model_input_size", "resolve_model_path", "sampling_from_config", "settings_from_config",
    "split_evenly", "start_rollout_engine", "start_scoring_actor",
]
