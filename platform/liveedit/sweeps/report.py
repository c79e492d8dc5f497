"""Sweep reports rebuilt from MLflow alone (``liveedit report``; after every ``liveedit sweep``).

:func:`collect` reads a sweep's parent run (tag ``liveedit.kind=sweep``: the latest one of the
experiment unless a run id is given) and its child runs (one per trial: the trial's flattened
config as params, ``e<T>/<metric>`` metrics per #edits T, ``trainable_params``, the status tag).
:func:`write_report` writes, by the parent's ``liveedit.report`` settings:

- ``grid2d`` (Fig. 3): ``<name>.png`` — x by y (d_m by r), colour = the metric after T edits,
  circle area = the editor's trainable parameters;
- ``curves`` (Figs. 4, 5): ``<name>.png`` — Rel., T-Gen., M-Gen., T-Loc., M-Loc. (and their
  average, dashed) against x (k, l_e);
- ``table`` (Tables 1, 2): ``<name>.md`` / ``.csv`` / ``.tex`` in Table 1's shape
  (:class:`~liveedit.evaluation.tables.Table`; rows = the row key, e.g. the ablation setting), and
  the metric-vs-#edits plots when there are several T;
- always: ``trials.md`` / ``trials.csv`` (every trial, best first) and ``objective.png`` (the
  objective per trial, in start order, with the best so far).

Figures use ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot state, no display).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import LABEL, METRIC_KEYS

METRIC_TITLES = {
    "rel": "Rel.",
    "t_gen": "T-Gen.",
    "m_gen": "M-Gen.",
    "t_loc": "T-Loc.",
    "m_loc": "M-Loc.",
    "average": "Average",
}
AXIS_TITLES = {
    "train.editor.d_m": "module dimension $d_m$",
    "train.editor.r": "expert rank $r$",
    "train.editor.k": "feature extraction control $k$",
    "train.editor.layer": "attached layer $l_e$",
    "train.editor.heads": "attention heads",
    "train.editor.lr": "learning rate",
    LABEL: "setting",
}
_MLFLOW_KEY = re.compile(r"[^\w.\- /]")


def mlflow_key(key: str) -> str:
    """A param / metric name MLflow accepts (letters, digits, ``_ - . /`` and spaces)."""
    return _MLFLOW_KEY.sub("_", key)[:250]


# ------------------------------------------------------------------------------- records


@dataclass
class TrialRecord:
    """One trial's child run, as the report needs it."""

    run_id: str
    trial_id: str
    label: str
    status: str
    """completed, stopped, failed or running."""
    params: dict[str, str]
    metrics: dict[str, float]
    start_time: int = 0

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def objective(self) -> float | None:
        value = self.metrics.get("objective")
        return None if value is None or math.isnan(value) else float(value)

    def edits(self) -> list[int]:
        found = {int(m.group(1)) for k in self.metrics if (m := re.match(r"e(\d+)/", k))}
        return sorted(found)

    def value(self, edits: int, metric: str) -> float | None:
        value = self.metrics.get(f"e{edits}/{metric}")
        return None if value is None or math.isnan(value) else float(value)

    def param(self, key: str) -> str | None:
        if key == LABEL:
            return self.label
        return self.params.get(mlflow_key(key))


@dataclass
class SweepRecord:
    """A sweep's parent run and its trials."""

    name: str
    experiment: str
    run_id: str
    settings: dict[str, Any]
    objective: dict[str, Any]
    locality: str
    trials: list[TrialRecord] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return str(self.settings.get("kind", "trials"))

    @property
    def metric(self) -> str:
        return str(self.settings.get("metric") or self.objective.get("metric", "average"))

    @property
    def edits(self) -> int:
        return int(self.settings.get("edits") or self.objective.get("edits") or 0)

    @property
    def title(self) -> str:
        return str(self.settings.get("title") or self.name)

    @property
    def searched(self) -> list[str]:
        return list((self.settings.get("order") or {}).keys())

    def completed(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.completed]


def _status(tags: dict[str, str], mlflow_status: str, metrics: dict[str, float]) -> str:
    if tags.get("liveedit.status"):
        return tags["liveedit.status"]
    if "objective" in metrics and any(k.startswith("e") and "/" in k for k in metrics):
        return "completed"
    return {"RUNNING": "running", "FAILED": "failed", "KILLED": "stopped"}.get(
        mlflow_status, "stopped"
    )


