"""Plots of each metric against the number of edits, one line per editor (matplotlib, Agg).

One PNG per (backbone, dataset): six panels (Rel., T-Gen., M-Gen., T-Loc., M-Loc., Average),
#edits on a log axis, the mean over seeds with the standard deviation as error bars. Figures are
built with ``matplotlib.figure.Figure`` (no pyplot state, no display needed).
"""

from __future__ import annotations

import re
from pathlib import Path

from liveedit.editors.registry import editor_title

from .lifelong import SUMMARY_KEYS
from .tables import COLUMN_TITLES, Table


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "x"


def plot_metrics(table: Table, out: str | Path) -> list[Path]:
    """Write ``<backbone>__<dataset>.png`` for each backbone and dataset of ``table``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for backbone in table.backbones:
        for dataset in table.datasets:
            rows = [r for r in table.rows if r.backbone == backbone and r.dataset == dataset]
            if not rows:
                continue
            fig = Figure(figsize=(13, 7.5), dpi=100)
            FigureCanvasAgg(fig)
            axes = fig.subplots(2, 3)
            edits_all = sorted({r.edits for r in rows})
            for ax, key in zip(axes.flat, SUMMARY_KEYS, strict=True):
                for editor in table.editors:
                    series = sorted((r for r in rows if r.editor == editor), key=lambda r: r.edits)
                    if not series:
                        continue
                    xs = [r.edits for r in series]
                    ys = [100 * r.mean[key] for r in series]
                    es = [100 * r.std[key] for r in series]
                    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=editor_title(editor))
                ax.set_title(COLUMN_TITLES[key])
                ax.set_xscale("log")
                ax.minorticks_off()
                ax.set_xticks(edits_all)
                ax.set_xticklabels([str(e) for e in edits_all])
                ax.set_ylim(-2, 102)
                ax.set_xlabel("# edits")
                ax.set_ylabel("%")
                ax.grid(True, alpha=0.3)
            handles, labels = axes.flat[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="upper right")
            fig.suptitle(f"{backbone} / {dataset} — locality: {table.locality}")
            fig.tight_layout(rect=(0, 0, 0.9, 0.95))
            path = out / f"{_safe(backbone)}__{_safe(dataset)}.png"
            fig.savefig(path)
            files.append(path)
    return files
