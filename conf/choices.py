"""The values each enumerated config key may take: plain data, written here once.

The module that implements a choice imports its list from here (rewards.advantages its
modes, weight_sync.transport its transports, ...) and refuses any other value at use; the
loader checks a config against the same lists before anything starts, so a bad value is
one line naming the key and its choices. Keeping the lists here, as data, is what lets
conf/ sit below every other package: it imports none of them.
"""

from __future__ import annotations

STAGES = (1, 2)                                  # 1 = Refine-Perception, 2 = scoring (PD)
ADVANTAGE_MODES = ("clipped_positive", "standard")   # rewards.advantages: Eq. 6 | GRPO
STD_KINDS = ("sample", "population")             # rewards.advantages: Eq. 6's std
PD_WEIGHT_SCHEMES = ("paper", "reference")       # rewards.scoring: Eq. 2's digit weights
CHOICE_MODES = ("mean", "all")                   # rewards.perception: multi-choice reward
AGGREGATIONS = ("token_mean", "seq_mean")        # learner.loss: Eq. 7's mean
PRECISIONS = ("bf16", "fp32")                    # learner.ds_config
LR_SCHEDULES = ("cosine", "constant")            # learner.ds_config
ZERO_STAGES = (0, 1, 2, 3)                       # learner.ds_config
TRANSPORTS = ("object_store", "collective")      # weight_sync.transport
COLLECTIVE_BACKENDS = ("auto", "gloo", "nccl")   # weight_sync.transport
LOGGING_BACKENDS = ("wandb", "tensorboard")      # driver.metrics_sink
ATTN_IMPLEMENTATIONS = (None, "eager", "sdpa", "flash_attention_2")   # learner.learner_actor
LORA_PUSHES = ("adapter", "merged")              # weight_sync.lora: what a LoRA push carries
ENGINE_DTYPES = ("auto", "float32", "bfloat16", "float16")   # actors.engine_settings (vLLM)

# config key -> its choices: what conf/loader.py checks.
CHOICES: dict[str, tuple] = {
    "stage": STAGES,
    "reward.advantage": ADVANTAGE_MODES,
    "reward.adv_std": STD_KINDS,
    "reward.pd_weights": PD_WEIGHT_SCHEMES,
    "reward.choice_mode": CHOICE_MODES,
    "train.loss_agg": AGGREGATIONS,
    "train.precision": PRECISIONS,
    "train.lr_schedule": LR_SCHEDULES,
    "learner.zero_stage": ZERO_STAGES,
    "weights.transport": TRANSPORTS,
    "weights.backend": COLLECTIVE_BACKENDS,
    "model.attn_implementation": ATTN_IMPLEMENTATIONS,
    "lora.push": LORA_PUSHES,
    "rollout.dtype": ENGINE_DTYPES,
}
# config key -> the choices each element of its list may take.
LIST_CHOICES: dict[str, tuple] = {
    "logging.backends": LOGGING_BACKENDS,
}
# keys that were renamed: the old name -> what to write now.
RENAMED = {
    "logging.wandb": "logging.backends=[wandb]",
    "data.train_manifest": "data.train_files=... (manifests and data files alike)",
    "data.test_manifest": "data.test_files=... (validation reads data.val_files)",
}
