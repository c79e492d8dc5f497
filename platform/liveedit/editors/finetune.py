"""Fine-tuning baselines FT-L and FT-M, and the unedited model "N/A" (paper §5.1, §7.3, Table 3).

- **FT-L** fine-tunes the last decoder layer of the language model
  (:attr:`~liveedit.backbones.base.Backbone.last_decoder_layer`).
- **FT-M** fine-tunes the vision-to-LM bridge (:attr:`~liveedit.backbones.base.Backbone.bridge`):
  the Q-Former for BLIP-2 and MiniGPT-4, the multimodal projector for LLaVA (paper Table 3).
- **N/A** (:class:`NoEdit`) applies nothing: the unedited model, Table 2's first row.

Each call of :meth:`FineTune.apply` is one edit step of the lifelong stream: ``steps`` AdamW steps
(lr 1e-3, 25 steps in the paper) on the mean NLL of the target tokens of the given samples (one
sample per call in the default protocol; several samples of one call are trained jointly). Edits
accumulate: nothing is undone between edits. :meth:`FineTune.reset` restores the trained module
from a copy of *its own* state dict taken when the editor was built (never a copy of the whole
model), bitwise.

Decisions:

- The backbone stays in ``eval()`` mode while training (no dropout), so an edit is deterministic.
- A fresh optimizer per edit call (EasyEdit's FT does the same): Adam moments do not carry over
  from one edit to the next.
- ``weight_decay`` defaults to 0 (EasyEdit's FT hyper-parameters): AdamW's default 0.01 would
  shrink the trained layer by about 22% over 1,000 edits x 25 steps whatever the edits are.
- The edit state saved by :meth:`FineTune.save` is the trained module's weights as safetensors
  (``ft_module.safetensors``) with a JSON manifest (``ft_editor.json``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .base import Editor, EditSample

if TYPE_CHECKING:
    from liveedit.backbones.base import Backbone

FT_WEIGHTS = "ft_module.safetensors"
FT_MANIFEST = "ft_editor.json"
NOEDIT_MANIFEST = "noedit_editor.json"


@dataclass
class FTConfig:
    """Hyper-parameters of FT-L / FT-M (paper Table 3: AdamW, lr 1e-3, 25 iterations)."""

    lr: float = field(default=1e-3, metadata={"min": 0.0})
    steps: int = field(default=25, metadata={"min": 1})
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    """AdamW's decoupled weight decay (0: see the module docstring)."""
    max_grad_norm: float = field(default=0.0, metadata={"min": 0.0})
    """Clip the gradient norm of the trained module (0: no clipping)."""


def _backbone_id(backbone: Backbone) -> str:
    return f"{backbone.arch}:{backbone.path}:{backbone.hidden_size}x{backbone.num_layers}"


class NoEdit(Editor):
    """The unedited model ("N/A"): edits are recorded but change nothing."""

    name = "none"

    def __init__(self, backbone: Backbone):
        super().__init__(backbone)
        self.edit_ids: list[str] = []

    def apply(self, samples: Sequence[EditSample]) -> list[str]:
        ids = [s.edit_id for s in samples]
        self.edit_ids.extend(ids)
        return ids

    def reset(self) -> None:
        self.edit_ids = []

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        manifest = {"editor": self.name, "edit_ids": self.edit_ids}
        _write_json_atomic(directory / NOEDIT_MANIFEST, manifest)
        return directory

    def load(self, directory: str | Path) -> None:
        manifest = _read_manifest(Path(directory) / NOEDIT_MANIFEST, self.name)
        self.edit_ids = list(manifest["edit_ids"])


class FineTune(Editor):
    """Fine-tune one module of the backbone on each edit (the base of FT-L and FT-M).

    Subclasses name the module through :meth:`trained_module`. The module's original state dict
    is copied once, at construction: build the editor on a clean backbone.
    """

    name = "ft"
    module_name = ""

    def __init__(self, backbone: Backbone, config: FTConfig | None = None):
        super().__init__(backbone)
        self.config = config or FTConfig()
        self.module: nn.Module = self.trained_module(backbone)
        self._original = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        self.edit_ids: list[str] = []
        self._dirty = False

    def trained_module(self, backbone: Backbone) -> nn.Module:
        raise NotImplementedError

    # ------------------------------------------------------------------ Editor protocol

    def apply(self, samples: Sequence[EditSample]) -> list[str]:
        """``steps`` optimizer steps on the mean target NLL of ``samples`` (trained jointly)."""
        if not samples:
            return []
        backbone = self.backbone
        batch = backbone.build_inputs(
            [s.image for s in samples], [s.prompt for s in samples], [s.target for s in samples]
        )
        params = list(self.module.parameters())
        backbone.unfreeze(self.module)
        self._dirty = True
        try:
            optimizer = torch.optim.AdamW(
                params, lr=self.config.lr, weight_decay=self.config.weight_decay
            )
            with torch.enable_grad():
                for _ in range(self.config.steps):
                    optimizer.zero_grad(set_to_none=True)
                    loss = backbone.score(batch).nll.mean()
                    loss.backward()
                    if self.config.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
                    optimizer.step()
        finally:
            self.module.requires_grad_(False)
            for p in params:
                p.grad = None
        ids = [s.edit_id for s in samples]
        self.edit_ids.extend(ids)
        return ids

    @torch.no_grad()
    def reset(self) -> None:
        """Restore the trained module's original weights (bitwise) and forget the edits."""
        if self._dirty:
            self.module.load_state_dict(self._original)
            self._dirty = False
        self.edit_ids = []

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """The trained module's weights (safetensors) and a manifest, written atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().cpu().clone().contiguous() for k, v in self.module.state_dict().items()
        }
        tmp = directory / (FT_WEIGHTS + ".tmp")
        save_file(state, str(tmp))
        tmp.replace(directory / FT_WEIGHTS)
        manifest = {
            "editor": self.name,
            "module": self.module_name,
            "backbone": _backbone_id(self.backbone),
            "config": asdict(self.config),
            "edit_ids": self.edit_ids,
        }
        _write_json_atomic(directory / FT_MANIFEST, manifest)
        return directory

    @torch.no_grad()
    def load(self, directory: str | Path) -> None:
        """Load weights saved by :meth:`save` of the same editor kind into the module."""
        directory = Path(directory)
        manifest = _read_manifest(directory / FT_MANIFEST, self.name)
        weights = directory / FT_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{directory}: missing {FT_WEIGHTS}")
        state = load_file(str(weights))
        own = self.module.state_dict()
        if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
            raise ValueError(
                f"{weights}: the saved {manifest.get('module')} does not match this backbone's "
                f"{self.module_name} (keys or shapes differ)"
            )
        self.module.load_state_dict(state)
        self._dirty = True
        self.edit_ids = list(manifest.get("edit_ids", []))


class FTL(FineTune):
    """FT-L: fine-tune the last decoder layer of the language model."""

    name = "ft-l"
    module_name = "last_decoder_layer"

    def trained_module(self, backbone: Backbone) -> nn.Module:
        return backbone.last_decoder_layer


class FTM(FineTune):
    """FT-M: fine-tune the vision-to-LM bridge (Q-Former / multimodal projector)."""

    name = "ft-m"
    module_name = "bridge"

    def trained_module(self, backbone: Backbone) -> nn.Module:
        return backbone.bridge


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _read_manifest(path: Path, editor: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: missing {path.name} (a saved {editor} state)")
    manifest = json.loads(path.read_text())
    if manifest.get("editor") != editor:
        raise ValueError(f"{path}: saved by editor {manifest.get('editor')!r}, not {editor!r}")
    return manifest
