"""Weights learner -> rollout engines and scoring actor, both ends.

- weight_sync.buckets: the full weights cut into buckets (ZeRO-3 gathers included).
- weight_sync.transport: how a bucket travels (publish on learner rank 0, fetch in a
  receiver); `TRANSPORTS` is what conf `weights.transport` may name.
- weight_sync.receiver: a receiver's all-or-nothing, versioned load.
- weight_sync.sync: WeightSync, the driver's one owner of versions, newest buckets and
  the version checks on results.
"""
