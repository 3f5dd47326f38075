"""The benchmarks' one table format (benchmarks/report.py): hand-worked layouts."""

import json

from benchmarks.report import Column, format_table, report


def test_table_aligns_columns_to_their_widest_cell():
    rows = [{"name": "a", "s": 1.23456, "share": 0.051}, {"name": "longer", "s": 10.0}]
    cols = [Column("case", "name"), Column("seconds", "s", ".2f"), Column("out", "share", ".1%")]
    # Widths by hand: case 6 ("longer"), seconds 7 (header), out 4 ("5.1%").
    assert format_table(rows, cols).splitlines() == [
        "case    seconds   out",
        "------  -------  ----",
        "a          1.23  5.1%",
        "longer    10.00     -",
    ]


def test_report_writes_rows_machine_and_extra(tmp_path, capsys):
    out = tmp_path / "sub" / "b.json"
    report("demo", [{"k": 2, "hidden": "kept"}], [Column("k", "k", "d")], out,
           title="demo table", extra={"goal": 1.1}, notes=["ratio 1.05x"])
    printed = capsys.readouterr().out
    assert printed.splitlines()[:5] == ["", "demo table", "k", "-", "2"]
    assert "ratio 1.05x" in printed
    data = json.loads(out.read_text())
    assert data["benchmark"] == "demo" and data["goal"] == 1.1
    assert data["rows"] == [{"k": 2, "hidden": "kept"}]
    assert data["machine"]["cpus"] >= 1
