"""Every metric name the run logs, declared once, with verl's names where verl has one.

Producers (driver.experience_maker, and the step's assembly below: `step_metrics`,
`event_metrics`, the learner statistics) import the names from here; MetricsLogger refuses a name that is not declared, and metrics.jsonl,
wandb, the Ray gauges, the plots and the tests all read this one catalogue
(tests/test_driver_metrics.py also checks that no other module spells a name out).

verl's conventions kept: `critic/score/*` (the reward function's value per rollout; this
project adds no KL to it, so verl's `critic/rewards/*` would be the same numbers and is not
logged twice), `critic/advantages/{mean,max,min}`, `response_length/*`, `prompt_length/*`,
`actor/*`, `timing_s/*` (seconds per phase), and `perf/throughput` = (prompt + response
tokens of every rollout of the step) / (step seconds x devices), with devices the GPUs the
run's actors hold, or 1 on a CPU-only run (the whole machine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# When a metric is written: every step of both stages, every step of one stage, or only
# on some steps (a cadence or a setting decides).
WHEN = ("step", "stage1", "stage2", "periodic")


@dataclass(frozen=True)
class Metric:
    """A declared metric: its name, what it means, when it is written."""

    name: str
    meaning: str
    when: str = "step"


CATALOGUE: dict[str, Metric] = {}


def _declare(name: str, meaning: str, when: str = "step") -> str:
    if when not in WHEN or name in CATALOGUE:
        raise ValueError(f"metric {name!r}: bad `when` {when!r} or declared twice")
    CATALOGUE[name] = Metric(name, meaning, when)
    return name


@dataclass(frozen=True)
class Family:
    """Statistics of one per-rollout quantity: `<prefix>/<stat>` for each stat."""

    prefix: str
    stats: tuple[str, ...]

    def __call__(self, values: Sequence[float] | np.ndarray) -> dict[str, float]:
        """{name: value} of each statistic over `values` (population std); ValueError on
        no values (a statistic of nothing is not 0)."""
        flat = np.asarray(values, dtype=float).ravel()
        if flat.size == 0:
            raise ValueError(f"{self.prefix}: no values to summarise")
        funcs = {"mean": np.mean, "std": np.std, "max": np.max, "min": np.min}
        return {f"{self.prefix}/{s}": float(funcs[s](flat)) for s in self.stats}

    def name(self, stat: str) -> str:
        """The full name of one statistic, e.g. critic/score/mean."""
        if stat not in self.stats:
            raise KeyError(f"{self.prefix} has no {stat!r} statistic; it has {self.stats}")
        return f"{self.prefix}/{stat}"


def _family(prefix: str, meaning: str, stats: tuple[str, ...] = ("mean", "max", "min"),
            when: str = "step") -> Family:
    for stat in stats:
        _declare(f"{prefix}/{stat}", f"{meaning} ({stat})", when)
    return Family(prefix, stats)


STEP = _declare("step", "training step, 1-based")
EPOCH = _declare("epoch", "epoch of the step's batch")
WEIGHTS_VERSION = _declare("weights/version", "weights version the rollouts were made with")
PUSH_BYTES = _declare("weights/push_bytes", "bytes the step's weight push sent to each "
                      "receiver (the full model; with LoRA the adapter alone)")

# -- rewards and advantages ---------------------------------------------------------------
SCORE = _family("critic/score", "final reward per rollout: Eq. 5 in Stage-2, format + task "
                "reward in Stage-1", ("mean", "std", "max", "min"))
ADVANTAGES = _family("critic/advantages", "advantage per rollout (Eq. 6 or standard GRPO)")
REWARD_FORMAT = _family("reward/format", "format reward", ("mean", "std"))
REWARD_ANSWER = _family("reward/answer", "answer reward (Eq. 1): the think answer accuracy",
                        ("mean", "std"), "stage2")
REWARD_PD = _family("reward/pd", "PD reward of the qualified rollouts (Eqs. 2-4); 0 when "
                    "none is qualified", ("mean", "std"), "stage2")
PD_SCORED_FRAC = _declare("reward/pd_scored_frac", "share of rollouts the scoring actor "
                          "teacher-forced (only qualified ones are, Eq. 5)", "stage2")
REWARD_CHOICE = _declare("reward/choice/mean", "multi-choice reward of the choice samples",
                         "stage1")
REWARD_IOU = _declare("reward/iou/mean", "grounding IoU reward of the grounding samples",
                      "stage1")
GROUP_ALL_TIED = _declare("reward/group_all_tied_frac",
                          "groups whose rewards all tie (no learning signal)")
GROUP_NONE_QUALIFIED = _declare("reward/group_none_qualified_frac",
                                "groups where no rollout is qualified (answer and format 1)")

# -- lengths ------------------------------------------------------------------------------
RESPONSE_LENGTH = _family("response_length", "completion tokens")
RESPONSE_CLIP = _declare("response_length/clip_ratio", "completions cut at max_new_tokens")
PROMPT_LENGTH = _family("prompt_length", "prompt tokens, image tokens included")
THINK_LENGTH = _family("think_length", "tokens of the think block (0 without one)",
                       ("mean", "max"), "stage2")
STRIPPED_VISION = _declare("rollout/stripped_vision_tokens",
                           "image placeholder tokens removed from completions")
NO_THINK_ACC = _declare("eval/no_think_answer_acc", "answer accuracy of one greedy no-think "
                        "answer per image of the batch (the paper's Fig. 5, right); every "
                        "eval.nothink_acc_every steps", "periodic")

# -- the update ---------------------------------------------------------------------------
PG_LOSS = _declare("actor/pg_loss", "clipped policy-gradient loss (Eq. 7)")
PG_CLIPFRAC = _declare("actor/pg_clipfrac", "share of tokens whose ratio was clipped")
PPO_KL = _declare("actor/ppo_kl", "approximate KL from the sampling policy to the updated one")
ENTROPY = _declare("actor/entropy", "mean token entropy of the policy")
KL_LOSS = _declare("actor/kl_loss", "KL to the reference model (train.kl_coef > 0)",
                   "periodic")
GRAD_NORM = _declare("actor/grad_norm", "gradient norm before clipping")
LR = _declare("actor/lr", "learning rate of the step")

# -- time ---------------------------------------------------------------------------------
TIMING_GEN = _declare("timing_s/gen", "generating the rollouts")
TIMING_REWARD = _declare("timing_s/reward", "format / answer / task rewards and advantages")
TIMING_PD = _declare("timing_s/pd_score", "PD teacher forcing on the scoring actor",
                     "stage2")
TIMING_UPDATE = _declare("timing_s/update_actor", "the learners' optimizer step")
TIMING_WEIGHTS = _declare("timing_s/update_weights",
                          "gathering the new weights and loading them into every receiver")
TIMING_STEP = _declare("timing_s/step", "the whole step (validation and the no-think "
                       "accuracy are timed apart)")
# The model work inside those phases; what the step spends beyond their sum is overhead
# (Ray calls, prompt building, rewards, weight pushes, bookkeeping).
TIMING_GEN_MODEL = _declare("timing_s/gen_model", "of timing_s/gen: seconds inside vLLM "
                            "(the slowest engine)")
TIMING_PD_MODEL = _declare("timing_s/pd_model", "of timing_s/pd_score: seconds inside vLLM",
                           "stage2")
TIMING_UPDATE_MODEL = _declare("timing_s/update_model", "of timing_s/update_actor: forward + "
                               "backward + optimizer (the slowest rank)")
TIMING_NO_THINK = _declare("timing_s/no_think_acc", "the no-think accuracy's generation",
                           "periodic")
STEP_OVERHEAD = _declare("perf/step_overhead", "timing_s/step over the model work it "
                         "contains (gen_model + pd_model + update_model); 1 = no overhead, "
                         "below 1 when train.async_rollout overlaps generation and update")
TOTAL_TOKENS = _declare("perf/total_num_tokens", "prompt + response tokens of all rollouts")
TIME_PER_STEP = _declare("perf/time_per_step", "seconds of the step (verl's name)")
THROUGHPUT = _declare("perf/throughput", "total_num_tokens / (time_per_step x devices)")
PEAK_MEMORY = _declare("perf/max_memory_allocated_gb", "the learner ranks' peak memory so far, "
                       "the largest rank's (GPU: torch's allocated memory; CPU: the process's "
                       "peak resident size), GB")

# -- held-out validation (driver/validation.py), every eval.every steps ----------------
TIMING_TESTING = _declare("timing_s/testing", "validation on the held-out data", "periodic")
VAL_SAMPLES = _declare("val/samples", "held-out samples validated on", "periodic")
VAL_SKIPPED = _declare("val/skipped_samples", "held-out samples left out so far (an "
                       "unreadable image, a prompt too long): checked before the run "
                       "starts and again at each validation", "periodic")
_VAL_SCORING = {"srcc": "SRCC of the numeric answers", "plcc": "PLCC (logistic4) of the "
                "numeric answers", "eq8_srcc": "SRCC of Eq. 8's expected score",
                "eq8_plcc": "PLCC (logistic4) of Eq. 8's expected score",
                "answer_acc": "share of answers within reward.eps of the MOS (unread: wrong)",
                "parse_fail": "share of answers without a readable score"}
# (mode, quantity) -> name; the think mode (the one trained) has the short names.
VAL_SCORING = {(mode, q): _declare(f"val/{'' if mode == 'think' else 'no_think/'}{q}",
                                   f"{meaning}, {mode} mode", "periodic")
               for mode in ("think", "no_think") for q, meaning in _VAL_SCORING.items()}
_VAL_PARTS = {"object": "object named right", "class": "distortion class named right",
              "severity": "severity named right", "all": "all three right",
              "iou": "mean grounding IoU"}
# (reference variant, quantity) -> name; "all" variants have the short names.
VAL_PERCEPTION = {(v, q): _declare(f"val/{'' if v == 'all' else v + '/'}"
                                   f"{q if q == 'iou' else q + '_acc'}",
                                   f"{meaning}, {v} prompts", "periodic")
                  for v in ("all", "fr", "nr") for q, meaning in _VAL_PARTS.items()}
VAL_ACC_MEAN = _declare("val/acc_mean", "mean of the object, class and severity accuracies",
                        "periodic")
# -- the final test (eval.final_test): every val/* quantity on the test split, once -------
TEST_OF = {name: _declare("test/" + name.removeprefix("val/"), f"{CATALOGUE[name].meaning}, "
                          "on the test split, after the last step (eval.final_test)",
                          "periodic")
           for name in [n for n in CATALOGUE if n.startswith("val/")]}
TIMING_FINAL_TEST = _declare("timing_s/final_test", "the final test (eval.final_test)",
                             "periodic")
# checkpoint.best_metric=auto: the headline of each stage.
BEST_DEFAULT = {1: VAL_ACC_MEAN, 2: VAL_SCORING[("think", "srcc")]}

# -- robustness ---------------------------------------------------------------------------
RESENDS = _declare("events/engine_resends", "rollout chunks redone (engine died or stale)")
RESTARTS = _declare("events/receiver_restarts", "receivers found restarted by Ray so far")
REPLAYS = _declare("events/weight_replays", "newest weights replayed to a receiver so far")
REDOS = _declare("events/stale_redos", "scoring calls redone so far (actor died or stale)")
UNREACHABLE = _declare("events/weight_push_unreachable",
                       "receivers a weight push could not reach so far")
SKIPPED = _declare("data/skipped_samples", "training samples skipped so far (an unreadable "
                   "or too small image, a prompt too long): checked before the run starts")
WEIGHT_GROUPS = _declare("events/weight_groups", "collective weight groups formed so far: "
                         "1 while no receiver restarts and no push fails (0: object store)")
LEARNER_RESTARTS = _declare("events/learner_restarts", "learner groups restarted from the "
                            "newest checkpoint after a rank died, so far")

# What the learner group's statistics are called here.
LEARNER_STATS = {"pg_loss": PG_LOSS, "clip_frac": PG_CLIPFRAC, "approx_kl": PPO_KL,
                 "entropy": ENTROPY, "kl_ref": KL_LOSS, "grad_norm": GRAD_NORM, "lr": LR,
                 "peak_memory_gb": PEAK_MEMORY}


def plugin_metric(function: str) -> str:
    """`reward/<function>/mean`, the metric of a reward plug-in (rewards/plugins.py),
    declared the first time it is asked for: the names depend on the config."""
    name = f"reward/{function}/mean"
    if name not in CATALOGUE:
        _declare(name, f"reward plug-in {function} (reward.plugins): mean over the step's "
                 "rollouts", "periodic")
    return name


def learner_metrics(stats: dict[str, float]) -> dict[str, float]:
    """The learner group's step statistics under their catalogue names."""
    return {name: float(stats[key]) for key, name in LEARNER_STATS.items() if key in stats}


