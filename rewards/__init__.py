"""Rewards and group advantages of Refine-IQA (paper Eqs. 1-6), as pure functions.

Strings and numbers in, numbers out: no Ray, no model, numpy at most. The answer syntax
comes from conf/prompts.yaml (every parser takes an optional `prompts` node).

Stage-2 scoring: extract_score, format_reward, answer_reward (Eq. 1), mos_digits,
digit_weights / pd_weight_vector / pd_reward (Eqs. 2-4), final_reward (Eq. 5),
group_advantages (Eq. 6); the per-step batch forms stage2_rewards, answer_rewards,
batch_pd_rewards, combine_rewards and batch_advantages. Stage-1 perception: choice_reward, iou,
grounding_reward, perception_format_reward and the batch form
stage1_rewards. Optional: ranking_reward (PreResQ-style inter-image order).
"""

from rewards.advantages import ADVANTAGE_MODES, STD_KINDS, batch_advantages, group_advantages
from rewards.batch import Stage2Rewards, combine_rewards, stage2_rewards
from rewards.parsing import (
    answer_content,
    extract_score,
    format_reward,
    grammar,
    score_prefix_end,
    think_content,
    think_span,
)
from rewards.perception import (
    CHOICE_MODES,
    choice_parts,
    choice_reward,
    grounding_reward,
    iou,
    parse_box,
    perception_format_reward,
    stage1_rewards,
)
from rewards.ranking import ranking_reward
from rewards.scoring import (
    PD_WEIGHT_SCHEMES,
    answer_reward,
    answer_rewards,
    batch_pd_rewards,
    digit_weights,
    final_reward,
    mos_digits,
    pd_reward,
    pd_weight_vector,
)

__all__ = [
    "ADVANTAGE_MODES",
    "CHOICE_MODES",
    "PD_WEIGHT_SCHEMES",
    "STD_KINDS",
    "Stage2Rewards",
    "answer_content",
    "answer_reward",
    "answer_rewards",
    "batch_advantages",
    "batch_pd_rewards",
    "choice_parts",
    "choice_reward",
    "combine_rewards",
    "digit_weights",
    "extract_score",
    "final_reward",
    "format_reward",
    "grammar",
    "grounding_reward",
    "group_advantages",
    "iou",
    "mos_digits",
    "parse_box",
    "pd_reward",
    "pd_weight_vector",
    "perception_format_reward",
    "ranking_reward",
    "stage1_rewards",
    "score_prefix_end",
    "stage2_rewards",
    "think_content",
    "think_span",
]
