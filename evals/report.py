"""Writing an evaluation's results: JSON, a markdown table, PNG scatter plots.

Every evaluation writes into its `--out` folder:
- `results.json`   everything measured, machine-readable (with the settings used);
- `results.md`     the tables, laid out as the paper's (Tables 1-4), to paste beside them;
- `predictions.jsonl` one line per sample (the model's raw answer and what was read from it);
- `*.png`          scatter plots of prediction vs MOS (scoring only).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    # JSON has no NaN / inf; numpy scalars and paths are not JSON types.
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write `payload` as indented JSON (NaN/inf become null); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=2, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path:
    """One JSON object per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(_clean(record), ensure_ascii=False) + "\n")
    return path


def fmt(value: Any, kind: str = "num") -> str:
    """A table cell: "0.912" (num), "76.37%" (pct), "-" for a missing value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if kind == "pct":
        return f"{100.0 * float(value):.2f}%"
    if kind == "int":
        return str(int(value))
    if isinstance(value, (int, float)):
        return f"{float(value):.3f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are used as given (format them with `fmt`)."""
    if any(len(r) != len(headers) for r in rows):
        raise ValueError(f"every row needs {len(headers)} cells")

    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_markdown(path: str | os.PathLike, title: str,
                   sections: Sequence[tuple[str, str]], notes: Sequence[str] = ()) -> Path:
    """A markdown file: `# title`, then each (heading, body) section, then notes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body, ""]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def scatter_png(path: str | os.PathLike, pred: Sequence[float], mos: Sequence[float],
                title: str, xlabel: str = "prediction", ylabel: str = "MOS",
                curve: Any = None) -> Path:
    """Scatter of predictions (x) against MOS (y), with the identity line for reference
    and, when given, the fitted logistic `curve` (a callable on an array of x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if len(pred) != len(mos):
        raise ValueError(f"{len(pred)} predictions but {len(mos)} MOS values")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(pred, mos, s=14, alpha=0.7, edgecolors="none")
    lo = min([0.0, *pred, *mos])
    hi = max([5.0, *pred, *mos])
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="y = x")
    if curve is not None and len(pred) > 1:
        xs = np.linspace(min(pred), max(pred), 200)
        ax.plot(xs, curve(xs), color="tab:red", lw=1.2, label="logistic fit")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def safe_name(text: str) -> str:
    """A file-name-safe version of a dataset or setting name."""
    keep = [c if c.isalnum() or c in "-_." else "_" for c in str(text)]
    return "".join(keep).strip("._") or "unnamed"