def step_metrics(experience: dict[str, float], stats: dict[str, float], *, epoch: int,
                 update_s: float, push: dict[str, float], step_s: float,
                 gpus: float) -> dict[str, float]:
    """A training step's metrics from what its parts measured: the experience's own
    (driver.experience_maker), the learners' statistics, the update's and the weight
    push's seconds (WeightSync.publish's gather_s + deliver_s), the step's seconds, and
    what follows from them: the overhead over the model work and the throughput."""
    out = {**experience, **learner_metrics(stats), EPOCH: epoch, TIMING_UPDATE: update_s,
           TIMING_UPDATE_MODEL: stats["compute_s"],
           TIMING_WEIGHTS: push["gather_s"] + push["deliver_s"], PUSH_BYTES: push["bytes"],
           TIMING_STEP: step_s}
    model_s = (out[TIMING_GEN_MODEL] + out.get(TIMING_PD_MODEL, 0.0)
               + out[TIMING_UPDATE_MODEL])
    out[STEP_OVERHEAD] = step_s / max(model_s, 1e-9)
    out.update(throughput(out[TOTAL_TOKENS], step_s, gpus))
    return out


def event_metrics(resends: int, sync_counts: dict[str, int], skipped: int,
                  learner_restarts: int) -> dict[str, float]:
    """The recoveries so far (validation's included): chunks the engines redid, the
    WeightSync's counts (weight_sync.sync), samples skipped, learner restarts."""
    return {RESENDS: resends, RESTARTS: sync_counts["restarts"],
            REPLAYS: sync_counts["replays"], REDOS: sync_counts["redos"],
            UNREACHABLE: sync_counts["unreachable"], WEIGHT_GROUPS: sync_counts["groups"],
            SKIPPED: skipped, LEARNER_RESTARTS: learner_restarts}


