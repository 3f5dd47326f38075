"""The table and plots of `make reproduce` (benchmarks/reproduce.py): its rows, named by
their first cells (which scripts look rows up by), laid out like the paper's ablations."""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks.perception_probe import AT_SCORE
from driver import metrics as M
from driver.plots import read_metrics

# (row, title: the table's first cell, which scripts look rows up by; what it mirrors)
PROBE_ROWS = (("probe_teacher", "probe: teacher", "teacher"),
              ("probe_start", "probe: start model", "start model"),
              ("probe_at_score", "probe: start model at the score", AT_SCORE))
ORACLE_ROW = "FR oracle (label ceiling)"
ROWS = (("base", "base (no RL)", "the starting point"),
        ("stage2", "Stage-2 only (think + PD)", "Table 3: RL raises SRCC / PLCC"),
        ("stage2_subset", "Stage-2, learnability subset",
         "the RL machinery apart from the features"),
        ("stage1_stage2", "Stage-1 -> Stage-2", "Table 5: Stage-1 helps scoring"),
        ("stage2_no_pd", "Stage-2 without PD", "Fig. 2 / 5: think collapse; no-think accuracy"),
        ("score_fine_tune", "score fine-tune (labels, no RL)",
         "the model's readout apart from RL: supervised, benchmarks/readout_ceiling.py"))


def cell(table: dict, row: str, key: str, digits: int = 2) -> str:
    """"mean [min, max]" over the seeds ("-" where it does not apply)."""
    t = table.get(row)
    if not t or key not in t["mean"] or not math.isfinite(t["mean"][key]):
        return "-"
    mean, lo, hi = t["mean"][key], t["min"][key], t["max"][key]
    if len(t["seeds"]) < 2 or abs(hi - lo) < 10 ** -digits:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(table: dict, prep: dict | None = None) -> str:
    """The results table, laid out like the paper's ablations; the probes and the FR
    oracle (one number each, in the SRCC column) first."""
    cols = [("SRCC", "think/srcc"), ("PLCC", "think/plcc"), ("Eq.8 SRCC", "think/eq8_srcc"),
            ("Eq.8 PLCC", "think/eq8_plcc"), ("acc", "think/answer_acc"),
            ("unread", "think/parse_fail"), ("no-think SRCC", "no_think/srcc"),
            ("no-think Eq.8 SRCC", "no_think/eq8_srcc"), ("no-think acc", "no_think/answer_acc")]
    head = ("| run | " + " | ".join(c for c, _ in cols) + " | think len start -> end | "
            "train no-think acc start -> end | Stage-1 class / severity acc: validation "
            "start -> end, test; train choice reward | wall |")
    lines = [head, "|" + "---|" * (len(cols) + 5)]
    blank = " | ".join("-" for _ in range(len(cols) + 3))
    if prep:
        srcc = prep["linear_probe"]["srcc"]
        for _, title, kind in PROBE_ROWS:
            lines.append(f"| {title} | {srcc[kind]:.2f} | {blank} |")
        lines.append(f"| {ORACLE_ROW} | {prep['linear_probe']['fr_oracle_srcc']:.2f} | "
                     f"{blank} |")
    for row, title, _ in ROWS:
        if row not in table:
            continue
        t = table[row]
        rl = "think_len_start" in t["mean"]   # the rows of RL runs (curves to read)
        think = (f"{cell(table, row, 'think_len_start', 1)} -> "
                 f"{cell(table, row, 'think_len_end', 1)}" if rl else "-")
        nothink = (f"{cell(table, row, 'train_nothink_start')} -> "
                   f"{cell(table, row, 'train_nothink_end')}" if rl else "-")
        s1 = (f"{cell(table, row, 's1_class_start')} / {cell(table, row, 's1_severity_start')} -> "
              f"{cell(table, row, 's1_class_end')} / {cell(table, row, 's1_severity_end')}, "
              f"test {cell(table, row, 's1_class_test')} / "
              f"{cell(table, row, 's1_severity_test')}; "
              f"train {cell(table, row, 's1_train_choice_start')} -> "
              f"{cell(table, row, 's1_train_choice_end')}"
              if "s1_class_end" in t["mean"] else "-")
        wall = f"{t['mean']['wall_s'] / 60:.1f} min" if "wall_s" in t["mean"] else "-"
        lines.append(f"| {title} | " + " | ".join(cell(table, row, k) for _, k in cols)
                     + f" | {think} | {nothink} | {s1} | {wall} |")
    return "\n".join(lines)


def rows_by_name(table: dict, prep: dict) -> dict[str, dict]:
    """{first cell: its numbers}: the probes' and the oracle's held-out SRCC, and each RL
    row's held-out SRCC (think; numeric and Eq. 8) as mean, min and max over the seeds."""
    out = {title: {"srcc": prep["linear_probe"]["srcc"][kind]} for _, title, kind in PROBE_ROWS}
    out[ORACLE_ROW] = {"srcc": prep["linear_probe"]["fr_oracle_srcc"]}
    for row, title, _ in ROWS:
        if row in table:
            t = table[row]
            out[title] = {f"{q}_{agg}": t[agg].get(f"think/{q}") for q in ("srcc", "eq8_srcc")
                          for agg in ("mean", "min", "max")}
            out[title]["seeds"] = [s["seed"] for s in t["seeds"] if s["seed"] is not None]
    out["Stage-2, learnability subset"] = {**out.get("Stage-2, learnability subset", {}),
                                           "classes": prep["subset_classes"]}
    return out


def plots(results: dict[str, list[dict]], out_dir: Path) -> list[Path]:
    """Fig. 5 left (think length with / without PD), Fig. 5 right (think and no-think
    accuracy during training) and the held-out SRCC over the steps of every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(run: str, key: str) -> tuple[list, list]:
        pts = [(r[M.STEP], r[key]) for r in read_metrics(Path(run) / "metrics.jsonl")
               if isinstance(r.get(key), (int, float))]
        return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])

    figures = {
        "think_length.png": ("think length (tokens), Stage-2 with / without PD",
                             [("stage2", M.THINK_LENGTH.name("mean"), "with PD"),
                              ("stage2_no_pd", M.THINK_LENGTH.name("mean"), "without PD")]),
        "think_vs_nothink_accuracy.png": (
            "training answer accuracy, Stage-2: think (rollouts) vs no-think (greedy)",
            [("stage2", M.REWARD_ANSWER.name("mean"), "think"),
             ("stage2", M.NO_THINK_ACC, "no-think")]),
        "validation_srcc.png": ("validation SRCC of Eq. 8 (think; photos carved from the "
                                "training photos), every row",
                             [(row, M.VAL_SCORING[("think", "eq8_srcc")], row)
                              for row in ("stage2", "stage1_stage2", "stage2_no_pd")])}
    written = []
    for name, (title, lines) in figures.items():
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for i, (row, key, label) in enumerate(lines):
            for k, entry in enumerate(results.get(row, [])):
                xs, ys = series(entry["runs"]["s2"], key)
                ax.plot(xs, ys, color=f"C{i}", alpha=0.8, marker="." if len(xs) < 12 else None,
                        label=f"{label} (seed {entry['seed']})", linestyle="-" if k == 0 else "--")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(out_dir / name)
    return written
