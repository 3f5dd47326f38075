"""The learner: the GRPO loss of Eq. 7 (pure), DeepSpeed learner actors, weight push,
checkpoints.

    from learner import LearnerGroup, PromptGroup, Completion, policy_loss

DeepSpeed is imported only inside the actors, Ray only where actors are made or called.
"""

from learner.experience import Completion, PromptGroup
from learner.group import LearnerGroup
from learner.loss import policy_loss
from learner.weight_push import ObjectStoreTransport, WeightTransport

__all__ = [
    "Completion",
    "LearnerGroup",
    "ObjectStoreTransport",
    "PromptGroup",
    "WeightTransport",
    "policy_loss",
]
