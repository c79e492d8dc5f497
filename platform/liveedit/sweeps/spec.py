"""Sweep specifications: the YAML files under ``sweeps/`` as typed, validated data.

A spec says what one sweep runs (``liveedit sweep sweeps/NAME.yaml [key=value ...] [--tiny]``):

- ``base``: the configuration every trial starts from — ``base.train`` (a
  :class:`~liveedit.editors.liveedit.trainer.TrainConfig`: world, family, backbone, editor
  d_m / r / k / layer / heads / ablation switches, steps, ...), ``base.eval`` (a
  :class:`SweepEvalConfig`: the lifelong protocol of the trial's editor: dataset, editor,
  #edits, seeds, max_records) and ``base.distributed`` (a
  :class:`~liveedit.distributed.DistributedConfig`: ``workers: 0`` runs the single-process
  trainer inside the trial, ``workers >= 1`` runs Ray Train + DeepSpeed through
  :mod:`trainables.meta_train`). ``base.train.out`` and ``base.train.tracking`` are ignored: every
  trial trains into its own folder and logs into the sweep's MLflow experiment.
- ``search``: a mapping from dotted trial keys (``train.editor.d_m``, ``eval.editor``, ...) to a
  :class:`ParamSpec`: ``grid`` / ``choice`` (values), ``uniform`` / ``loguniform`` ([low, high],
  optional ``step``), ``randint`` / ``lograndint`` ([low, high], inclusive), or ``variants``
  (labelled bundles of overrides, e.g. Table 2's ablation rows). ``when: "train.editor.d_m >= 64"``
  makes a parameter conditional (define-by-run): it is searched only when the condition holds on
  the parameters listed before it (or the base config) and keeps its base value otherwise.
- ``objective`` (the five-metric average, or one metric, at a given #edits; ``mode`` max/min),
  ``searcher`` (``optuna``: TPE or random with a seed; ``grid``: every point of the space, for the
  paper's figures), ``scheduler`` (``asha`` over meta-training steps, or ``none``),
  ``num_samples``, ``concurrency`` (0: from the cluster's resources), ``resources`` per trial,
  ``max_failures`` (trial-level retries), ``storage`` (Tune's storage path), ``report`` (which
  figure or table the sweep produces), ``tracking`` (MLflow) and ``cluster`` (Ray address).
- ``tiny``: a nested mapping merged over the spec by ``--tiny`` (a variant small enough for a
  2-core laptop); ``null`` removes a key. The tiny variant's name gets ``_tiny`` appended unless
  the block sets ``name``. The block is validated on every load, with or without ``--tiny``.

Command-line overrides are dotted keys into the spec (``base.train.steps=200``, ``num_samples=20``,
``search.train.editor.d_m.grid=[32,64]``: under ``search`` the longest parameter name that prefixes
the key is the parameter). Every problem is reported at once with its dotted key before any
compute (:class:`~liveedit.config.ConfigError`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# _set_dotted: the CLI-override machinery of liveedit.config (same package), so that
# a value typed on the command line converts by its field's type exactly as in every other command.
from liveedit.config import ConfigError, _set_dotted, from_dict, to_dict
from liveedit.distributed import ClusterConfig, DistributedConfig
from liveedit.editors.liveedit.trainer import TrainConfig
from liveedit.editors.registry import EDITOR_NAMES
from liveedit.tracking import TrackingConfig

METRIC_KEYS: tuple[str, ...] = ("rel", "t_gen", "m_gen", "t_loc", "m_loc", "average")
"""The five metrics in table order and their average (``evaluation.lifelong.SUMMARY_KEYS``)."""
MetricKey = Literal["rel", "t_gen", "m_gen", "t_loc", "m_loc", "average"]
NAMESPACES: tuple[str, ...] = ("train", "eval", "distributed")
PARAM_KINDS: tuple[str, ...] = (
    "grid",
    "choice",
    "uniform",
    "loguniform",
    "randint",
    "lograndint",
    "variants",
)
DISCRETE_KINDS = ("grid", "choice", "variants")
LABEL = "label"
"""Pseudo-key of the report: a trial's label (its variant, or ``key=value`` pairs)."""
TINY_SUFFIX = "_tiny"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_SCALARS = (type(None), bool, int, float, str)


