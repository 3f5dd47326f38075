"""What runs in the driver process, one file per job:

- driver.cluster: join the job's Ray cluster or start a local one; check that the actor
  groups fit before any starts.
- driver.data_stream: seeded, resumable batches of manifest samples.
- driver.experience_maker: rollouts -> rewards -> advantages -> the learner's groups.
- driver.metrics: the one catalogue of metric names; driver.metrics_sink: metrics.jsonl,
  wandb, Ray gauges, the think-collapse watch; driver.plots: PNG curves.

Modules are imported by name; launch.py composes them into the stage loop.
"""
