"""Editors by name: ``build_editor(name, backbone, **options)``.

==========  ==========  ====================================================================
name        title       options
==========  ==========  ====================================================================
``none``    N/A         none (the unedited model)
``ft-l``    FT-L        :class:`~liveedit.editors.finetune.FTConfig` fields (lr, steps, ...)
``ft-m``    FT-M        :class:`~liveedit.editors.finetune.FTConfig` fields
``liveedit`` LiveEdit   ``weights``: a directory of trained editor weights (required)
==========  ==========  ====================================================================

:func:`check_editor_options` validates options without building anything (configs call it
before any compute); :func:`editor_fingerprint` identifies an editor for cache keys (resolved
options, and the content hash of LiveEdit's weight files).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from liveedit.backbones.base import Backbone

    from .base import Editor

EDITOR_NAMES: tuple[str, ...] = ("none", "ft-l", "ft-m", "liveedit")
EDITOR_TITLES: dict[str, str] = {
    "none": "N/A",
    "ft-l": "FT-L",
    "ft-m": "FT-M",
    "liveedit": "LiveEdit",
}
LIVEEDIT_FILES = ("liveedit_config.json", "liveedit.safetensors")


def editor_title(label: str) -> str:
    """The table title of an editor label (``ft-l`` -> ``FT-L``; other labels unchanged)."""
    return EDITOR_TITLES.get(label, label)


def _ft_config(options: Mapping[str, Any]) -> Any:
    from liveedit.config import from_dict

    from .finetune import FTConfig

    return from_dict(FTConfig, dict(options), source="ft editor options")


def optimiser_steps_per_edit(name: str, options: Mapping[str, Any]) -> int:
    """The optimiser steps one edit costs: FT-L / FT-M's ``steps``; 0 for the others (N/A edits
    nothing, LiveEdit generates an expert in one forward)."""
    if name in ("ft-l", "ft-m"):
        return int(_ft_config(options).steps)
    return 0


def check_editor_options(name: str, options: Mapping[str, Any]) -> list[str]:
    """Problems with ``options`` for editor ``name`` (empty when it can be built)."""
    from liveedit.config import ConfigError

    if name not in EDITOR_NAMES:
        return [f"editor {name!r} is unknown; allowed values: {', '.join(EDITOR_NAMES)}"]
    if name == "none":
        return [f"{name}: unknown option {k!r}; it takes none" for k in sorted(options)]
    if name in ("ft-l", "ft-m"):
        try:
            _ft_config(options)
        except ConfigError as exc:
            return [f"{name}: {p}" for p in exc.problems]
        return []
    problems = [
        f"{name}: unknown option {k!r}; allowed: weights" for k in options if k != "weights"
    ]
    weights = options.get("weights")
    if not weights:
        problems.append(f"{name}: needs weights=DIR (trained LiveEdit weights, `liveedit train`)")
    else:
        missing = [f for f in LIVEEDIT_FILES if not (Path(str(weights)) / f).is_file()]
        if missing:
            problems.append(f"{name}: weights {weights}: missing {', '.join(missing)}")
    return problems


def build_editor(name: str, backbone: Backbone, **options: Any) -> Editor:
    """Build editor ``name`` over ``backbone`` (see the module docstring for the options)."""
    problems = check_editor_options(name, options)
    if problems:
        raise ValueError("; ".join(problems))
    if name == "none":
        from .finetune import NoEdit

        return NoEdit(backbone)
    if name in ("ft-l", "ft-m"):
        from .finetune import FTL, FTM

        cls = FTL if name == "ft-l" else FTM
        return cls(backbone, _ft_config(options))
    from .liveedit.editor import LiveEdit

    return LiveEdit.from_pretrained(backbone, Path(str(options["weights"])))


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, memoized per (path, size, mtime) within the process."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def editor_fingerprint(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies an editor's behaviour: its name, its resolved options and, for LiveEdit,
    the content hashes of the weight files (so retrained weights invalidate cached results)."""
    if name in ("ft-l", "ft-m"):
        return {"name": name, "options": asdict(_ft_config(options))}
    if name == "liveedit":
        weights = Path(str(options["weights"]))
        return {
            "name": name,
            "weights": {f: file_sha256(weights / f) for f in LIVEEDIT_FILES},
        }
    return {"name": name, "options": dict(options)}
