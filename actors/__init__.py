"""Ray actors around vLLM, one file per role:

- actors.engine_settings: conf -> EngineSettings and the sampling dict (pure).
- actors.engine_host: EngineHost, a vLLM engine with its prompt builder and weight
  receiver; actors.worker_extension: the worker-side weight load.
- actors.rollout_engine: RolloutEngine (Ray actor "rollout-engine-i"), PromptRollouts.
- actors.engine_group: EngineGroup (spread a batch, gather in order, redo what a dead or
  restarted engine answered).
- actors.scoring_actor: ScoringActor ("scoring-actor"): z_think / z_ref of the PD reward
  (Eqs. 2-4) and digit distributions (Eq. 8).

Prompts are built by model_inputs.prompting, one floor down; cluster.start starts these
actors for training and evaluation alike. Modules are imported by name
(`from actors.engine_group import EngineGroup`): this package imports nothing itself, and
vLLM is imported only inside the actor processes.
"""
