"""Draw a run's training curves to PNG from its metrics.jsonl, without wandb.

    python -m driver.plots outputs/RUN_NAME           # writes outputs/RUN_NAME/plots/*.png

One figure per panel of driver.metrics.PANELS: rewards (final and each component), reward
std, lengths (completion and think), the think and no-think answer accuracy (the paper's
Fig. 5 right) and the policy loss.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from driver.metrics import PANELS, STEP


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl (a line cut by a crash is skipped)."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write one PNG per panel that has data; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} does not exist: is {run_dir} a run directory?")
    records = read_metrics(metrics)
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for panel, keys in PANELS.items():
        series = {}
        for key in keys:
            points = [(r[STEP], r[key]) for r in records
                      if isinstance(r.get(key), (int, float)) and STEP in r]
            if points:
                series[key] = points
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key, points in series.items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=key, marker="." if len(xs) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(f"{run_dir.name}: {panel}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{panel}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory holding metrics.jsonl")
    args = parser.parse_args(argv)
    try:
        paths = plot_run(args.run_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