def collect(uri: str, experiment: str, run_id: str | None = None) -> SweepRecord:
    """The sweep of ``experiment`` (its latest parent run, or ``run_id``) and its trials."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no MLflow experiment {experiment!r} in {uri}")
    if run_id:
        parent = client.get_run(run_id)
    else:
        runs = client.search_runs(
            [found.experiment_id],
            filter_string="tags.`liveedit.kind` = 'sweep'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            raise ValueError(f"MLflow experiment {experiment!r} ({uri}) holds no sweep run")
        parent = runs[0]
    tags = parent.data.tags
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        max_results=50_000,
    )
    trials = []
    for run in children:
        t = run.data.tags
        trials.append(
            TrialRecord(
                run_id=run.info.run_id,
                trial_id=t.get("liveedit.trial_id", run.info.run_id[:8]),
                label=t.get("liveedit.label", t.get("mlflow.runName", "")),
                status=_status(t, run.info.status, run.data.metrics),
                params=dict(run.data.params),
                metrics=dict(run.data.metrics),
                start_time=int(run.info.start_time or 0),
            )
        )
    trials.sort(key=lambda t: (t.start_time, t.trial_id))
    return SweepRecord(
        name=tags.get("liveedit.sweep", experiment),
        experiment=experiment,
        run_id=parent.info.run_id,
        settings=json.loads(tags.get("liveedit.report", "{}") or "{}"),
        objective=json.loads(tags.get("liveedit.objective", "{}") or "{}"),
        locality=tags.get("liveedit.locality", "liveedit"),
        trials=trials,
    )


# ------------------------------------------------------------------------------- helpers


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _ordered(values: Iterable[str], order: Sequence[str] = ()) -> list[str]:
    """Distinct values: numerically sorted if all are numbers, else in ``order`` then first
    appearance."""
    unique: list[str] = []
    for v in values:
        if v not in unique:
            unique.append(v)
    if unique and all(_number(v) is not None for v in unique):
        return sorted(unique, key=lambda v: _number(v) or 0.0)
    ranked = [v for v in order if v in unique]
    return ranked + [v for v in unique if v not in ranked]


def _show(value: str) -> str:
    number = _number(value)
    if number is None:
        return value
    return str(int(number)) if number == int(number) and abs(number) < 1e15 else f"{number:.3g}"


def _count(n: float) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:.0f}"


def _axis(key: str) -> str:
    return AXIS_TITLES.get(key, key)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _grouped(
    trials: Sequence[TrialRecord], keys: Sequence[str], edits: int, metric: str
) -> dict[tuple[str, ...], list[TrialRecord]]:
    groups: dict[tuple[str, ...], list[TrialRecord]] = {}
    for t in trials:
        point = tuple(t.param(k) for k in keys)
        if any(p is None for p in point) or t.value(edits, metric) is None:
            continue
        groups.setdefault(point, []).append(t)  # type: ignore[arg-type]
    return groups


def _no_data(path: Path, title: str, why: str) -> Path:
    fig = _figure(6, 3)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, f"{title}\n\n{why}", ha="center", va="center", wrap=True)
    fig.savefig(path)
    return path


# ------------------------------------------------------------------------------- figures


def plot_grid2d(record: SweepRecord, path: Path) -> Path:
    """Fig. 3: ``x`` by ``y``; colour = the metric after T edits; circle area = trainable
    parameters of the editor (mean over repeated points)."""
    x, y = record.settings.get("x", ""), record.settings.get("y", "")
    metric, edits = record.metric, record.edits
    groups = _grouped(record.completed(), [x, y], edits, metric)
    if not groups:
        return _no_data(path, record.title, "no completed trial to plot")
    order = record.settings.get("order") or {}
    xs = _ordered((p[0] for p in groups), order.get(x, ()))
    ys = _ordered((p[1] for p in groups), order.get(y, ()))
    points, colours, params = [], [], []
    for (xv, yv), trials in groups.items():
        points.append((xs.index(xv), ys.index(yv)))
        colours.append(100 * _mean([t.value(edits, metric) or 0.0 for t in trials]))
        params.append(_mean([t.metrics.get("trainable_params", 0.0) for t in trials]))
    top = max(params) or 1.0
    sizes = [150 + 1650 * (p / top) for p in params]
    fig = _figure(7.5, 5.8)
    ax = fig.add_subplot()
    scatter = ax.scatter(
        [p[0] for p in points],
        [p[1] for p in points],
        c=colours,
        s=sizes,
        cmap="viridis",
        edgecolors="black",
        linewidths=0.6,
        zorder=3,
    )
    for (px, py), value, size, count in zip(points, colours, sizes, params, strict=True):
        offset = math.sqrt(size) / 2 + 3
        where = {"textcoords": "offset points", "ha": "center"}
        ax.annotate(f"{value:.1f}", (px, py), xytext=(0, offset), va="bottom", fontsize=8, **where)
        below = {"va": "top", "fontsize": 7, "color": "dimgray", **where}
        ax.annotate(_count(count), (px, py), xytext=(0, -offset), **below)
    ax.set_xticks(range(len(xs)), [_show(v) for v in xs])
    ax.set_yticks(range(len(ys)), [_show(v) for v in ys])
    ax.set_xlim(-0.6, len(xs) - 0.4)
    ax.set_ylim(-0.7, len(ys) - 0.3)
    ax.set_xlabel(_axis(x))
    ax.set_ylabel(_axis(y))
    ax.grid(True, alpha=0.25, zorder=0)
    bar = fig.colorbar(scatter, ax=ax)
    name = METRIC_TITLES.get(metric, metric)
    bar.set_label(f"{name} (%) after {edits} edits")
    ax.set_title(
        f"{record.title}\ncolour: {name} (value above); circle area: trainable parameters "
        "(count below)",
        fontsize=10,
    )
    fig.savefig(path, bbox_inches="tight")
    return path


def plot_curves(record: SweepRecord, path: Path) -> Path:
    """Figs. 4 / 5: each metric after T edits against ``x`` (mean over repeated points)."""
    x, edits = record.settings.get("x", ""), record.edits
    groups = _grouped(record.completed(), [x], edits, "average")
    if not groups:
        return _no_data(path, record.title, "no completed trial to plot")
    order = record.settings.get("order") or {}
    xs = _ordered((p[0] for p in groups), order.get(x, ()))
    fig = _figure(7.5, 4.8)
    ax = fig.add_subplot()
    for metric in METRIC_KEYS:
        ys = [100 * _mean([t.value(edits, metric) or 0.0 for t in groups[(v,)]]) for v in xs]
        style = {"color": "black", "linestyle": "--"} if metric == "average" else {}
        ax.plot(range(len(xs)), ys, marker="o", label=METRIC_TITLES[metric], **style)
    ax.set_xticks(range(len(xs)), [_show(v) for v in xs])
    ax.set_xlabel(_axis(x))
    ax.set_ylabel(f"accuracy (%) after {edits} edits")
    ax.grid(True, alpha=0.3)
    ax.legend(ncol=6, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    ax.set_title(record.title, fontsize=10)
    fig.savefig(path, bbox_inches="tight")
    return path


def table_of(record: SweepRecord) -> Any:
    """The sweep as a :class:`~liveedit.evaluation.tables.Table` (rows = the ``rows`` key's
    values in spec order, one line per #edits)."""
    from liveedit.evaluation.tables import Table, TableRow

    key = str(record.settings.get("rows") or LABEL)
    order = record.settings.get("order") or {}
    wanted: Sequence[str] = order.get(key, ())
    if key == LABEL and len(order) == 1:
        wanted = next(iter(order.values()))
    labels = _ordered((t.param(key) or t.label for t in record.completed()), wanted)
    rows = []
    for label in labels:
        for t in record.completed():
            if (t.param(key) or t.label) != label:
                continue
            for edits in t.edits():
                mean = {k: t.value(edits, k) for k in METRIC_KEYS}
                if any(v is None for v in mean.values()):
                    continue
                std = {k: t.value(edits, f"{k}_std") or 0.0 for k in METRIC_KEYS}
                backbone = (
                    t.params.get("eval.backbone_label")
                    or Path(t.params.get("train.backbone", "backbone")).name
                )
                dataset = t.params.get("eval.dataset") or t.params.get("train.family", "")
                rows.append(
                    TableRow(
                        backbone=backbone,
                        dataset=dataset,
                        editor=label,
                        edits=edits,
                        mean=mean,  # type: ignore[arg-type]
                        std=std,
                        n_seeds=int(t.metrics.get(f"e{edits}/n_seeds", 1)),
                        n_records=int(t.metrics.get(f"e{edits}/n_records", 0)),
                        n_chunks=int(t.metrics.get(f"e{edits}/n_chunks", 0)),
                        tail=int(t.metrics.get(f"e{edits}/tail", 0)),
                    )
                )
            break  # one trial per label (the first one started)
    return Table(rows, locality=record.locality, title=record.title)


def write_table(record: SweepRecord, out: Path) -> list[Path]:
    from liveedit.evaluation.plots import plot_metrics

    table = table_of(record)
    if not table.rows:
        return [_no_data(out / f"{record.name}.png", record.title, "no completed trial")]
    files = list(table.write(out, stem=record.name).values())
    if len({r.edits for r in table.rows}) > 1:
        files += plot_metrics(table, out / "plots")
    return files


def trials_rows(record: SweepRecord) -> list[dict[str, str]]:
    """Every trial as table cells, best first (by the objective's mode), then the rest."""
    mode = record.objective.get("mode", "max")
    ranked = [t for t in record.trials if t.completed and t.objective is not None]
    done = sorted(ranked, key=lambda t: t.objective or 0.0, reverse=mode == "max")
    rest = [t for t in record.trials if t not in done]
    edits = record.edits
    rows = []
    for rank, t in enumerate([*done, *rest], start=1):
        row = {
            "rank": str(rank) if t in done else "",
            "trial": t.trial_id,
            "label": t.label,
            "status": t.status,
            "objective": "" if t not in done else f"{100 * (t.objective or 0.0):.2f}",
        }
        for key in record.searched:
            row[key] = _show(t.params.get(mlflow_key(f"sweep.param.{key}"), ""))
        for metric in METRIC_KEYS:
            value = t.value(edits, metric)
            row[METRIC_TITLES[metric]] = "" if value is None else f"{100 * value:.2f}"
        params = t.metrics.get("trainable_params")
        row["trainable params"] = "" if params is None else f"{params:,.0f}"
        steps = t.metrics.get("train_steps")
        row["steps"] = "" if steps is None else f"{steps:.0f}"
        rows.append(row)
    return rows


def write_trials(record: SweepRecord, out: Path) -> list[Path]:
    rows = trials_rows(record)
    header = list(rows[0]) if rows else ["trial", "label", "status", "objective"]
    objective = record.objective
    caption = (
        f"**{record.title}**: {len(record.trials)} trials; objective = "
        f"{METRIC_TITLES.get(objective.get('metric', 'average'), '?')} after "
        f"{objective.get('edits', '?')} edits ({objective.get('mode', 'max')}), metrics in %."
    )
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r.get(h, "") for h in header) + " |" for r in rows]
    md = out / "trials.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    table = out / "trials.csv"
    table.write_text(buffer.getvalue(), encoding="utf-8")
    return [md, table, plot_objective(record, out / "objective.png")]


