"""Validation during training, the best checkpoint it selects, and the final test.

Every `eval.every` steps, before the first step and after the last, the current policy
answers the validation samples (driver.data_splits: `data.val_files`, or carved from the
training files; capped at `eval.max_samples` by a subset drawn once from `run.seed`, the
same every time) on the running rollout engines and scoring actor - no engines of its own
- through the very evaluation code of `python -m evals.*`, greedy as the paper evaluates:

- Stage-2: SRCC and PLCC (logistic4) of the numeric answers and of Eq. 8's expected score,
  answer accuracy and parse failures, in think and no-think mode (evals.scoring_eval);
- Stage-1: accuracy of the object, distortion class and severity answers and of all three,
  mean grounding IoU, over all prompts and split into full- and no-reference
  (evals.perception_eval).

Names are driver.metrics' `val/*`; an undefined value (a correlation of fewer than two
readable answers) is NaN, written as null. `BestCheckpoint` keeps a Hugging Face export of
the step with the best `checkpoint.best_metric` in `<run>/best/`, outside the pruning of
`checkpoint.keep_last`; its marker file records the metric, value, step and the split it
was chosen on (always val: model selection never reads the test split), which a resumed
run reads back. With `eval.final_test`, the same evaluation runs once on every test
sample after the last step, logged as `test/*` (`test_metrics`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from driver import metrics as M
from driver.cadence import due

BEST_DIR = "best"


def best_metric(cfg: Any) -> str | None:
    """The val/* name conf `checkpoint.best_metric` selects (None: no best/ export)."""
    from conf import ConfigError

    name = cfg.checkpoint.best_metric
    if name == "none":
        return None
    if name == "auto":
        return M.BEST_DEFAULT[cfg.stage]
    if not name.startswith("val/") or name not in M.CATALOGUE:
        valid = sorted(n for n in M.CATALOGUE if n.startswith("val/"))
        raise ConfigError(f"checkpoint.best_metric={name} is not a validation metric; "
                          f"choose auto, none or one of {valid}")
    return name


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def held_out_subset(samples: list[dict], max_samples: int | None, seed: int) -> list[dict]:
    """At most `max_samples` of `samples`, drawn once from `seed` (all when None)."""
    if max_samples is None or len(samples) <= int(max_samples):
        return list(samples)
    order = np.random.default_rng([int(seed), 7]).permutation(len(samples))
    return [samples[i] for i in sorted(order[:int(max_samples)])]


class Validator:
    """Validation on the running actors (module docstring). `samples` are the usable
    held-out samples, `skipped` {id: reason} of those the driver's check left out before
    the run; with `check` (driver.sample_checks) each validation checks its samples again
    and leaves out, for good, one that became unusable since (a file removed, say), so
    that no engine is handed an image it cannot read: the count is val/skipped_samples."""

    def __init__(self, cfg: Any, engines: Any, scorer: Any, sync: Any,
                 samples: list[dict], check: Any = None,
                 skipped: dict[str, str] | None = None, cap: bool = True) -> None:
        from actors.engine_settings import sampling_from_config
        from evals.engines import EvalEngines

        self.stage = cfg.stage
        self.every = cfg.eval.every
        self.eps = cfg.reward.eps
        self.prompts = cfg.prompts
        self.check, self.skipped = check, dict(skipped or {})
        # `cap` False: every sample (the final test), not eval.max_samples of them
        self.samples = held_out_subset(samples, cfg.eval.max_samples if cap else None,
                                       cfg.run.seed)
        self.engines = EvalEngines(engines, scorer, sampling=sampling_from_config(cfg, True),
                                   batch_size=max(1, len(self.samples)), sync=sync,
                                   progress=False)

    def due(self, step: int, last_step: int) -> bool:
        """Before the first step (0), every `eval.every` steps, after the last one."""
        # Held-out samples all skipped: the counts are still logged, so the loss is seen.
        return bool(self.samples or self.skipped) and due(step, self.every,
                                                          always=(0, last_step))

    def run(self) -> dict[str, float]:
        """The val/* metrics of the current weights and the seconds they took (only the
        counts when no held-out sample is left to validate on)."""
        start = time.perf_counter()
        if self.check is not None:
            from driver.sample_checks import check_all

            checked = check_all(self.samples, self.check)
            self.samples, self.skipped = checked.usable, {**self.skipped, **checked.skipped}
        metrics = {}
        if self.samples:
            metrics = self._scoring() if self.stage == 2 else self._perception()
        metrics[M.VAL_SAMPLES] = float(len(self.samples))
        metrics[M.VAL_SKIPPED] = float(len(self.skipped))
        metrics[M.TIMING_TESTING] = time.perf_counter() - start
        return metrics

    def _scoring(self) -> dict[str, float]:
        from evals.scoring_eval import evaluate_samples, headline

        results, _, preds = evaluate_samples(self.engines, self.samples, "validation",
                                             ("think", "no_think"), ("numeric", "prob"))
        mos = [float(s["mos"]) for s in self.samples]
        out = {}
        for mode in ("think", "no_think"):
            values = headline(results[mode], preds[(mode, "numeric")], mos, self.eps)
            out.update({M.VAL_SCORING[(mode, q)]: _nan(v) for q, v in values.items()})
        return out

    def _perception(self) -> dict[str, float]:
        from evals.perception_eval import PARTS, part_accuracy, perception_records

        records = perception_records(self.engines, self.samples, self.prompts)
        parts = part_accuracy(records)
        out = {}
        for variant, accuracy in parts.items():
            for q, value in accuracy.items():
                out[M.VAL_PERCEPTION[(variant, q)]] = _nan(value)
            boxes = [r["value"] for r in records if r["task"] == "grounding"
                     and (variant == "all" or r["reference"] == variant)]
            out[M.VAL_PERCEPTION[(variant, "iou")]] = (float(np.mean(boxes)) if boxes
                                                       else float("nan"))
        part_means = [out[M.VAL_PERCEPTION[("all", p)]] for p in PARTS]
        out[M.VAL_ACC_MEAN] = (float(np.mean(part_means))
                               if all(math.isfinite(v) for v in part_means) else float("nan"))
        return out


class BestCheckpoint:
    """The best validated step's export in <run>/best/ (module docstring)."""

    def __init__(self, run_dir: Path, metric: str) -> None:
        self.dir = Path(run_dir) / BEST_DIR
        self.metric = metric
        self.value, self.step = -math.inf, None
        marker = self.dir / "COMPLETE"
        if marker.is_file():
            saved = json.loads(marker.read_text())
            if saved.get("metric") == metric:
                self.value, self.step = float(saved["value"]), int(saved["step"])

    def improves(self, metrics: dict[str, float]) -> bool:
        """Whether `metric` in these metrics beats the best so far."""
        value = metrics.get(self.metric)
        return value is not None and math.isfinite(value) and value > self.value

    def update(self, step: int, metrics: dict[str, float], learners: Any) -> bool:
        """Export the current weights when `metric` beats the best so far; True if so."""
        if not self.improves(metrics):
            return False
        value = metrics[self.metric]
        learners.export_hf(self.dir, meta={"metric": self.metric, "value": float(value),
                                           "step": int(step), "split": "val"})
        self.value, self.step = float(value), int(step)
        return True


def test_metrics(validator: Validator) -> dict[str, float]:
    """The final test (eval.final_test): `validator` (on the test samples, uncapped) run
    once, its val/* quantities under their test/* names, and the seconds it took."""
    start = time.perf_counter()
    out = {M.TEST_OF[k]: v for k, v in validator.run().items() if k in M.TEST_OF}
    out[M.TIMING_FINAL_TEST] = time.perf_counter() - start
    return out
