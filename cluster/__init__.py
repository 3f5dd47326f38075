"""Ray and the roles of a run, below both training (driver/) and evaluation (evals/):

- cluster.connect: join the job's Ray cluster, or start a local one on 127.0.0.1.
- cluster.resources: what each role (learner ranks; rollout engines + scoring actor) asks
  for, declared once, and the check that the cluster can give it.
- cluster.placement: one placement group per role, held for the run.
- cluster.start: `start_actors`, the one start-up of the vLLM actors and the learners.

Modules are imported by name (`from cluster.start import start_actors`).
"""
