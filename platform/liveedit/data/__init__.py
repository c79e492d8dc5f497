"""Editing datasets: one record type (MMEdit field names), loaders for E-VQA / E-IC / VLKEB JSON,
and a torch Dataset over the five evaluation views (DESIGN §2.1, docs/CONTRACTS.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .loaders import (
    FORMAT_SPECS,
    FormatSpec,
    LoadResult,
    check_data,
    load_records,
    record_to_json,
    write_records,
)
from .records import (
    FORMATS,
    VIEWS,
    DataError,
    EditRecord,
    PortabilityQA,
    View,
    format_question,
    portability_views,
    record_views,
)

if TYPE_CHECKING:
    from .dataset import EditViewDataset, ViewBatch, ViewSample, collate_views, load_image

# The Dataset needs torch; import it only when asked for, so that reading and writing records
# (the world generator, `liveedit data check`) stays light.
_LAZY = {"EditViewDataset", "ViewBatch", "ViewSample", "collate_views", "load_image"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMATS",
    "FORMAT_SPECS",
    "VIEWS",
    "DataError",
    "EditRecord",
    "EditViewDataset",
    "FormatSpec",
    "LoadResult",
    "PortabilityQA",
    "View",
    "ViewBatch",
    "ViewSample",
    "check_data",
    "collate_views",
    "format_question",
    "load_image",
    "load_records",
    "portability_views",
    "record_to_json",
    "record_views",
    "write_records",
]
