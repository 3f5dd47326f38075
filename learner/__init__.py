"""The learner, one file per job:

- learner.loss: the clipped policy-gradient loss of Eq. 7 (pure).
- learner.experience: PromptGroup / Completion, micro-batch planning and padding (pure).
- learner.ds_config: conf -> DeepSpeed config and learning-rate schedule (pure).
- learner.learner_actor: one DeepSpeed rank (Ray actor "learner-<rank>").
- learner.group: LearnerGroup, the ranks driven as one.
- learner.checkpoint: checkpoint folders, and `resolve_model_path`, the one reader of
  conf model.path; learner.cold_start: the embedded tiny model's supervised warm-up.

Modules are imported by name; this package imports nothing itself, so the pure parts
load without DeepSpeed or Ray.
"""