def throughput(total_tokens: float, seconds: float, devices: float) -> dict[str, float]:
    """perf/time_per_step and perf/throughput as verl defines them (module docstring)."""
    return {TIME_PER_STEP: float(seconds),
            THROUGHPUT: float(total_tokens) / (float(seconds) * max(1.0, float(devices)))}


def required_keys(stage: int) -> list[str]:
    """The names every step of `stage` writes."""
    own = f"stage{int(stage)}"
    return [m.name for m in CATALOGUE.values() if m.when in ("step", own)]


def describe(name: str) -> str:
    """The meaning of a declared metric (KeyError names an undeclared one)."""
    try:
        return CATALOGUE[name].meaning
    except KeyError:
        raise KeyError(f"metric {name!r} is not declared in driver/metrics.py") from None


# The PNG panels of driver.plots, in the order they are drawn.
PANELS = {
    "rewards": [SCORE.name("mean"), REWARD_FORMAT.name("mean"), REWARD_ANSWER.name("mean"),
                REWARD_PD.name("mean"), REWARD_CHOICE, REWARD_IOU],
    "reward_std": [SCORE.name("std"), GROUP_ALL_TIED, GROUP_NONE_QUALIFIED],
    "lengths": [RESPONSE_LENGTH.name("mean"), THINK_LENGTH.name("mean"), RESPONSE_CLIP],
    "accuracy": [NO_THINK_ACC, REWARD_ANSWER.name("mean")],
    "validation": [VAL_SCORING[("think", "srcc")], VAL_SCORING[("no_think", "srcc")],
                   VAL_SCORING[("think", "answer_acc")], VAL_ACC_MEAN,
                   VAL_PERCEPTION[("all", "iou")]],
    "loss": [PG_LOSS, PG_CLIPFRAC, GRAD_NORM],
}
