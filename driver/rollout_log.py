"""rollouts.jsonl: a sample of each step's rollouts, so that the think can be read.

Each step writes every rollout of its first `logging.rollouts_per_step` groups (a group is
one image's G rollouts; the batch order is the data stream's shuffle, so the sample moves
over the data): step, sample id, judged image, prompt mode, the full text, every reward
component, the advantage and the lengths. The same rows go to a wandb Table
(`rollouts/samples`) when wandb is on. On resume the lines of steps after the checkpoint
are dropped first (`rewind`, driver.metrics_sink.cut_jsonl), so every step appears once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from driver.metrics_sink import cut_jsonl

WANDB_TABLE = "rollouts/samples"
FILE = "rollouts.jsonl"


def _plain(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def rollout_records(step: int, mode: str, samples: list[dict], exp: Any,
                    groups: int) -> list[dict[str, Any]]:
    """The rows of the first `groups` groups of one step's StepExperience."""
    rows = []
    for i, sample in enumerate(samples[:max(0, int(groups))]):
        for j, text in enumerate(exp.texts[i]):
            row = {"step": step, "sample_id": sample["id"], "image": sample["images"][-1],
                   "mode": mode, "rollout": j, "text": text}
            for key in ("mos", "answer"):
                if sample.get(key) is not None:
                    row[f"gt_{key}"] = sample[key]
            row.update({k: _plain(v[i, j]) for k, v in exp.per_rollout.items()})
            rows.append(row)
    return rows


class RolloutLog:
    """Appends rollout rows to <run>/rollouts.jsonl (and a wandb Table)."""

    def __init__(self, run_dir: Path, groups_per_step: int,
                 wandb_run: Callable[[], Any] = lambda: None) -> None:
        """`wandb_run()`: the run's current wandb run, or None (asked at each step: a
        rewind replaces the logger's run)."""
        self.path = Path(run_dir) / FILE
        self.groups = groups_per_step
        self.wandb_run = wandb_run

    def rewind(self, step: int) -> None:
        """Drop the rows after `step` (see MetricsLogger.rewind)."""
        cut_jsonl(self.path, step)

    def log(self, step: int, mode: str, samples: list[dict], exp: Any) -> int:
        """Write this step's rows (before the step's metrics are committed to wandb);
        returns how many."""
        rows = rollout_records(step, mode, samples, exp, self.groups)
        if not rows:
            return 0
        with self.path.open("a") as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in rows))
        run = self.wandb_run()
        if run is not None:
            import wandb

            columns = list(dict.fromkeys(k for r in rows for k in r))
            table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns]
                                                       for r in rows])
            run.log({WANDB_TABLE: table}, step=step, commit=False)
        return len(rows)
