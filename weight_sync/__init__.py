"""Weights learner -> rollout engines and scoring actor, both ends.

- weight_sync.buckets: the full weights cut into buckets (ZeRO-3 gathers included).
- weight_sync.transport: how a bucket travels, streamed bucket by bucket (object store;
  collective: gloo on CPU, NCCL on GPU); `TRANSPORTS` is what conf `weights.transport`
  may name.
- weight_sync.group: process groups and stores bound to one address (the weights group,
  and the learners' torch.distributed world).
- weight_sync.receiver: a receiver's all-or-nothing, versioned, streamed load.
- weight_sync.sync: WeightSync, the driver's one owner of versions, newest buckets and
  the version checks on results.
"""
