"""Tables (markdown, CSV, LaTeX) and plots from hand-made per-record results."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from liveedit.evaluation.lifelong import LifelongResult, RecordResult
from liveedit.evaluation.plots import plot_metrics
from liveedit.evaluation.tables import table_from_results


def result(edits: int, seed: int, rows: list[tuple[float, ...]], n_chunks=1, tail=0):
    records = [RecordResult(f"evqa-{i}", 0, edits, seed, *row) for i, row in enumerate(rows)]
    return LifelongResult(edits, seed, records, n_chunks, tail, len(records))


# FT-L, T = 1: seed 0 rel (1, 0.5) -> 0.75; seed 1 rel (1, 1) -> 1.0 => 87.50 ± 17.68.
# Other metrics constant: t_gen 0.5, m_gen 0.25, t_loc 1, m_loc 0.5.
FTL_SEED0 = result(1, 0, [(1.0, 0.5, 0.25, 1.0, 0.5), (0.5, 0.5, 0.25, 1.0, 0.5)], n_chunks=2)
FTL_SEED1 = result(1, 1, [(1.0, 0.5, 0.25, 1.0, 0.5), (1.0, 0.5, 0.25, 1.0, 0.5)], n_chunks=2)
# N/A, T = 3 (2 records: one partial chunk of 2).
NA_T3 = result(3, 0, [(0.0, 0.0, 0.0, 1.0, 1.0), (0.5, 0.0, 0.0, 1.0, 1.0)], tail=2)


def make_table():
    entries = [
        ("llava", "vqa", "ft-l", FTL_SEED0),
        ("llava", "vqa", "ft-l", FTL_SEED1),
        ("llava", "vqa", "none", NA_T3),
        ("llava", "knowledge", "ft-l", FTL_SEED0),
    ]
    return table_from_results(entries, "liveedit", title="unit")


def test_rows_average_over_seeds() -> None:
    table = make_table()
    row = table.row("llava", "vqa", "ft-l", 1)
    assert row is not None and row.n_seeds == 2 and row.n_records == 2
    assert row.mean["rel"] == 0.875
    assert math.isclose(row.std["rel"], math.sqrt(2 * 0.125**2))
    # averages per seed: (0.75+0.5+0.25+1+0.5)/5 = 0.6 and (1+0.5+0.25+1+0.5)/5 = 0.65
    assert math.isclose(row.mean["average"], 0.625)
    assert math.isclose(row.std["average"], math.sqrt(2 * 0.025**2))


def test_markdown_table() -> None:
    md = make_table().markdown()
    assert "locality definition liveedit" in md
    assert "| Backbone | # Edit | Editor | vqa Rel. |" in md
    lines = [line for line in md.splitlines() if "FT-L" in line]
    assert lines[0].split(" | ")[3:9] == [
        "87.50",
        "50.00",
        "25.00",
        "100.00",
        "50.00",
        "62.50 (±3.54)",
    ]
    # T=1 has no N/A row; T=3 has no FT-L row and no knowledge entry for N/A.
    na = next(line for line in md.splitlines() if "N/A" in line)
    assert na.split(" | ")[1:4] == ["3", "N/A", "25.00"]
    assert na.rstrip(" |").endswith("–")
    assert "only 2 records, evaluated as one partial chunk of 2 edits" in md
    md_all = make_table().markdown(std="all")
    assert "87.50 (±17.68)" in md_all
    assert "(±" not in make_table().markdown(std="none")


def test_csv_table() -> None:
    rows = list(csv.DictReader(io.StringIO(make_table().csv())))
    assert len(rows) == 3
    ftl = next(r for r in rows if r["editor"] == "ft-l" and r["dataset"] == "vqa")
    assert ftl["rel"] == "87.50" and ftl["rel_std"] == "17.68"
    assert ftl["average"] == "62.50" and ftl["average_std"] == "3.54"
    assert ftl["editor_title"] == "FT-L" and ftl["n_seeds"] == "2" and ftl["locality"] == "liveedit"
    na = next(r for r in rows if r["editor"] == "none")
    assert (na["edits"], na["tail"], na["t_loc"]) == ("3", "2", "100.00")


def test_latex_table() -> None:
    tex = make_table().latex()
    assert "\\multicolumn{6}{c}{vqa} & \\multicolumn{6}{c}{knowledge}" in tex
    assert "llava & 1 & FT-L & 87.50 & 50.00 & 25.00 & 100.00 & 50.00 & 62.50 ($\\pm$3.54)" in tex
    assert "locality definition: liveedit" in tex
    assert "\\%" in tex and "\\begin{tabular}" in tex and "\\end{table}" in tex


def test_write_and_plot(tmp_path: Path) -> None:
    table = make_table()
    files = table.write(tmp_path)
    assert {p.name for p in files.values()} == {"table.md", "table.csv", "table.tex"}
    plots = plot_metrics(table, tmp_path / "plots")
    assert sorted(p.name for p in plots) == ["llava__knowledge.png", "llava__vqa.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