def _plain(value: Any) -> Any:
    """Values typed on the command line arrive as ``str`` subclasses: read them as YAML (so
    ``grid=[32,64]`` holds numbers); containers are converted recursively."""
    if isinstance(value, str) and type(value) is not str:
        text = str(value)
        return yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------- conditions

_CLAUSE = re.compile(r"^([A-Za-z_][\w.]*)\s*(==|!=|>=|<=|>|<|not\s+in\b|in\b)\s*(.+)$")
_OPS = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Clause:
    """``key op value`` of a ``when`` condition (``value`` parsed as YAML)."""

    key: str
    op: str
    value: Any

    def holds(self, actual: Any) -> bool:
        try:
            if self.op == "in":
                return actual in self.value
            if self.op == "not in":
                return actual not in self.value
            return bool(_OPS[self.op](actual, self.value))
        except TypeError:
            return False


def parse_condition(text: str) -> list[Clause]:
    """Clauses of ``"KEY OP VALUE [and KEY OP VALUE ...]"`` with OP one of ``== != >= <= > <
    in, not in`` (VALUE is YAML: a number, true/false, a string, a list for ``in``)."""
    clauses = []
    for part in re.split(r"\s+and\s+", text.strip()):
        match = _CLAUSE.match(part.strip())
        if match is None:
            raise ValueError(
                f"cannot read {part.strip()!r}; expected KEY OP VALUE with OP one of "
                "==, !=, >=, <=, >, <, in, not in (clauses joined by 'and')"
            )
        key, op, raw = match.groups()
        op = " ".join(op.split())
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ValueError(f"{part.strip()!r}: value {raw!r} is not valid YAML ({exc})") from None
        if op in ("in", "not in") and not isinstance(value, list):
            raise ValueError(f"{part.strip()!r}: '{op}' needs a list, e.g. [4, 8]")
        clauses.append(Clause(key, op, value))
    return clauses


# ------------------------------------------------------------------------------- the spec


