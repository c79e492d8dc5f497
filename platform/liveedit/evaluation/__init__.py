"""Evaluation: metrics, the lifelong protocol, the evaluation grid, tables and plots.

Names are imported lazily (torch, matplotlib and mlflow are heavy).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "METRICS": "metrics",
    "LOCALITY_DEFINITIONS": "metrics",
    "five_metric_average": "metrics",
    "locality": "metrics",
    "token_accuracy": "metrics",
    "LifelongResult": "lifelong",
    "PairedTest": "lifelong",
    "RecordResult": "lifelong",
    "SUMMARY_KEYS": "lifelong",
    "aggregate_seeds": "lifelong",
    "chunk_records": "lifelong",
    "compare_editors": "lifelong",
    "evaluate_chunk": "lifelong",
    "order_records": "lifelong",
    "paired_ttest": "lifelong",
    "run_lifelong": "lifelong",
    "Cell": "grid",
    "CellResult": "grid",
    "DatasetFiles": "grid",
    "EvalConfig": "grid",
    "GridResult": "grid",
    "evaluate_cell": "grid",
    "expand_cells": "grid",
    "load_eval_config": "grid",
    "run_eval": "grid",
    "Table": "tables",
    "TableRow": "tables",
    "table_from_results": "tables",
    "plot_metrics": "plots",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
