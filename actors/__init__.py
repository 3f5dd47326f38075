"""Ray actors around vLLM, one file per role:

- actors.prompting: the one prompt builder (sample + mode -> chat text, resized images,
  token ids; the learner's processor inputs; boxes between original and model pixels).
- actors.engine_settings: conf -> EngineSettings and the sampling dict (pure).
- actors.engine_host: EngineHost, a vLLM engine with its prompt builder and weight
  receiver; actors.worker_extension: the worker-side weight load.
- actors.rollout_engine: RolloutEngine (Ray actor "rollout-engine-i"), PromptRollouts.
- actors.engine_group: EngineGroup (spread a batch, gather in order, redo what a dead or
  restarted engine answered).
- actors.scoring_actor: ScoringActor ("scoring-actor"): z_think / z_ref of the PD reward
  (Eqs. 2-4) and digit distributions (Eq. 8).
- actors.launcher: the one place a config becomes these actors.

Modules are imported by name (`from actors.prompting import PromptBuilder`): this package
imports nothing itself, so the learner and the evaluations can use the prompt builder
without loading the actor code; vLLM is imported only inside the actor processes.
"""
