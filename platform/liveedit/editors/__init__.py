"""Editors: the :class:`~liveedit.editors.base.Editor` protocol, LiveEdit, the fine-tuning
baselines and the registry (``build_editor``). Names are imported lazily (torch is heavy)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Editor": "base",
    "EditSample": "base",
    "EditableVLLM": "base",
    "EditNotRemovable": "base",
    "edit_samples": "base",
    "FTConfig": "finetune",
    "FTL": "finetune",
    "FTM": "finetune",
    "FineTune": "finetune",
    "NoEdit": "finetune",
    "EDITOR_NAMES": "registry",
    "EDITOR_TITLES": "registry",
    "build_editor": "registry",
    "check_editor_options": "registry",
    "editor_fingerprint": "registry",
    "editor_title": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