@dataclass
class ParamSpec:
    """One searched parameter: exactly one of the value kinds, plus an optional condition.

    ``grid`` and ``choice`` both list values (the grid searcher enumerates them; Optuna treats
    them as categorical). ``uniform`` / ``loguniform`` are ``[low, high]`` floats (``step``
    quantizes ``uniform``); ``randint`` / ``lograndint`` are ``[low, high]`` integers, both ends
    included (``step`` spaces ``randint``). ``variants`` maps labels to bundles of dotted overrides
    (``{"- SR": {"train.editor.no_soft_routing": true}}``); the trial's value is the label.
    """

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: list[float] | None = None
    loguniform: list[float] | None = None
    randint: list[int] | None = None
    lograndint: list[int] | None = None
    step: float | None = None
    variants: dict[str, dict[str, Any]] | None = None
    when: str = ""
    """Define-by-run condition on earlier parameters or base values, e.g. ``"train.editor.d_m
    >= 64"``; when it does not hold, the parameter keeps its base value."""

    def __post_init__(self) -> None:
        for name in ("grid", "choice"):
            values = getattr(self, name)
            if values is not None:
                setattr(self, name, [_plain(v) for v in values])
        if self.variants is not None:
            self.variants = {
                str(label): {str(k): _plain(v) for k, v in (bundle or {}).items()}
                for label, bundle in self.variants.items()
            }

    @property
    def kind(self) -> str:
        kinds = [k for k in PARAM_KINDS if getattr(self, k) is not None]
        return kinds[0] if len(kinds) == 1 else ""

    @property
    def condition(self) -> list[Clause]:
        return parse_condition(self.when) if self.when.strip() else []

    def values(self) -> list[Any]:
        """The discrete values (grid, choice) or variant labels; ``[low, high]`` for ranges."""
        kind = self.kind
        if kind == "variants":
            return list(self.variants or {})
        return list(getattr(self, kind) or [])

    def validate(self) -> list[str]:
        kinds = [k for k in PARAM_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            got = ", ".join(kinds) or "none"
            return [f"values: give exactly one of {', '.join(PARAM_KINDS)} (got: {got})"]
        kind = kinds[0]
        problems: list[str] = []
        if kind in ("grid", "choice"):
            values = getattr(self, kind)
            if not values:
                problems.append(f"{kind}: empty; list at least one value")
            for i, v in enumerate(values):
                if not isinstance(v, _SCALARS):
                    problems.append(
                        f"{kind}[{i}]: {v!r} is not a scalar (use variants for bundles of values)"
                    )
            scalars = [json.dumps(v) for v in values if isinstance(v, _SCALARS)]
            if len(set(scalars)) != len(scalars):
                problems.append(f"{kind}: duplicate values {values}")
        elif kind == "variants":
            if not self.variants:
                problems.append("variants: empty; give label: {dotted.key: value, ...}")
        else:
            bounds = getattr(self, kind)
            integer = kind in ("randint", "lograndint")
            if len(bounds) != 2:
                problems.append(f"{kind}: expected [low, high], got {bounds}")
            else:
                low, high = bounds
                if integer and not all(isinstance(b, int) for b in bounds):
                    problems.append(f"{kind}: bounds must be integers, got {bounds}")
                if not low < high:
                    problems.append(f"{kind}: low {low} must be < high {high}")
                if kind.startswith("log") and low <= 0:
                    problems.append(f"{kind}: low {low} must be > 0 on a log scale")
        if self.step is not None:
            if kind not in ("uniform", "randint"):
                problems.append(f"step: only for uniform or randint, not {kind}")
            elif self.step <= 0:
                problems.append(f"step: {self.step} must be > 0")
            elif kind == "randint" and self.step != int(self.step):
                problems.append(f"step: {self.step} must be a whole number for randint")
        if self.when.strip():
            try:
                parse_condition(self.when)
            except ValueError as exc:
                problems.append(f"when: {exc}")
        return problems

    def suggest(self, trial: Any, name: str) -> Any:
        """Ask an Optuna trial (``optuna.trial.Trial``) for this parameter's value."""
        kind = self.kind
        if kind in DISCRETE_KINDS:
            return trial.suggest_categorical(name, self.values())
        low, high = getattr(self, kind)
        if kind == "uniform":
            return trial.suggest_float(name, low, high, step=self.step)
        if kind == "loguniform":
            return trial.suggest_float(name, low, high, log=True)
        if kind == "randint":
            return trial.suggest_int(name, low, high, step=int(self.step or 1))
        return trial.suggest_int(name, low, high, log=True)


@dataclass
class SweepEvalConfig:
    """The lifelong evaluation of each trial's editor (DESIGN §2.5; see
    :class:`~liveedit.evaluation.grid.EvalConfig`, which runs it).

    ``editor``: ``liveedit`` meta-trains a LiveEdit editor in the trial and evaluates its best
    weights (unless ``editor_options.weights`` names trained weights); ``none`` (the unedited
    model, Table 2's N/A), ``ft-l`` and ``ft-m`` are evaluated without meta-training.
    """

    dataset: str = ""
    """A world family (``vqa``, ``caption``, ``knowledge``); empty: ``train.family``."""
    split: Literal["train", "test"] = "test"
    editor: str = "liveedit"
    editor_options: dict[str, Any] = field(default_factory=dict)
    edits: list[int] = field(default_factory=lambda: [1000], metadata={"min": 1})
    """Numbers of edits T of the lifelong protocol (each T is evaluated and logged)."""
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"min": 0})
    max_records: int = field(default=0, metadata={"min": 0})
    """Cap on the test records (the first N of the file; 0 = all)."""
    locality: Literal["liveedit", "easyedit-top1", "easyedit-top10"] = "liveedit"
    score_batch_size: int = field(default=32, metadata={"min": 1})
    edit_batch: int = field(default=1, metadata={"min": 1})
    device: str = "auto"
    backbone_label: str = ""
    """The backbone's name in tables (empty: the backbone directory's name)."""

    def __post_init__(self) -> None:
        self.editor_options = {str(k): _plain(v) for k, v in self.editor_options.items()}

    def validate(self) -> list[str]:
        from liveedit.editors.registry import check_editor_options

        problems = []
        for key, values in (("edits", self.edits), ("seeds", self.seeds)):
            if not values:
                problems.append(f"{key}: empty")
            if len(set(values)) != len(values):
                problems.append(f"{key}: duplicate values {values}")
        if self.editor not in EDITOR_NAMES:
            allowed = ", ".join(EDITOR_NAMES)
            problems.append(f"editor: {self.editor!r} is unknown; allowed values: {allowed}")
        elif self.editor != "liveedit" or "weights" in self.editor_options:
            found = check_editor_options(self.editor, self.editor_options)
            problems += [f"editor_options: {p}" for p in found]
        else:
            unknown = sorted(self.editor_options)
            if unknown:
                problems.append(
                    f"editor_options: liveedit takes only weights=DIR (got {', '.join(unknown)})"
                )
        return problems

    @property
    def trains(self) -> bool:
        """Whether a trial with these settings meta-trains LiveEdit before evaluating."""
        return self.editor == "liveedit" and "weights" not in self.editor_options


