"""What runs in the driver process, one file per job:

- driver.trainer: the stage loop (`Trainer.fit`, `Trainer.train_step`), checkpoints and
  recovery.
- driver.training_data: which samples a run trains and validates on, the run's data
  stream and the fingerprint of its order; driver.data_stream: seeded, resumable batches.
- driver.experience_maker: rollouts -> rewards -> advantages -> the learner's groups;
  driver.async_rollout: the same, one step ahead (train.async_rollout).
- driver.validation: held-out validation and the best checkpoint; driver.cadence: when an
  "every N steps" is due.
- driver.metrics: the one catalogue of metric names and the step's metric assembly;
  driver.metrics_sink: metrics.jsonl, wandb, Ray gauges, the think-collapse watch;
  driver.rollout_log: rollouts.jsonl; driver.plots: PNG curves; driver.run_dir: the run
  directory's lock.

Modules are imported by name; launch.py sets a run up and hands it to the Trainer.
"""
