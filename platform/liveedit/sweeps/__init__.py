"""Sweep specifications and reports (``liveedit sweep``, ``liveedit report``; DESIGN §3).

- :mod:`liveedit.sweeps.spec`: the typed sweep specification (``sweeps/*.yaml``), its search space
  (grid, choice, uniform / log-uniform, integer ranges, labelled variants, define-by-run
  conditions), grid expansion, Optuna's define-by-run suggestions and per-trial configs.
- :mod:`liveedit.sweeps.report`: the paper's figures (Fig. 3 d_m x r grid, Figs. 4/5 metric
  curves), the ablation / lifelong tables and the trials table, rebuilt from MLflow alone.

No Ray here (DESIGN §1): the Tune driver is :mod:`trainables.sweep`.
"""

from .spec import (
    ObjectiveSpec,
    ParamSpec,
    ReportSpec,
    ResourcesSpec,
    SchedulerSpec,
    SearcherSpec,
    SweepBase,
    SweepEvalConfig,
    SweepSpec,
    grid_points,
    load_spec,
    resolve_trial,
    trial_label,
)

__all__ = [
    "ObjectiveSpec",
    "ParamSpec",
    "ReportSpec",
    "ResourcesSpec",
    "SchedulerSpec",
    "SearcherSpec",
    "SweepBase",
    "SweepEvalConfig",
    "SweepSpec",
    "grid_points",
    "load_spec",
    "resolve_trial",
    "trial_label",
]
