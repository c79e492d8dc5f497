"""LiveEdit as an :class:`~liveedit.editors.base.Editor` over a frozen backbone (paper §4.1–4.2).

Editing (§4.1): the edit samples run through the frozen backbone up to layer l_e (the forward
stops there); f_eg turns h_v ⊕ h_p ⊕ h_o into an expert (U_e, V_e) (Eq. 1) and f̂fe extracts the
routing features (φ̂, ψ̂) (Eq. 3); all are appended to the expert repository. A batch of B edits
costs one (truncated) backbone forward.

Inference (§4.2): a hook on the output of layer l_e extracts (φ̄, ψ̄) and φ̄_Θ from the input
(Eqs. 4–5), routes the stored experts (hard, Eq. 5; soft, Eq. 7) and adds their residual
(Eq. 6). Layer l_e runs once; an input without an image routes to no expert.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from liveedit.editors.base import Editor, EditSample

from .config import LiveEditConfig
from .modules import LiveEditModules
from .repository import ExpertRepository

if TYPE_CHECKING:
    from PIL import Image

    from liveedit.backbones.base import Backbone, LMBatch, Scores

EDITOR_WEIGHTS = "liveedit.safetensors"
EDITOR_CONFIG = "liveedit_config.json"


class _StopForward(Exception):
    """Raised from the layer-l_e hook once its output is captured: later layers are not needed."""


def backbone_id(backbone: Backbone) -> str:
    """A short identity of a backbone for repository manifests (arch, path, d, layers)."""
    return f"{backbone.arch}:{backbone.path}:{backbone.hidden_size}x{backbone.num_layers}"


def hidden_at_layer(backbone: Backbone, batch: LMBatch, layer: int) -> Tensor:
    """The output hidden state ``[B, L, d]`` of decoder ``layer`` for ``batch``, without running
    the layers above it (the forward is stopped by a hook right after ``layer``)."""
    captured: list[Tensor] = []

    def capture(h: Tensor) -> None:
        captured.append(h)
        raise _StopForward

    with backbone.layer_hook(layer, capture):
        try:
            backbone.forward(batch)
        except _StopForward:
            pass
    if not captured:
        raise RuntimeError(f"layer {layer} did not run in the backbone's forward")
    return captured[0]


class LiveEdit(Editor):
    """The LiveEdit editor: trained modules + a growing expert repository."""

    name = "liveedit"

    def __init__(self, backbone: Backbone, modules: LiveEditModules):
        super().__init__(backbone)
        self.cfg: LiveEditConfig = modules.cfg
        self._check_backbone(backbone, self.cfg)
        self.modules = modules.to(backbone.device).eval()
        self.modules.requires_grad_(False)
        self.backbone_id = backbone_id(backbone)
        self.repository = ExpertRepository.for_config(
            self.cfg, self.backbone_id, device=backbone.device
        )

    # -------------------------------------------------------------- construction

    @staticmethod
    def _check_backbone(backbone: Backbone, cfg: LiveEditConfig) -> None:
        problems = []
        if cfg.d != backbone.hidden_size:
            problems.append(f"d = {cfg.d} but the backbone's hidden size is {backbone.hidden_size}")
        if cfg.n_vision != backbone.num_vision_tokens:
            problems.append(
                f"n_vision = {cfg.n_vision} but the backbone has "
                f"{backbone.num_vision_tokens} vision tokens"
            )
        if not 0 <= cfg.layer < backbone.num_layers:
            problems.append(f"layer = {cfg.layer} outside the backbone's {backbone.num_layers}")
        if problems:
            raise ValueError("LiveEdit config does not fit the backbone: " + "; ".join(problems))

    @classmethod
    def from_pretrained(cls, backbone: Backbone, directory: str | Path) -> LiveEdit:
        """Load trained editor weights written by :func:`save_editor_weights`."""
        directory = Path(directory)
        config_path, weights_path = directory / EDITOR_CONFIG, directory / EDITOR_WEIGHTS
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{directory}: missing {path.name} (trained LiveEdit)")
        cfg = LiveEditConfig(**json.loads(config_path.read_text()))
        modules = LiveEditModules(cfg)
        modules.load_state_dict(load_file(str(weights_path)))
        return cls(backbone, modules)

    # -------------------------------------------------------------- Editor protocol

    @torch.no_grad()
    def apply(self, samples: Sequence[EditSample]) -> list[str]:
        """Eqs. 1 and 3 for a batch of edits, one truncated forward; experts appended in order."""
        if not samples:
            return []
        batch = self.backbone.build_inputs(
            [s.image for s in samples], [s.prompt for s in samples], [s.target for s in samples]
        )
        h = hidden_at_layer(self.backbone, batch, self.cfg.layer)
        experts = self.modules.make_experts(h, batch.spans)
        feats = self.modules.edit_features(h, batch.spans)
        ids = [s.edit_id for s in samples]
        self.repository.append(experts.U, experts.V, feats.phi, feats.psi, ids)
        return ids

    def reset(self) -> None:
        self.repository.clear()

    def remove(self, edit_id: str) -> None:
        self.repository.remove(edit_id)

    @torch.no_grad()
    def score(self, batch: LMBatch) -> Scores:
        """Teacher-forced scores through the edited model (routing at layer l_e)."""
        batch = batch.to(self.backbone.device)
        views = self.repository.views()

        def edit(h: Tensor) -> Tensor:
            return self.modules.route_and_apply(h, batch.spans, batch.has_image, views)

        with self.backbone.layer_hook(self.cfg.layer, edit):
            logits = self.backbone.forward(batch)
        return self.backbone.score(batch, logits)

    @torch.no_grad()
    def generate(
        self, images: Sequence[Image.Image | None], prompts: Sequence[str], max_new_tokens: int = 8
    ) -> list[str]:
        """Greedy generation; routing weights are decided on the prompt (first step) and the
        chosen experts adapt every generated position."""
        batch = self.backbone.build_inputs(list(images), list(prompts), None, padding_side="left")
        views = self.repository.views()
        state: dict[str, Tensor] = {}

        def edit(h: Tensor) -> Tensor:
            if len(views) == 0:
                return h
            if "weights" not in state:  # the prompt pass: spans index this sequence
                state["weights"] = self.modules.route(h, batch.spans, batch.has_image, views)
            return self.modules.adapt(h, state["weights"], views)

        with self.backbone.layer_hook(self.cfg.layer, edit):
            return self.backbone.generate(list(images), list(prompts), max_new_tokens)

    # -------------------------------------------------------------- persistence

    def save(self, directory: str | Path) -> Path:
        """The expert repository (safetensors + manifest, atomic) into ``directory``."""
        return self.repository.save(directory)

    def load(self, directory: str | Path) -> None:
        """Replace the repository by one saved for this config and backbone (checked)."""
        self.repository = ExpertRepository.load(
            directory,
            self.cfg.architecture_hash(),
            self.backbone_id,
            r=self.cfg.r,
            d=self.cfg.d,
            feature_dim=self.cfg.feature_dim,
            device=self.backbone.device,
        )


def save_editor_weights(modules: LiveEditModules, directory: str | Path) -> Path:
    """Write trained modules as ``liveedit.safetensors`` + ``liveedit_config.json``."""
    from dataclasses import asdict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in modules.state_dict().items()}
    tmp = directory / (EDITOR_WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(directory / EDITOR_WEIGHTS)
    cfg_tmp = directory / (EDITOR_CONFIG + ".tmp")
    cfg_tmp.write_text(json.dumps(asdict(modules.cfg), indent=2, sort_keys=True))
    cfg_tmp.replace(directory / EDITOR_CONFIG)
    return directory


def editor_state(modules: LiveEditModules) -> dict[str, Any]:
    """The modules' tensors on CPU (for checkpoints)."""
    return {k: v.detach().cpu() for k, v in modules.state_dict().items()}
