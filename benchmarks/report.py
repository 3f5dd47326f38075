"""The one way a benchmark reports: a fixed-width table on stdout and one JSON file under
outputs/bench/ holding the same rows, the command's arguments and the machine.

    from benchmarks.report import Column, report

    report("learner", rows, [Column("ranks", "world", "d"), Column("step s", "step_s", ".3f")],
           out="outputs/bench/learner.json", title="learner step, conf=tiny",
           extra={"goal": 0.10}, notes=["step time, 2 vs 1 ranks: 1.4x"])

Every benchmark writes under OUT_DIR (`make bench` lists them in one place); a row is a
dict, so the JSON keeps every field, the table only the chosen columns.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUT_DIR = Path("outputs/bench")


@dataclass(frozen=True)
class Column:
    """One table column: its header, the row key it shows and the format spec of the
    value (".3f", "d", ".1%" for a share shown as a percentage, "%" the same as ".1%";
    "" for text, str())."""

    header: str
    key: str
    fmt: str = ""

    def cell(self, row: dict) -> str:
        value = row.get(self.key)
        if value is None:
            return "-"
        if not self.fmt:
            return str(value)
        return format(value, ".1%" if self.fmt == "%" else self.fmt)


def machine() -> dict[str, Any]:
    """What the figures were measured on (docs/performance.md's table quotes it)."""
    return {"platform": platform.platform(), "processor": platform.processor()
            or platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}


def format_table(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    """Rows under their headers, each column as wide as its widest cell: text (no format)
    left-aligned, numbers right-aligned."""
    cells = [[c.header for c in columns]] + [[c.cell(r) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for n, line in enumerate(cells):
        parts = [v.rjust(w) if c.fmt else v.ljust(w) for v, w, c in zip(line, widths, columns)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(name: str, rows: Sequence[dict], columns: Sequence[Column], out: str | Path,
           title: str = "", extra: dict | None = None, notes: Sequence[str] = ()) -> Path:
    """Print `title`, the table and `notes`, and write {benchmark, argv, machine, rows,
    notes, **extra} to `out` (its folder made on the way); returns the path."""
    print()   # below any progress bar left on the line
    if title:
        print(title)
    print(format_table(rows, columns))
    for note in notes:
        print(note)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "argv": sys.argv[1:], "machine": machine(),
               **(extra or {}), "rows": list(rows), "notes": list(notes)}
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return path