@dataclass
class SweepBase:
    """The configuration of one trial: what every trial starts from, before the search space's
    values are applied (see the module docstring)."""

    train: TrainConfig = field(default_factory=TrainConfig)
    eval: SweepEvalConfig = field(default_factory=SweepEvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @property
    def dataset(self) -> str:
        return self.eval.dataset or self.train.family

    @property
    def backbone_label(self) -> str:
        return self.eval.backbone_label or Path(self.train.backbone).name


@dataclass
class ObjectiveSpec:
    """What a trial is judged by: ``metric`` (the five-metric ``average`` by default) after
    ``edits`` edits (0: the largest T of ``base.eval.edits``)."""

    metric: MetricKey = "average"
    edits: int = field(default=0, metadata={"min": 0})
    mode: Literal["max", "min"] = "max"


@dataclass
class SearcherSpec:
    """``optuna`` (Ray Tune's ``OptunaSearch``: TPE or random sampling, seeded) or ``grid``
    (every point of the space, each once per ``num_samples``)."""

    type: Literal["optuna", "grid"] = "optuna"
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = field(default=0, metadata={"min": 0})
    n_startup_trials: int = field(default=10, metadata={"min": 0})
    """TPE's random start-up trials."""


@dataclass
class SchedulerSpec:
    """``asha``: asynchronous successive halving over meta-training steps (each trial reports its
    loss at every checkpoint; the worse trials stop early). ``grace_period`` is in steps (0: one
    ``checkpoint_every``); trials without meta-training (e.g. editor ``none``) are never
    stopped."""

    type: Literal["none", "asha"] = "none"
    grace_period: int = field(default=0, metadata={"min": 0})
    reduction_factor: float = field(default=2.0, metadata={"min": 1.01})
    brackets: int = field(default=1, metadata={"min": 1})


@dataclass
class ResourcesSpec:
    """What one trial holds. With ``base.distributed.workers >= 1`` the trial itself only
    drives Ray Train (0.1 CPU) and each training worker takes ``base.distributed.*_per_worker``."""

    cpu: float = field(default=1.0, metadata={"min": 0.0})
    gpu: float = field(default=0.0, metadata={"min": 0.0})


@dataclass
class ReportSpec:
    """The figure or table the sweep reproduces (always plus a trials table):

    - ``grid2d``: Fig. 3 — ``x`` by ``y`` (e.g. d_m by r), colour = ``metric``, circle size =
      the editor's trainable parameters;
    - ``curves``: Figs. 4/5 — the five metrics (and their average) against ``x`` (k, l_e);
    - ``table``: Tables 1/2 — one row per ``rows`` value (default: the trial label) and #edits;
    - ``trials``: only the trials table and the objective per trial.

    ``x`` / ``y`` / ``rows`` are dotted trial keys (``train.editor.d_m``) or ``label``."""

    kind: Literal["trials", "grid2d", "curves", "table"] = "trials"
    x: str = ""
    y: str = ""
    rows: str = LABEL
    metric: Literal["", "rel", "t_gen", "m_gen", "t_loc", "m_loc", "average"] = ""
    """The grid's colour (empty: the objective's metric)."""
    edits: int = field(default=0, metadata={"min": 0})
    """The T the figure shows (0: the objective's)."""
    title: str = ""


@dataclass
class SweepTrackingConfig(TrackingConfig):
    """:class:`~liveedit.tracking.TrackingConfig` whose empty ``experiment`` means the sweep's
    name (one MLflow experiment per study)."""

    experiment: str = ""


@dataclass
class SweepSpec:
    """A sweep (see the module docstring)."""

    name: str = ""
    """Names the Tune experiment (``<storage>/<name>``) and, by default, the MLflow experiment.
    Never a timestamp: re-running the same command resumes the sweep."""
    description: str = ""
    base: SweepBase = field(default_factory=SweepBase)
    search: dict[str, ParamSpec] = field(default_factory=dict)
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    searcher: SearcherSpec = field(default_factory=SearcherSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    num_samples: int = field(default=1, metadata={"min": 1})
    """Optuna: the number of trials. Grid: how many times the grid runs."""
    concurrency: int = field(default=0, metadata={"min": 0})
    """Trials at once (0: as many as the cluster's resources hold at the start)."""
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    max_failures: int = field(default=1, metadata={"min": -1})
    """Retries of a failed trial, from its latest checkpoint (-1: no limit)."""
    time_budget_s: float = field(default=0.0, metadata={"min": 0.0})
    """Stop the sweep after this much time (0: no limit)."""
    storage: str = "runs/sweeps"
    """Tune's storage path (a local or shared folder, or ``s3://``, ``gs://`` ...)."""
    report: ReportSpec = field(default_factory=ReportSpec)
    tracking: SweepTrackingConfig = field(default_factory=SweepTrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tiny: dict[str, Any] = field(default_factory=dict)
    """Overrides merged by ``--tiny`` (see the module docstring)."""

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def objective_edits(self) -> int:
        return self.objective.edits or max(self.base.eval.edits)

    @property
    def report_metric(self) -> str:
        return self.report.metric or self.objective.metric

    @property
    def report_edits(self) -> int:
        return self.report.edits or self.objective_edits

    def validate(self) -> list[str]:
        problems: list[str] = []
        if not _NAME.fullmatch(self.name or ""):
            problems.append(
                f"name: {self.name!r}; give letters, digits, '_', '.', '-' (it names the Tune "
                "experiment and the MLflow experiment; no timestamps)"
            )
        base_flat = _flat(to_dict(self.base))
        earlier: list[str] = []
        for key, param in self.search.items():
            where = f"search.{key}"
            if key != key.strip() or not key:
                problems.append(f"{where}: empty or padded key")
                continue
            if param.kind == "variants":
                for label, bundle in (param.variants or {}).items():
                    problems += _check_assignments(self, bundle, f"{where}.variants.{label}")
            else:
                if key.split(".", 1)[0] not in NAMESPACES:
                    problems.append(
                        f"{where}: trial keys start with {', '.join(NAMESPACES)} "
                        "(e.g. train.editor.d_m)"
                    )
                else:
                    for value in param.values():
                        problems += _check_assignments(self, {key: value}, where)
            if self.searcher.type == "grid" and param.kind not in DISCRETE_KINDS:
                problems.append(
                    f"{where}: {param.kind} needs searcher.type=optuna; the grid searcher only "
                    "enumerates grid, choice and variants"
                )
            for clause in param.condition:
                if clause.key not in earlier and clause.key not in base_flat:
                    problems.append(
                        f"{where}.when: {clause.key!r} is neither a parameter listed before "
                        f"{key!r} nor a key of the base config"
                    )
            earlier.append(key)
        edits = self.base.eval.edits
        if self.objective.edits and self.objective.edits not in edits:
            problems.append(
                f"objective.edits: {self.objective.edits} is not one of base.eval.edits {edits}"
            )
        if self.report.edits and self.report.edits not in edits:
            problems.append(f"report.edits: {self.report.edits} is not one of base.eval.edits")
        needs = {"grid2d": ("x", "y"), "curves": ("x",), "table": ("rows",)}
        for axis in needs.get(self.report.kind, ()):
            if not getattr(self.report, axis):
                problems.append(f"report.{axis}: required by report.kind={self.report.kind}")
        for axis in ("x", "y", "rows"):
            key = getattr(self.report, axis)
            if key and key != LABEL and key not in self.search and key not in base_flat:
                problems.append(
                    f"report.{axis}: {key!r} is neither a search key, a base key nor 'label'"
                )
        if self.base.distributed.workers and self.resources.gpu:
            problems.append(
                "resources.gpu: with base.distributed.workers >= 1 the GPUs go to the training "
                "workers (base.distributed.gpus_per_worker), not to the trial"
            )
        return problems


# ------------------------------------------------------------------------------- helpers


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _assign(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{key}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def trial_data(spec: SweepSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """The plain ``{train, eval, distributed}`` mapping of a trial: the base with the
    parameters' values (and the bundles of ``variants`` parameters) applied in search order."""
    data = to_dict(spec.base)
    for key in [*spec.search, *(k for k in params if k not in spec.search)]:
        if key not in params:
            continue
        value = params[key]
        param = spec.search.get(key)
        if param is not None and param.kind == "variants":
            bundle = (param.variants or {}).get(str(value))
            if bundle is None:
                labels = ", ".join(param.variants or {})
                raise ValueError(f"{key}: {value!r} is not a variant; allowed values: {labels}")
            for sub_key, sub_value in bundle.items():
                _assign(data, sub_key, sub_value)
        else:
            _assign(data, key, value)
    return data


def resolve_trial(spec: SweepSpec, params: Mapping[str, Any]) -> SweepBase:
    """The validated :class:`SweepBase` of a trial (raises :class:`ConfigError` naming the
    trial keys at fault)."""
    try:
        data = trial_data(spec, params)
    except ValueError as exc:
        raise ConfigError([str(exc)], "trial") from None
    return from_dict(SweepBase, data, source=f"trial {dict(params)}")


def _check_assignments(spec: SweepSpec, bundle: Mapping[str, Any], where: str) -> list[str]:
    for key in bundle:
        if key.split(".", 1)[0] not in NAMESPACES:
            return [f"{where}: {key!r}: trial keys start with {', '.join(NAMESPACES)}"]
    try:
        data = to_dict(spec.base)
        for key, value in bundle.items():
            _assign(data, key, value)
        from_dict(SweepBase, data)
    except ValueError as exc:
        problems = getattr(exc, "problems", None) or [str(exc)]
        shown = dict(bundle)
        return [f"{where}: {shown}: {p}" for p in problems]
    return []


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trial_label(spec: SweepSpec, params: Mapping[str, Any]) -> str:
    """A short human label of a trial: variant labels as they are, other parameters as
    ``name=value`` with the last part of the key (``d_m=64, r=4``)."""
    parts = []
    for key, param in spec.search.items():
        if key in params:
            value = params[key]
            parts.append(str(value) if param.kind == "variants" else f"{_short(key)}={_fmt(value)}")
    return ", ".join(parts) or "base"


def _holds(param: ParamSpec, point: Mapping[str, Any], spec: SweepSpec) -> bool:
    clauses = param.condition
    if not clauses:
        return True
    values = _flat(trial_data(spec, point))
    for clause in clauses:
        actual = point[clause.key] if clause.key in point else values.get(clause.key)
        if not clause.holds(actual):
            return False
    return True


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every point of a discrete search space in row-major order (the first parameter varies
    slowest); a conditional parameter branches only where its condition holds. Duplicates are
    dropped."""
    points: list[dict[str, Any]] = [{}]
    for key, param in spec.search.items():
        if param.kind not in DISCRETE_KINDS:
            raise ValueError(f"search.{key}: {param.kind} cannot be enumerated by a grid")
        grown = []
        for point in points:
            if not _holds(param, point, spec):
                grown.append(point)
                continue
            grown += [{**point, key: value} for value in param.values()]
        points = grown
    seen, unique = set(), []
    for point in points:
        token = json.dumps(point, sort_keys=True)
        if token not in seen:
            seen.add(token)
            unique.append(point)
    return unique


class DefineByRun:
    """Optuna's define-by-run search space of a spec (Ray Tune's ``OptunaSearch(space=...)``):
    parameters are suggested in order; a conditional one only where its condition holds.
    Picklable (Tune saves the searcher with the experiment)."""

    def __init__(self, spec: SweepSpec):
        self.spec_data = to_dict(spec)
        self._spec: SweepSpec | None = spec

    def __getstate__(self) -> dict[str, Any]:
        return {"spec_data": self.spec_data}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.spec_data = state["spec_data"]
        self._spec = None

    @property
    def spec(self) -> SweepSpec:
        if self._spec is None:
            self._spec = from_dict(SweepSpec, self.spec_data)
        return self._spec

    def __call__(self, trial: Any) -> None:
        spec = self.spec
        point: dict[str, Any] = {}
        for key, param in spec.search.items():
            if _holds(param, point, spec):
                point[key] = param.suggest(trial, key)
        return None


def candidate_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Points worth checking before any compute: the whole grid for the grid searcher; for
    Optuna every value (or both ends of a range) of each parameter on its own."""
    if spec.searcher.type == "grid":
        return grid_points(spec)
    points: list[dict[str, Any]] = [{}]
    for key, param in spec.search.items():
        if _holds(param, {}, spec):  # a conditional one only where its condition can hold alone
            points += [{key: value} for value in param.values()]
    return points


def spec_hash(spec: SweepSpec, length: int = 16) -> str:
    """Hash of what decides a sweep's trials (base, search, objective, searcher, scheduler,
    samples, resources, failures, budget, storage): a sweep is resumed only under the same hash.
    Not included: description, concurrency, report, tracking, cluster, tiny."""
    data = to_dict(spec)
    for key in ("description", "concurrency", "report", "tracking", "cluster", "tiny"):
        data.pop(key, None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# ------------------------------------------------------------------------------- loading


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` merged into ``base``: mappings merge key by key, ``None`` removes a key,
    anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _apply_overrides(data: dict[str, Any], overrides: Sequence[str], problems: list[str]) -> None:
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"override '{item}': expected key.sub=value")
            continue
        if key.startswith("search."):
            search = data.setdefault("search", {})
            if not isinstance(search, dict):
                problems.append(f"{key}: 'search' is not a mapping")
                continue
            rest = key[len("search.") :]
            names = sorted(
                (n for n in search if rest == n or rest.startswith(n + ".")), key=len, reverse=True
            )
            if names:
                name, sub = names[0], rest[len(names[0]) + 1 :]
            else:
                name, _, sub = rest.rpartition(".")
            if not name or not sub:
                problems.append(
                    f"{key}: expected search.<parameter>.<field>=value, e.g. "
                    "search.train.editor.d_m.grid=[32,64]"
                )
                continue
            param = search.setdefault(name, {})
            if not isinstance(param, dict):
                problems.append(f"{key}: search.{name} is not a mapping")
                continue
            _set_dotted(param, sub, raw.strip(), problems)
        else:
            _set_dotted(data, key, raw.strip(), problems)


def _read_yaml(path: str | Path) -> dict[str, Any]:
    source = str(path)
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"sweep spec not found: {path}"], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], source) from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError([f"the top level must be a mapping, got {type(loaded).__name__}"], source)
    return loaded


def _variant(raw: Mapping[str, Any], tiny: bool, source: str) -> dict[str, Any]:
    if not tiny:
        return copy.deepcopy(dict(raw))
    block = raw.get("tiny") or {}
    if not isinstance(block, Mapping):
        raise ConfigError([f"tiny: expected a mapping, got {type(block).__name__}"], source)
    data = merge(raw, block)
    if "name" not in block and data.get("name"):
        data["name"] = f"{data['name']}{TINY_SUFFIX}"
    return data


def load_spec(path: str | Path, overrides: Sequence[str] = (), *, tiny: bool = False) -> SweepSpec:
    """Load, merge (``--tiny``), override and validate a sweep spec; every problem is reported at
    once. The tiny variant is validated too when the full one is asked for (a broken ``tiny:``
    block cannot land)."""
    source = str(path)
    raw = _read_yaml(path)
    if tiny is False and raw.get("tiny"):
        try:
            from_dict(SweepSpec, _variant(raw, True, source), source=f"{source} (--tiny)")
        except ConfigError as exc:
            raise ConfigError([f"tiny: {p}" for p in exc.problems], source) from None
    data = _variant(raw, tiny, source)
    problems: list[str] = []
    _apply_overrides(data, overrides, problems)
    if problems:
        raise ConfigError(problems, source)
    return from_dict(SweepSpec, data, source=source + (" (--tiny)" if tiny else ""))


# ------------------------------------------------------------------------------- inputs


def backbone_layers(directory: str | Path) -> int | None:
    """The number of decoder layers of a backbone directory (None if it does not say)."""
    from liveedit.backbones.base import inspect_backbone_dir

    found = inspect_backbone_dir(directory)
    layers = found.info.get("num_layers") or (found.config.get("text_config") or {}).get(
        "num_hidden_layers"
    )
    return int(layers) if layers is not None else None


def check_inputs(spec: SweepSpec) -> list[str]:
    """Everything that would make a trial fail before it computes anything, checked on the
    driver: each candidate point's config, the world and its dataset file, the backbone and the
    editor layer l_e, the objective's #edits, the editor options."""
    from liveedit.backbones.base import BackboneError
    from liveedit.world.build import MANIFEST

    problems: list[str] = []
    try:
        points = candidate_points(spec)
    except ValueError as exc:
        return [str(exc)]
    layers_of: dict[str, int | None] = {}
    seen_paths: set[str] = set()
    for point in points:
        where = f"trial {point}" if point else "base"
        try:
            trial = resolve_trial(spec, point)
        except ConfigError as exc:
            problems += [f"{where}: {p}" for p in exc.problems]
            continue
        if spec.objective_edits not in trial.eval.edits:
            problems.append(
                f"{where}: eval.edits {trial.eval.edits} lacks the objective's T = "
                f"{spec.objective_edits}"
            )
        train = trial.train
        world = Path(train.world)
        files = [world / trial.dataset / f"{trial.eval.split}.json"]
        if trial.eval.trains:
            files.append(world / train.family / "train.json")
        for file in files:
            if str(file) in seen_paths:
                continue
            seen_paths.add(str(file))
            if not (world / MANIFEST).is_file():
                problems.append(
                    f"{where}: train.world: {world} is not a liveedit world (no {MANIFEST}); "
                    "build one with `liveedit world build`"
                )
            elif not file.is_file():
                problems.append(f"{where}: no dataset file {file} (train.family / eval.dataset)")
        backbone = str(train.backbone)
        if backbone not in layers_of:
            try:
                layers_of[backbone] = backbone_layers(backbone)
            except BackboneError as exc:
                layers_of[backbone] = None
                problems.append(f"{where}: train.backbone: {exc}")
        layers = layers_of[backbone]
        if trial.eval.trains and layers is not None and not 0 <= train.editor.layer < layers:
            problems.append(
                f"{where}: train.editor.layer: {train.editor.layer} is outside the backbone's "
                f"{layers} layers (allowed 0..{layers - 1})"
            )
        if trial.eval.trains and trial.distributed.workers:
            batch, workers = train.batch_size, trial.distributed.workers
            if batch % workers or batch // workers < 2:
                problems.append(
                    f"{where}: train.batch_size: {batch} must be a multiple of "
                    f"distributed.workers ({workers}) with >= 2 records per worker"
                )
    unique = []
    for p in problems:
        if p not in unique:
            unique.append(p)
    return unique


def describe_points(spec: SweepSpec) -> list[str]:
    """One line per trial of a grid spec (``liveedit sweep --dry-run``)."""
    if spec.searcher.type != "grid":
        lines = [f"{spec.num_samples} Optuna ({spec.searcher.sampler}) trials over:"]
        for key, param in spec.search.items():
            cond = f"  when {param.when}" if param.when else ""
            lines.append(f"  {key}: {param.kind} {param.values()}{cond}")
        return lines
    points = grid_points(spec)
    total = len(points) * spec.num_samples
    lines = [f"{total} trials ({len(points)} grid points x {spec.num_samples}):"]
    for i, point in enumerate(points):
        lines.append(f"  {i:3d}  {trial_label(spec, point)}")
    return lines


__all__ = [
    "LABEL",
    "METRIC_KEYS",
    "Clause",
    "DefineByRun",
    "ObjectiveSpec",
    "ParamSpec",
    "ReportSpec",
    "ResourcesSpec",
    "SchedulerSpec",
    "SearcherSpec",
    "SweepBase",
    "SweepEvalConfig",
    "SweepSpec",
    "SweepTrackingConfig",
    "backbone_layers",
    "candidate_points",
    "check_inputs",
    "describe_points",
    "grid_points",
    "load_spec",
    "merge",
    "parse_condition",
    "resolve_trial",
    "spec_hash",
    "trial_data",
    "trial_label",
]