def plot_objective(record: SweepRecord, path: Path) -> Path:
    """The objective of each completed trial in start order, with the best so far."""
    done = [t for t in record.trials if t.completed and t.objective is not None]
    if not done:
        return _no_data(path, record.title, "no completed trial")
    values = [100 * (t.objective or 0.0) for t in done]
    pick = max if record.objective.get("mode", "max") == "max" else min
    best = [pick(values[: i + 1]) for i in range(len(values))]
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    ax.plot(range(1, len(values) + 1), values, "o", label="trial")
    ax.step(range(1, len(values) + 1), best, where="post", label="best so far")
    ax.set_xlabel("trial (start order)")
    metric = METRIC_TITLES.get(record.objective.get("metric", "average"), "objective")
    ax.set_ylabel(f"{metric} (%) after {record.objective.get('edits', '?')} edits")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(record.title, fontsize=10)
    fig.savefig(path, bbox_inches="tight")
    return path


# ------------------------------------------------------------------------------- entry points


def write_report(record: SweepRecord, out: str | Path) -> list[Path]:
    """Every file of the sweep's report into ``out`` (see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    if record.kind == "grid2d":
        files.append(plot_grid2d(record, out / f"{record.name}.png"))
    elif record.kind == "curves":
        files.append(plot_curves(record, out / f"{record.name}.png"))
    elif record.kind == "table":
        files += write_table(record, out)
    files += write_trials(record, out)
    return files


def report_dir(name: str, sweep: Path | None = None) -> Path:
    """Where a sweep's report goes: ``<sweep>/report`` for a local sweep folder, else
    ``runs/reports/<name>``."""
    return sweep / "report" if sweep is not None else Path("runs") / "reports" / name


def write_report_from_mlflow(
    uri: str, experiment: str, out: str | Path, run_id: str | None = None
) -> list[Path]:
    """:func:`collect` then :func:`write_report`."""
    return write_report(collect(uri, experiment, run_id), out)


__all__ = [
    "SweepRecord",
    "TrialRecord",
    "collect",
    "mlflow_key",
    "plot_curves",
    "plot_grid2d",
    "plot_objective",
    "report_dir",
    "table_of",
    "trials_rows",
    "write_report",
    "write_report_from_mlflow",
    "write_table",
    "write_trials",
]
