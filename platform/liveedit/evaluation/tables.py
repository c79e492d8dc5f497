"""Table 1-shaped result tables: markdown, CSV and LaTeX.

Rows are (backbone, #edits, editor); for each dataset, the columns Rel. / T-Gen. / M-Gen. /
T-Loc. / M-Loc. / Average, in percent with two decimals as in the paper. The mean is over seeds;
the standard deviation over seeds is shown on the Average (the paper's "(±0.42)"), or on every
metric with ``std="all"``. The CSV is long-form (one line per backbone, dataset, editor and T,
with every mean and standard deviation). Every format states which locality definition it shows
and notes the chunks that were shorter than T (the trailing partial chunk is evaluated).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from liveedit.editors.registry import editor_title

from .lifelong import SUMMARY_KEYS, LifelongResult, aggregate_seeds
from .metrics import METRIC_TITLES

COLUMN_TITLES = {**METRIC_TITLES, "average": "Average"}

LOCALITY_TEXT = {
    "liveedit": "LiveEdit's definition: agreement of the post-edit argmax with the pre-edit "
    "argmax on the locality answer tokens",
    "easyedit-top1": "EasyEdit's definition: top-1 agreement of post- and pre-edit logits over "
    "all positions of the locality input",
    "easyedit-top10": "EasyEdit's definition: top-10 agreement of post- and pre-edit logits "
    "over all positions of the locality input",
}

StdMode = Literal["average", "all", "none"]


@dataclass
class TableRow:
    """One (backbone, dataset, editor, T) entry: means and standard deviations over seeds of
    each metric and of the average (fractions in [0, 1])."""

    backbone: str
    dataset: str
    editor: str
    edits: int
    mean: dict[str, float]
    std: dict[str, float]
    n_seeds: int
    n_records: int
    n_chunks: int
    tail: int


def rows_from_results(
    entries: Iterable[tuple[str, str, str, LifelongResult]],
) -> list[TableRow]:
    """Group ``(backbone, dataset, editor, result)`` entries over seeds into table rows."""
    groups: dict[tuple[str, str, str, int], list[LifelongResult]] = {}
    for backbone, dataset, editor, result in entries:
        groups.setdefault((backbone, dataset, editor, result.edits), []).append(result)
    rows = []
    for (backbone, dataset, editor, edits), results in groups.items():
        results = sorted(results, key=lambda r: r.seed)
        mean, std = aggregate_seeds([r.means() for r in results])
        rows.append(
            TableRow(
                backbone,
                dataset,
                editor,
                edits,
                mean,
                std,
                n_seeds=len(results),
                n_records=len(results[0].records),
                n_chunks=results[0].n_chunks,
                tail=results[0].tail,
            )
        )
    return rows


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def pct(value: float) -> str:
    """A fraction as a percentage with two decimals (``0.9136`` -> ``91.36``)."""
    return f"{100 * value:.2f}"


@dataclass
class Table:
    """Lifelong results in Table 1's shape; see the module docstring."""

    rows: list[TableRow]
    locality: str = "liveedit"
    title: str = "Lifelong editing results"

    # ------------------------------------------------------------------ layout

    @property
    def backbones(self) -> list[str]:
        return _unique(r.backbone for r in self.rows)

    @property
    def datasets(self) -> list[str]:
        return _unique(r.dataset for r in self.rows)

    @property
    def editors(self) -> list[str]:
        return _unique(r.editor for r in self.rows)

    def edits_of(self, backbone: str) -> list[int]:
        return sorted({r.edits for r in self.rows if r.backbone == backbone})

    def row(self, backbone: str, dataset: str, editor: str, edits: int) -> TableRow | None:
        for r in self.rows:
            if (r.backbone, r.dataset, r.editor, r.edits) == (backbone, dataset, editor, edits):
                return r
        return None

    def _lines(self) -> list[tuple[str, int, str]]:
        """(backbone, T, editor) in display order."""
        out = []
        for backbone in self.backbones:
            for edits in self.edits_of(backbone):
                for editor in self.editors:
                    if any(self.row(backbone, d, editor, edits) is not None for d in self.datasets):
                        out.append((backbone, edits, editor))
        return out

    def _cell(
        self, row: TableRow | None, key: str, std: StdMode, pm: str, missing: str = "–"
    ) -> str:
        if row is None:
            return missing
        text = pct(row.mean[key])
        if std == "all" or (std == "average" and key == "average"):
            text += f" ({pm}{pct(row.std[key])})"
        return text

    @property
    def locality_text(self) -> str:
        return f"{self.locality} — {LOCALITY_TEXT.get(self.locality, self.locality)}"

    def caption(self) -> str:
        n_seeds = sorted({r.n_seeds for r in self.rows})
        seeds = "/".join(str(n) for n in n_seeds) or "0"
        return (
            f"{self.title} (%; mean over {seeds} seed(s), ± standard deviation over seeds). "
            f"T-Loc./M-Loc.: locality definition {self.locality_text}."
        )

    def notes(self) -> list[str]:
        """Where a chunk was shorter than T (the trailing partial chunk, evaluated)."""
        out = []
        seen = set()
        for r in self.rows:
            key = (r.backbone, r.dataset, r.edits)
            if r.tail == 0 or key in seen:
                continue
            seen.add(key)
            where = f"{r.backbone} / {r.dataset}, T = {r.edits}"
            if r.n_chunks == 1:
                out.append(
                    f"{where}: only {r.n_records} records, evaluated as one partial chunk "
                    f"of {r.tail} edits."
                )
            else:
                out.append(
                    f"{where}: {r.n_records} records = {r.n_chunks - 1} chunks of {r.edits} + a "
                    f"trailing partial chunk of {r.tail} (evaluated)."
                )
        return out

    # ------------------------------------------------------------------ formats

    def markdown(self, std: StdMode = "average") -> str:
        header = ["Backbone", "# Edit", "Editor"]
        many = len(self.datasets) > 1
        for d in self.datasets:
            header += [
                f"{d} {COLUMN_TITLES[k]}" if many else COLUMN_TITLES[k] for k in SUMMARY_KEYS
            ]
        align = ["---", "---:", "---"] + ["---:"] * (len(header) - 3)
        lines = [f"**{self.caption()}**", ""]
        if not many and self.datasets:
            lines += [f"Dataset: {self.datasets[0]}", ""]
        lines += ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
        previous: tuple[str, int] | None = None
        for backbone, edits, editor in self._lines():
            b = backbone if previous is None or previous[0] != backbone else ""
            t = str(edits) if previous != (backbone, edits) else ""
            previous = (backbone, edits)
            cells = [b, t, editor_title(editor)]
            for d in self.datasets:
                row = self.row(backbone, d, editor, edits)
                cells += [self._cell(row, k, std, "±") for k in SUMMARY_KEYS]
            lines.append("| " + " | ".join(cells) + " |")
        notes = self.notes()
        if notes:
            lines += ["", *(f"- {n}" for n in notes)]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = ["backbone", "dataset", "editor", "editor_title", "edits"]
        for k in SUMMARY_KEYS:
            header += [k, f"{k}_std"]
        header += ["n_seeds", "n_records", "n_chunks", "tail", "locality"]
        writer.writerow(header)
        for backbone, edits, editor in self._lines():
            for d in self.datasets:
                row = self.row(backbone, d, editor, edits)
                if row is None:
                    continue
                line: list[object] = [backbone, d, editor, editor_title(editor), edits]
                for k in SUMMARY_KEYS:
                    line += [pct(row.mean[k]), pct(row.std[k])]
                line += [row.n_seeds, row.n_records, row.n_chunks, row.tail, self.locality]
                writer.writerow(line)
        return buffer.getvalue()

    def latex(self, std: StdMode = "average") -> str:
        n = len(SUMMARY_KEYS)
        spec = "lrl" + ("|" + "r" * n) * len(self.datasets)
        lines = [
            f"% locality definition: {self.locality_text}",
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
        ]
        groups = " & ".join(f"\\multicolumn{{{n}}}{{c}}{{{_tex(d)}}}" for d in self.datasets)
        lines.append(f"Backbone & \\# Edit & Editor & {groups} \\\\")
        rules = " ".join(
            f"\\cmidrule(lr){{{4 + i * n}-{3 + (i + 1) * n}}}" for i in range(len(self.datasets))
        )
        lines.append(rules)
        titles = " & ".join(_tex(COLUMN_TITLES[k]) for k in SUMMARY_KEYS)
        lines.append(" & & & " + " & ".join([titles] * len(self.datasets)) + " \\\\")
        lines.append("\\midrule")
        previous: tuple[str, int] | None = None
        for backbone, edits, editor in self._lines():
            if previous is not None and previous[0] != backbone:
                lines.append("\\midrule")
            elif previous is not None and previous[1] != edits:
                lines.append("\\cmidrule(lr){2-" + str(3 + n * len(self.datasets)) + "}")
            b = _tex(backbone) if previous is None or previous[0] != backbone else ""
            t = str(edits) if previous != (backbone, edits) else ""
            previous = (backbone, edits)
            cells = [b, t, _tex(editor_title(editor))]
            for d in self.datasets:
                row = self.row(backbone, d, editor, edits)
                cells += [self._cell(row, k, std, "$\\pm$", "--") for k in SUMMARY_KEYS]
            lines.append(" & ".join(cells) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{_tex(self.caption())}}}"]
        for note in self.notes():
            lines.append(f"% note: {note}")
        lines.append("\\end{table}")
        return "\n".join(lines) + "\n"

    def write(
        self, out: str | Path, stem: str = "table", std: StdMode = "average"
    ) -> dict[str, Path]:
        """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.tex`` into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        files = {}
        for fmt, suffix, text in (
            ("markdown", ".md", self.markdown(std)),
            ("csv", ".csv", self.csv()),
            ("latex", ".tex", self.latex(std)),
        ):
            path = out / f"{stem}{suffix}"
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
            files[fmt] = path
        return files


_TEX_ESCAPES = {
    "\\": "\\textbackslash{}",
    "&": "\\&",
    "%": "\\%",
    "$": "\\$",
    "#": "\\#",
    "_": "\\_",
    "{": "\\{",
    "}": "\\}",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
    "±": "$\\pm$",
    "—": "---",
    "–": "--",
}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def table_from_results(
    entries: Sequence[tuple[str, str, str, LifelongResult]],
    locality: str,
    title: str = "Lifelong editing results",
) -> Table:
    """A :class:`Table` of ``(backbone, dataset, editor, result)`` entries (one per seed)."""
    return Table(rows_from_results(entries), locality=locality, title=title)
