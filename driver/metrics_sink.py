"""Where the step metrics go: metrics.jsonl (always), wandb and TensorBoard (conf
`logging.backends`), Ray gauges.

Names come from the catalogue (driver/metrics.py); a name not declared there is refused.
Every step writes one JSON line to `<run dir>/metrics.jsonl`; on resume the lines of steps
after the checkpoint are dropped first (`rewind`) (written to a temporary file and renamed, so a crash
there loses nothing), so each step appears once. The same numbers, under the same names, go to wandb
(`logging.backends=[wandb]`; `WANDB_MODE=offline` works), to TensorBoard
(`logging.backends=[tensorboard]`: event files in `<run>/tensorboard`, `tensorboard --logdir
<run>/tensorboard --host 127.0.0.1`) and to Ray custom metrics (gauges named
`refine_iqa_<name>`, charted by Prometheus + Grafana when the cluster has them set up).

wandb's steps only go forward: a step logged again is dropped. So when a rewind drops
steps wandb already has, its run is rewound too - `wandb.init(resume_from="<id>?_step=N")`,
W&B's run rewind, which truncates the run's history at the checkpoint's step - and the
redone steps replace the first copies. With no checkpoint (every line dropped) the wandb
run starts over under a new id. A server that refuses the rewind (it is a preview feature
of W&B) gets the run resumed forward instead, with a warning: it then keeps its first copy
of the redone steps. TensorBoard keeps both copies of a redone step (its readers show the
later one).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from driver.metrics import STEP, describe

log = logging.getLogger("refine_iqa")
TENSORBOARD_DIR = "tensorboard"


def cut_jsonl(path: Path, through_step: int) -> None:
    """Keep the lines of a step log (metrics.jsonl, rollouts.jsonl) up to `through_step`:
    a resumed run redoes the later steps. A line cut by a crash is dropped. The file is
    rewritten under a temporary name and renamed, so a crash here loses nothing."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get(STEP, 0) <= through_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as handle:
        handle.write("".join(k + "\n" for k in kept))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def last_step(path: Path) -> int | None:
    """The highest step of a step log (None: no line)."""
    steps = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                steps.append(int(json.loads(line).get(STEP, 0)))
            except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
                continue
    return max(steps, default=None)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; None says "not measured this step"
    return value


class MetricsLogger:
    """Writes step metrics to metrics.jsonl, wandb and Ray gauges."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any], backends: Sequence[str] = (),
                 project: str = "refine-iqa") -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")
        self._gauges: dict[str, Any] = {}
        self._wandb_args = (Path(run_dir), dict(config), project)
        self.wandb_run = None
        self.tensorboard = None
        if "wandb" in backends:
            self.wandb_run = self._start_wandb()
        if "tensorboard" in backends:
            self.tensorboard = self._start_tensorboard(Path(run_dir) / TENSORBOARD_DIR)

    def _start_wandb(self, rewind_to: int | None = None):
        """Start (or resume) the run's wandb run; `rewind_to`: W&B's rewind of the run to
        that step (below 0: a new run id, nothing of the old run kept)."""
        import wandb

        run_dir, config, project = self._wandb_args
        id_file = run_dir / "wandb_id.txt"
        # The run id is kept beside the metrics so that a resumed run continues one wandb run.
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        if rewind_to is not None and rewind_to < 0:
            run_id = uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        common = {"project": project, "name": run_dir.name, "dir": str(run_dir),
                  "config": config}
        if rewind_to is not None and rewind_to >= 0:
            # A folder of its own: wandb names it by the start second and the run id, which
            # a rewind right after a resume's start would share.
            suffix = wandb.Settings(x_sync_dir_suffix=f"rewind-{rewind_to}")
            try:
                return wandb.init(resume_from=f"{run_id}?_step={rewind_to}", settings=suffix,
                                  **common)
            except Exception as err:   # noqa: BLE001 - wandb raises its own kinds
                log.warning("wandb refused to rewind run %s to step %d (%s): resuming it "
                            "forward, it keeps its first copy of the steps redone", run_id,
                            rewind_to, err)
        return wandb.init(id=run_id, resume="allow", **common)

    @staticmethod
    def _start_tensorboard(log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RuntimeError("logging.backends lists tensorboard, which is not installed: "
                               "pip install '.[tensorboard]' (or drop it from the "
                               "list)") from None
        return SummaryWriter(log_dir=str(log_dir))

    def _gauge(self, key: str):
        if key not in self._gauges:
            from ray.util.metrics import Gauge

            name = "refine_iqa_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
            self._gauges[key] = Gauge(name, description=describe(key))
        return self._gauges[key]

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record one step's metrics everywhere; KeyError for an undeclared name."""
        for key in metrics:
            describe(key)
        record = {STEP: step, "time": time.time(),
                  **{k: _finite(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        numeric = {k: v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.wandb_run is not None:
            self.wandb_run.log(numeric, step=step, commit=True)
        if self.tensorboard is not None:
            for key, value in numeric.items():
                if key not in (STEP, "time"):
                    self.tensorboard.add_scalar(key, value, global_step=step)
            self.tensorboard.flush()
        import ray

        if ray.is_initialized():
            for key, value in numeric.items():
                if key != "time":
                    self._gauge(key).set(float(value))

    def alert(self, title: str, text: str) -> None:
        """A warning users should see: the log, and a wandb alert when wandb is on."""
        log.warning("%s: %s", title, text)
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.alert(title=title, text=text, level=wandb.AlertLevel.WARN)

    def rewind(self, step: int) -> None:
        """Drop the lines after `step` (a resume or a learner restart goes back to a
        checkpoint and redoes the later steps; -1: every line), and rewind the wandb run
        when it has any of them (module docstring)."""
        logged = last_step(self.path)
        self._file.close()
        cut_jsonl(self.path, step)
        self._file = self.path.open("a")
        if self.wandb_run is not None and logged is not None and logged > step:
            self.wandb_run.finish()
            self.wandb_run = self._start_wandb(rewind_to=step)

    def close(self) -> None:
        self._file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


class ThinkCollapseWatch:
    """Warns when the mean think length falls below a fraction of its early value.

    "Think collapse" (paper, Fig. 2) is the failure the PD reward exists to prevent: the
    think shrinks while the score still improves. The early value is the mean over the
    first `warmup` steps of the run.
    """

    def __init__(self, fraction: float, warmup: int = 5) -> None:
        self.fraction, self.warmup = fraction, warmup
        self.early: list[float] = []
        self.warned = False

    def update(self, think_len: float) -> str | None:
        """Feed one step's mean think length; returns a warning text once, when it fires."""
        if not math.isfinite(think_len):
            return None
        if len(self.early) < self.warmup:
            self.early.append(think_len)
            return None
        base = sum(self.early) / len(self.early)
        if not self.warned and base > 0 and think_len < self.fraction * base:
            self.warned = True
            return (f"mean think length {think_len:.1f} fell below {self.fraction:.0%} of its "
                    f"early value {base:.1f}: think collapse (paper Fig. 2)")
        return None
