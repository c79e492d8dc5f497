"""The evaluation grid: every (backbone, dataset, editor, #edits, seed) cell, cached, tabulated and
tracked in MLflow (DESIGN §2.5, §3).

- :class:`EvalConfig` is the typed configuration of a grid (``liveedit eval --config FILE k=v``).
  It is validated completely (directories, dataset files, backbone directories, editor options)
  before any compute.
- A :class:`Cell` holds everything one evaluation needs. :func:`evaluate_cell` is a pure function
  of the cell and a loaded backbone (the Ray layer shards the same function across actors); it
  builds the editor, runs :func:`~liveedit.evaluation.lifelong.run_lifelong` and leaves the
  backbone clean (``editor.reset()``).
- Results are cached per cell as JSON in ``<out>/cells/<key>.json``, where the key hashes the
  cell's configuration, the dataset file's content, the backbone directory (``config.json``,
  ``liveedit_backbone.json`` and the weight files' sizes and mtimes), the editor (resolved
  options; the content of LiveEdit's weight files) and the protocol version. A re-run evaluates
  only the cells that are not cached; the device is not part of the key.
- :func:`run_eval` loads each backbone once and evaluates its pending cells in one process, or
  hands them to a :data:`CellRunner` (``liveedit eval --actors N`` shards them over Ray actors,
  ``trainables/eval_actors.py``); either way every cell is cached and tracked as it finishes. It
  writes the Table 1-shaped table (``table.md``, ``table.csv``, ``table.tex``), one plot per
  backbone and dataset (``plots/*.png``) and paired t-tests (``significance.csv``), and logs to
  MLflow: one experiment per study, a parent run per grid (full config as params, per-T metrics
  ``<backbone>/<dataset>/<editor>/<metric>`` at step T, tables and plots as artifacts) and one
  child run per cell (the cell's config as params, the five metrics and their average). A re-run
  of the same configuration in the same ``out`` re-attaches to its parent run
  (``<out>/tracking.json``; :func:`grid_identity`) and logs only the cells it has not logged yet.

Records: ``max_records`` keeps the first N records of the file (before any shuffle), so every
seed and editor sees the same records and per-record values pair up for t-tests.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from liveedit.config import ConfigError, config_hash, flatten, save_config, to_dict
from liveedit.tracking import TrackingConfig

from .lifelong import (
    DEFAULT_EDITS,
    SUMMARY_KEYS,
    LifelongResult,
    compare_editors,
    run_lifelong,
)
from .metrics import LOCALITY_DEFINITIONS
from .tables import StdMode, Table, table_from_results

if TYPE_CHECKING:
    from liveedit.backbones.base import Backbone
    from liveedit.data.records import EditRecord

PROTOCOL_VERSION = 1
"""Bumped whenever the protocol's numbers could change: invalidates every cached cell."""

CELLS_DIR = "cells"
TRACKING_STATE = "tracking.json"
SIGNIFICANCE = "significance.csv"


# ------------------------------------------------------------------------------- config


@dataclass
class DatasetFiles:
    """An explicit dataset: a public-schema JSON file and the root its image paths are relative
    to (e.g. MMEdit's E-VQA ``vqa_eval.json`` with the COCO root)."""

    format: Literal["evqa", "eic", "vlkeb"] = "evqa"
    json: Path = Path("data/test.json")
    image_root: Path = Path("data")


@dataclass
class EvalTrackingConfig(TrackingConfig):
    """:class:`~liveedit.tracking.TrackingConfig` whose empty ``experiment`` means "the study"."""

    experiment: str = ""


