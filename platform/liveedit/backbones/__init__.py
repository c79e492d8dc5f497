"""Backbone adapters: the one interface every editor sees a VLLM through (DESIGN §2.3).

Names are imported lazily so that ``import liveedit.backbones`` stays cheap (transformers takes
seconds to import).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ARCHITECTURES": "base",
    "BACKBONE_JSON": "base",
    "Backbone": "base",
    "BackboneDir": "base",
    "BackboneError": "base",
    "LMBatch": "base",
    "Scores": "base",
    "Spans": "base",
    "backbone_class": "base",
    "describe": "base",
    "inspect_backbone_dir": "base",
    "load_backbone": "base",
    "Blip2OptBackbone": "blip2",
    "LlavaBackbone": "llava",
    "MiniGPT4Backbone": "minigpt4",
    "TWIN_ARCHS": "twins",
    "TwinSpec": "twins",
    "build_twin": "twins",
    "build_tokenizer": "tokenizer",
    "build_processor": "processors",
    "convert_minigpt4": "convert_minigpt4",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
