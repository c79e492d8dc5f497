"""The synthetic visual world: the embedded default benchmark (DESIGN §2.2).

Generated scenes of coloured shapes and a small knowledge graph, written to disk in the public
E-VQA / E-IC / VLKEB JSON schemas with PNG images, plus the backbones' pretraining corpus, and
read back only through :func:`liveedit.data.loaders.load_records`.

Modules: ``vocabulary`` (closed word lists, templates, the word-splitting rule), ``scene``
(objects, scenes, disjoint scene pools), ``render`` (Pillow rendering and jitter), ``questions``
(unambiguous questions, captions, counterfactuals), ``knowledge`` (landmarks, relations, text
facts), ``families`` (edit records of ``vqa`` / ``caption`` / ``knowledge``), ``corpus`` (the
pretraining corpus), ``build`` (``build_world`` / ``load_world``). ``config`` holds the CLI's
typed ``WorldConfig``.
"""

from __future__ import annotations

from .build import SIZES, World, WorldError, WorldSummary, build_world, load_world

__all__ = ["SIZES", "World", "WorldError", "WorldSummary", "build_world", "load_world"]