@dataclass
class EvalConfig:
    """A lifelong evaluation grid (see the module docstring).

    Datasets: ``datasets`` names families of ``world`` (``vqa``, ``caption``, ``knowledge``;
    their ``split`` file) or keys of ``files``; an entry of ``files`` wins over a world family of
    the same name; empty = every family of the world and every entry of ``files``.
    Editors: ``editors`` lists labels; a label is a registry name (``none``, ``ft-l``, ``ft-m``,
    ``liveedit``) unless ``editor_options.<label>.editor`` names one; the other keys of
    ``editor_options.<label>`` are the editor's options (``weights`` for LiveEdit, ``lr`` /
    ``steps`` / ``weight_decay`` for FT-L and FT-M).
    """

    study: str = "liveedit-eval"
    """The MLflow experiment (unless ``tracking.experiment`` is set) and the tables' title."""
    world: Path | None = Path("runs/demo/world")
    split: Literal["train", "test"] = "test"
    files: dict[str, DatasetFiles] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    backbones: dict[str, Path] = field(default_factory=lambda: {"demo": Path("runs/demo/backbone")})
    editors: list[str] = field(default_factory=lambda: ["none", "ft-l", "ft-m"])
    editor_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    edits: list[int] = field(default_factory=lambda: list(DEFAULT_EDITS), metadata={"min": 1})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"min": 0})
    locality: Literal["liveedit", "easyedit-top1", "easyedit-top10"] = "liveedit"
    max_records: int = field(default=0, metadata={"min": 0})
    """Cap on the test records of each dataset (the first N of the file; 0 = all)."""
    score_batch_size: int = field(default=32, metadata={"min": 1})
    edit_batch: int = field(default=1, metadata={"min": 1})
    """Records per ``editor.edit`` call (1 = a lifelong stream of single edits)."""
    out: Path = Path("runs/demo/eval")
    cache: Path | None = None
    """Cell cache directory (default ``<out>/cells``)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    threads: int = field(default=0, metadata={"min": 0})
    """torch intra-op threads (0: torch's default)."""
    table_std: Literal["average", "all", "none"] = "average"
    """Which table columns show ``(±std)`` over seeds (the paper: the Average)."""
    progress: bool = True
    tracking: EvalTrackingConfig = field(default_factory=EvalTrackingConfig)

    def __post_init__(self) -> None:
        # Values typed on the command line arrive as str subclasses: keep plain types only.
        self.editor_options = {
            str(label): {str(k): _plain(v) for k, v in (opts or {}).items()}
            for label, opts in self.editor_options.items()
        }

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.study

    def editor_spec(self, label: str) -> tuple[str, dict[str, Any]]:
        """(registry name, options) of an editor label."""
        options = dict(self.editor_options.get(label, {}))
        name = str(options.pop("editor", label))
        return name, options

    def dataset_files(self) -> dict[str, DatasetFiles]:
        """Every selected dataset by name (see the class docstring)."""
        available: dict[str, DatasetFiles] = {}
        if self.world is not None:
            for family in _world_families(self.world):
                from liveedit.world.families import FAMILY_FORMATS

                available[family] = DatasetFiles(
                    FAMILY_FORMATS[family],
                    self.world / family / f"{self.split}.json",
                    self.world / "images",
                )
        available.update(self.files)
        names = self.datasets or list(available)
        return {name: available[name] for name in names if name in available}

    def validate(self) -> list[str]:
        """Every problem that would stop the grid (empty when it can run)."""
        from liveedit.backbones.base import BackboneError, inspect_backbone_dir
        from liveedit.editors.registry import check_editor_options

        problems: list[str] = []
        for key, values in (("edits", self.edits), ("seeds", self.seeds)):
            if not values:
                problems.append(f"{key}: empty")
            if len(set(values)) != len(values):
                problems.append(f"{key}: duplicate values {values}")
        if not self.editors:
            problems.append("editors: empty; allowed values: none, ft-l, ft-m, liveedit")
        if len(set(self.editors)) != len(self.editors):
            problems.append(f"editors: duplicate labels {self.editors}")
        for label in self.editors:
            name, options = self.editor_spec(label)
            problems += [f"editors.{label}: {p}" for p in check_editor_options(name, options)]
        for label in self.editor_options:
            if label not in self.editors:
                problems.append(f"editor_options.{label}: no editor {label!r} in editors")
        if not self.backbones:
            problems.append("backbones: empty; give backbones.NAME=DIR")
        for name, directory in self.backbones.items():
            try:
                inspect_backbone_dir(directory)
            except BackboneError as exc:
                problems.append(f"backbones.{name}: {exc}")
        world_families: list[str] = []
        if self.world is not None:
            try:
                world_families = _world_families(self.world)
            except ValueError as exc:
                problems.append(f"world: {exc} (world=none to use only files)")
        known = set(world_families) | set(self.files)
        for name in self.datasets:
            if name not in known:
                allowed = ", ".join(sorted(known)) or "none (set world or files)"
                problems.append(f"datasets: {name!r} is unknown; allowed values: {allowed}")
        if not known:
            problems.append("datasets: nothing to evaluate (set world or files)")
        for name, spec in self.dataset_files().items():
            if not Path(spec.json).is_file():
                problems.append(f"datasets.{name}: no such file {spec.json}")
            if not Path(spec.image_root).is_dir():
                problems.append(f"datasets.{name}: no such image root {spec.image_root}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            problems.append(f"device: {self.device!r}; allowed values: auto, cpu, cuda, cuda:N")
        if self.locality not in LOCALITY_DEFINITIONS:
            problems.append(f"locality: {self.locality!r} is unknown")
        return problems


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _world_families(world: Path) -> list[str]:
    from liveedit.world.build import MANIFEST

    path = Path(world) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{world}: not a liveedit world (no {MANIFEST}); `liveedit world build`")
    try:
        families = json.loads(path.read_text(encoding="utf-8"))["families"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable world manifest ({exc})") from exc
    return [str(f) for f in families]


def load_eval_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> EvalConfig:
    """:func:`liveedit.config.load_config` for :class:`EvalConfig` (validated)."""
    from liveedit.config import load_config

    return load_config(EvalConfig, path, overrides)


# ------------------------------------------------------------------------------- cells


@dataclass
class Cell:
    """One evaluation: (backbone, dataset, editor, #edits, seed) and the protocol settings."""

    backbone: str
    backbone_dir: str
    dataset: str
    format: str
    json: str
    image_root: str
    editor: str
    """The editor's label (its column in the tables)."""
    editor_name: str
    """The registry name the label builds."""
    editor_options: dict[str, Any]
    edits: int
    seed: int
    locality: str = "liveedit"
    max_records: int = 0
    score_batch_size: int = 32
    edit_batch: int = 1

    def describe(self) -> str:
        return f"{self.backbone}/{self.dataset}/{self.editor}/T={self.edits}/seed={self.seed}"


def cell_cost(cell: Cell) -> float:
    """A cell's relative cost, for scheduling only: its records (``max_records``, or 1000 when
    all) times (1 + optimiser steps per edit: ``steps`` of FT-L / FT-M, 0 otherwise). Handing
    the costliest cells out first keeps parallel workers from idling at the end of a grid."""
    from liveedit.editors.registry import optimiser_steps_per_edit

    records = cell.max_records or 1000
    return float(records * (1 + optimiser_steps_per_edit(cell.editor_name, cell.editor_options)))


def expand_cells(config: EvalConfig) -> list[Cell]:
    """Every cell of the grid, in table order (backbone, dataset, editor, T, seed)."""
    cells = []
    datasets = config.dataset_files()
    for backbone, directory in config.backbones.items():
        for dataset, spec in datasets.items():
            for label in config.editors:
                name, options = config.editor_spec(label)
                for edits in config.edits:
                    for seed in config.seeds:
                        cells.append(
                            Cell(
                                backbone=backbone,
                                backbone_dir=str(directory),
                                dataset=dataset,
                                format=spec.format,
                                json=str(spec.json),
                                image_root=str(spec.image_root),
                                editor=label,
                                editor_name=name,
                                editor_options=options,
                                edits=edits,
                                seed=seed,
                                locality=config.locality,
                                max_records=config.max_records,
                                score_batch_size=config.score_batch_size,
                                edit_batch=config.edit_batch,
                            )
                        )
    return cells


def backbone_fingerprint(directory: str | Path) -> str:
    """Hash of a backbone directory: ``config.json`` and ``liveedit_backbone.json`` contents,
    and the name, size and mtime of each weight file (weights are not read)."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for name in ("config.json", "liveedit_backbone.json"):
        path = directory / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    for path in sorted(directory.glob("*.safetensors*")):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def cell_key(cell: Cell) -> str:
    """The cache key of a cell (see the module docstring)."""
    from liveedit.editors.registry import editor_fingerprint, file_sha256

    payload = {
        "protocol": PROTOCOL_VERSION,
        "cell": to_dict(cell),
        "backbone": backbone_fingerprint(cell.backbone_dir),
        "dataset": file_sha256(cell.json),
        "editor": editor_fingerprint(cell.editor_name, cell.editor_options),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class CellResult:
    """The outcome of one cell: its per-record values and where they came from."""

    cell: Cell
    key: str
    result: LifelongResult
    cached: bool = False

    def means(self) -> dict[str, float]:
        return self.result.means()

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL_VERSION,
            "key": self.key,
            "cell": to_dict(self.cell),
            "result": self.result.to_dict(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], cached: bool = True) -> CellResult:
        return cls(
            Cell(**data["cell"]), data["key"], LifelongResult.from_dict(data["result"]), cached
        )


def write_cell(path: str | Path, result: CellResult) -> Path:
    """Write a cell result atomically (JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_cell(path: str | Path, key: str) -> CellResult | None:
    """A cached result for ``key``, or None (missing, unreadable or written for another key)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("protocol") != PROTOCOL_VERSION or data.get("key") != key:
            return None
        return CellResult.from_json(data, cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_cell_records(cell: Cell) -> list[EditRecord]:
    """The cell's records: the dataset file (images checked), capped at ``max_records``."""
    from liveedit.data.loaders import load_records

    records = load_records(cell.format, cell.json, cell.image_root, check_images=True).records
    return records[: cell.max_records] if cell.max_records else records


def evaluate_cell(
    cell: Cell,
    backbone: Backbone,
    records: Sequence[EditRecord] | None = None,
    *,
    show_progress: bool = False,
) -> CellResult:
    """Evaluate one cell on a loaded (clean) backbone; ``records`` (the cell's capped records)
    may be passed to avoid re-reading the dataset. The backbone is left clean."""
    import torch

    from liveedit.editors.registry import build_editor

    if records is None:
        records = load_cell_records(cell)
    torch.manual_seed(cell.seed)
    backbone.freeze()
    editor = build_editor(cell.editor_name, backbone, **cell.editor_options)
    try:
        result = run_lifelong(
            editor,
            records,
            cell.edits,
            cell.seed,
            locality=cell.locality,
            score_batch_size=cell.score_batch_size,
            edit_batch=cell.edit_batch,
            show_progress=show_progress,
            desc=cell.describe(),
        )
    finally:
        editor.reset()
    return CellResult(cell, cell_key(cell), result, cached=False)


# ------------------------------------------------------------------------------- MLflow


def _metric_name(*parts: str) -> str:
    return "/".join(re.sub(r"[^A-Za-z0-9_.\- ]+", "_", p) for p in parts)


def grid_identity(config: EvalConfig) -> EvalConfig:
    """The :class:`EvalConfig` fields of ``config``: what identifies a grid's MLflow parent run.
    Sections a subclass adds (how the cells are run, e.g. on Ray actors) do not change it, so a
    grid re-attaches to the same parent whatever evaluates its cells."""
    if type(config) is EvalConfig:
        return config
    return EvalConfig(**{f.name: getattr(config, f.name) for f in fields(EvalConfig)})


class GridTracking:
    """The MLflow side of a grid: a parent run (re-attached on a re-run of the same
    configuration in the same ``out``) and one child run per cell."""

    def __init__(self, config: EvalConfig, out: Path):
        from liveedit.tracking import Tracker, resolve_uri

        self.enabled = config.tracking.enabled
        self.parent_run_id: str | None = None
        if not self.enabled:
            return
        self._tracker_cls = Tracker
        uri = resolve_uri(config.tracking.uri)
        self.tracking = TrackingConfig(uri=uri, experiment=config.experiment, enabled=True)
        self.state_path = out / TRACKING_STATE
        config = grid_identity(config)
        chash = config_hash(config)
        state: dict[str, Any] = {}
        if self.state_path.is_file():
            try:
                state = json.loads(self.state_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                state = {}
        same = (
            state.get("uri") == uri
            and state.get("experiment") == config.experiment
            and state.get("config_hash") == chash
        )
        run_id = state.get("parent_run_id") if same else None
        parent = None
        if run_id:
            try:
                parent = Tracker(self.tracking, run_name="", run_id=run_id)
            except Exception:  # the run was deleted, or the store was reset
                parent = None
        if parent is None:
            parent = Tracker(self.tracking, run_name=f"{config.study}-grid-{chash[:8]}")
            parent.log_params(flatten(config))
            parent.set_tag("liveedit.kind", "eval-grid")
            parent.set_tag("liveedit.locality", config.locality)
            state = {}
        self.parent = parent
        self.parent_run_id = parent.run_id
        self.state = {
            "uri": uri,
            "experiment": config.experiment,
            "config_hash": chash,
            "parent_run_id": parent.run_id,
            "children": dict(state.get("children", {})),
            "summary": state.get("summary", ""),
        }
        self._save()

    def _save(self) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(self.state_path)

    def log_cell(self, result: CellResult) -> None:
        """A child run for the cell, unless this parent already has one."""
        if not self.enabled or result.key in self.state["children"]:
            return
        cell = result.cell
        child = self._tracker_cls(
            self.tracking, run_name=cell.describe(), parent_run_id=self.parent_run_id
        )
        child.log_params({**flatten(cell), "cell_key": result.key})
        res = result.result
        metrics = dict(result.means())
        metrics.update(
            n_records=len(res.records), n_chunks=res.n_chunks, tail=res.tail, n_edits=res.n_edits
        )
        if not result.cached:
            metrics["seconds"] = res.seconds
        child.log_metrics(metrics, step=cell.edits)
        for tag, value in (
            ("liveedit.kind", "eval-cell"),
            ("liveedit.cached", str(result.cached).lower()),
            ("liveedit.backbone", cell.backbone),
            ("liveedit.dataset", cell.dataset),
            ("liveedit.editor", cell.editor),
            ("liveedit.edits", str(cell.edits)),
            ("liveedit.seed", str(cell.seed)),
        ):
            child.set_tag(tag, value)
        child.finish()
        self.state["children"][result.key] = child.run_id
        self._save()

    def finish(self, table: Table, artifacts: dict[str, list[Path]]) -> None:
        """Per-T metrics (once per distinct table), artifacts, and the parent's end."""
        if not self.enabled:
            return
        summary = hashlib.sha256(table.csv().encode()).hexdigest()
        if summary != self.state.get("summary"):
            for row in table.rows:
                values = {}
                for key in SUMMARY_KEYS:
                    name = _metric_name(row.backbone, row.dataset, row.editor, key)
                    values[name] = row.mean[key]
                    values[name + "_std"] = row.std[key]
                self.parent.log_metrics(values, step=row.edits)
            self.parent.flush()
            self.state["summary"] = summary
            self._save()
        for folder, paths in artifacts.items():
            for path in paths:
                self.parent.log_artifact(path, folder or None)
        self.parent.finish()

    def fail(self) -> None:
        if self.enabled:
            self.parent.finish(status="FAILED")


# ------------------------------------------------------------------------------- the grid


@dataclass
class GridResult:
    """What :func:`run_eval` did: every cell's result (in grid order), how many cells were
    evaluated now and how many came from the cache, the table and the files written."""

    cells: list[CellResult]
    evaluated: int
    cached: int
    table: Table
    files: dict[str, Path]
    plots: list[Path]
    out: Path
    parent_run_id: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"{len(self.cells)} cells: {self.evaluated} evaluated, {self.cached} from the cache "
            f"({self.seconds:.1f} s)",
            "",
            self.table.markdown(),
        ]
        for fmt, path in self.files.items():
            lines.append(f"{fmt:12s} {path}")
        if self.plots:
            lines.append(f"{'plots':12s} {self.plots[0].parent} ({len(self.plots)} PNG)")
        if self.parent_run_id:
            lines.append(f"{'mlflow run':12s} {self.parent_run_id}")
        return "\n".join(lines)


def _device(spec: str) -> str:
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec


def significance_rows(cells: Sequence[CellResult], reference: str) -> list[dict[str, Any]]:
    """Paired t-tests of ``reference`` against every other editor, per backbone, dataset and T,
    on per-record values paired over (seed, record)."""
    groups: dict[tuple[str, str, int], dict[str, list[Any]]] = {}
    for c in cells:
        key = (c.cell.backbone, c.cell.dataset, c.cell.edits)
        groups.setdefault(key, {}).setdefault(c.cell.editor, []).extend(c.result.records)
    rows = []
    for (backbone, dataset, edits), by_editor in groups.items():
        if reference not in by_editor:
            continue
        for editor, records in by_editor.items():
            if editor == reference:
                continue
            for metric in SUMMARY_KEYS:
                test = compare_editors(by_editor[reference], records, metric)
                rows.append(
                    {
                        "backbone": backbone,
                        "dataset": dataset,
                        "edits": edits,
                        "editor": reference,
                        "baseline": editor,
                        "metric": metric,
                        "mean_diff": f"{100 * test.mean_diff:.2f}",
                        "t": f"{test.statistic:.4g}",
                        "p": f"{test.pvalue:.4g}",
                        "n": test.n,
                        "note": test.note,
                    }
                )
    return rows


def _write_significance(rows: list[dict[str, Any]], path: Path) -> Path:
    import csv

    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        fields = ["backbone", "dataset", "edits", "editor", "baseline", "metric"]
        fields += ["mean_diff", "t", "p", "n", "note"]
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path


def _reference_editor(config: EvalConfig) -> str | None:
    if len(config.editors) < 2:
        return None
    for label in config.editors:
        if config.editor_spec(label)[0] == "liveedit":
            return label
    return config.editors[-1]


CellSink = Callable[[CellResult], None]
"""Receives each finished cell (the grid caches it, tracks it and keeps it for the table)."""

CellRunner = Callable[["Sequence[tuple[Cell, str]]", "dict[str, list[EditRecord]]", CellSink], None]
"""Evaluates the pending ``(cell, key)`` pairs of a grid (``records``: each dataset's capped
records, by dataset name) and hands every result to the sink as soon as it is done, in any
order. The default runs them here, one backbone at a time; ``trainables/eval_actors.py``
shards them over Ray actors."""


def local_runner(config: EvalConfig, show: bool) -> CellRunner:
    """The single-process runner: each backbone loaded once, its pending cells in grid order."""

    def run(
        todo: Sequence[tuple[Cell, str]], records: dict[str, list[EditRecord]], sink: CellSink
    ) -> None:
        from liveedit.backbones.base import load_backbone
        from liveedit.progress import progress

        device = _device(config.device)
        for name, directory in config.backbones.items():
            mine = [(c, k) for c, k in todo if c.backbone == name]
            if not mine:
                continue
            backbone = load_backbone(directory).to(device)
            loop = progress(mine, f"eval {name}", len(mine), "cell") if show else iter(mine)
            for cell, _ in loop:
                sink(evaluate_cell(cell, backbone, records[cell.dataset], show_progress=show))
            del backbone

    return run


def run_eval(
    config: EvalConfig,
    *,
    show_progress: bool | None = None,
    runner: CellRunner | None = None,
) -> GridResult:
    """Run (or resume) the grid of ``config``; see the module docstring. ``runner`` evaluates
    the cells that are not cached (default: :func:`local_runner`); caching, the tables and
    MLflow are the same whatever runs the cells."""
    import torch

    start = time.perf_counter()
    problems = config.validate()
    if problems:
        raise ConfigError(problems, "eval config")
    show = config.progress if show_progress is None else show_progress
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    config_file = save_config(config, out)
    cache = Path(config.cache) if config.cache is not None else out / CELLS_DIR

    cells = expand_cells(config)
    # Every dataset is read (and its images checked) before any compute.
    records: dict[str, list[EditRecord]] = {}
    for cell in cells:
        if cell.dataset not in records:
            records[cell.dataset] = load_cell_records(cell)
    keys = [cell_key(cell) for cell in cells]

    tracking = GridTracking(config, out)
    results: dict[str, CellResult] = {}
    evaluated = cached = 0
    try:
        for key in keys:
            hit = read_cell(cache / f"{key}.json", key)
            if hit is not None:
                results[key] = hit
                cached += 1
                tracking.log_cell(hit)
        todo = [(c, k) for c, k in zip(cells, keys, strict=True) if k not in results]
        pending = {k: c for c, k in todo}

        def sink(result: CellResult) -> None:
            nonlocal evaluated
            if result.key in results:  # a cell delivered twice (a retried task): one row only
                return
            if result.key not in pending:  # a file changed while the grid ran
                raise RuntimeError(f"{result.cell.describe()}: inputs changed during the run")
            write_cell(cache / f"{result.key}.json", result)
            results[result.key] = result
            evaluated += 1
            tracking.log_cell(result)

        if todo:
            (runner or local_runner(config, show))(todo, records, sink)
        missing = [pending[k].describe() for k in pending if k not in results]
        if missing:
            raise RuntimeError(f"{len(missing)} cells were not evaluated: {', '.join(missing)}")

        ordered = [results[k] for k in keys]
        entries = [(c.cell.backbone, c.cell.dataset, c.cell.editor, c.result) for c in ordered]
        table = table_from_results(entries, config.locality, title=config.study)
        std: StdMode = config.table_std
        files = table.write(out, std=std)
        from .plots import plot_metrics

        plots = plot_metrics(table, out / "plots")
        extra = [config_file]
        reference = _reference_editor(config)
        if reference is not None:
            files["significance"] = _write_significance(
                significance_rows(ordered, reference), out / SIGNIFICANCE
            )
        tracking.finish(
            table,
            {"tables": list(files.values()), "plots": plots, "": extra},
        )
    except BaseException:
        tracking.fail()
        raise
    return GridResult(
        cells=ordered,
        evaluated=evaluated,
        cached=cached,
        table=table,
        files=files,
        plots=plots,
        out=out,
        parent_run_id=tracking.parent_run_id,
        seconds=time.perf_counter() - start,
    )


__all__ = [
    "Cell",
    "CellResult",
    "CellRunner",
    "CellSink",
    "DatasetFiles",
    "EvalConfig",
    "EvalTrackingConfig",
    "GridResult",
    "GridTracking",
    "backbone_fingerprint",
    "cell_key",
    "evaluate_cell",
    "expand_cells",
    "grid_identity",
    "load_cell_records",
    "local_runner",
    "load_eval_config",
    "read_cell",
    "run_eval",
    "significance_rows",
    "write_cell",
]
