"""One meta-training step of LiveEdit (paper §4.3) over a frozen backbone.

For a batch of B training records the step builds one LM batch of 4B rows — edit samples D_e,
text- and image-rephrase generality samples D_g, multimodal-locality samples D_l — and runs:

1. a no-grad forward of the frozen model (no editor) giving the pre-edit hidden states at layer
   l_e of every row and the pre-edit logits of the locality rows (Eq. 11's f_θ; the same model,
   never a copy);
2. f_eg and f̂fe on the edit rows' states: the batch's experts (Eq. 1) and edit-side features
   (Eq. 3) — the mixture Ê of the whole batch, as at inference (§4.3.1);
3. one forward with the editor hooked on layer l_e: the hook extracts the input-side features
   (Eqs. 4–5), soft-routes every row over Ê (Eq. 7) and adds the residual (Eq. 6) — layer l_e runs
   exactly once, as at inference;
4. ℓ_edit (Eqs. 8–11) from the edited logits and ℓ_route (Eqs. 12–16) from the features, with the
   random split of each edit / generality pair into D̂g (edit side) and D̄g (input side).

Only the editor's parameters receive gradients; the backbone stays frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch import Tensor

from liveedit.data.records import EditRecord, record_views

from .losses import LossBreakdown, liveedit_loss, locality_kl, split_generality_domain, target_nll
from .modules import LiveEditModules
from .routing import RepositoryViews, route

if TYPE_CHECKING:
    from liveedit.backbones.base import Backbone, LMBatch

TRAIN_VIEWS = ("edit", "rephrase", "image_rephrase", "m_loc")
"""Row blocks of a training batch, in order: D_e, D_g (text), D_g (image), D_l."""


@dataclass
class TrainingBatch:
    """The 4B-row LM batch of one step and the slice of each block."""

    batch: LMBatch
    size: int  # B

    def rows(self, view: str) -> slice:
        i = TRAIN_VIEWS.index(view)
        return slice(i * self.size, (i + 1) * self.size)


def _load_rgb(record: EditRecord, relative: str | None) -> Image.Image | None:
    if relative is None:
        return None
    with Image.open(record.image_path(relative)) as img:
        return img.convert("RGB")


def build_training_batch(backbone: Backbone, records: Sequence[EditRecord]) -> TrainingBatch:
    """LM inputs of the edit, both generality and the multimodal-locality views of ``records``."""
    images, prompts, targets = [], [], []
    all_views = [record_views(r) for r in records]
    for view in TRAIN_VIEWS:
        for record, views in zip(records, all_views, strict=True):
            v = views[view]
            images.append(_load_rgb(record, v.image))
            prompts.append(v.prompt)
            targets.append(v.target)
    return TrainingBatch(backbone.build_inputs(images, prompts, targets), len(records))


def _pick(rows: Tensor, first: slice, second: slice, choose_second: Tensor) -> Tensor:
    """Per example b: row ``first[b]`` or ``second[b]`` of ``rows`` as ``choose_second[b]``."""
    a, b = rows[first], rows[second]
    mask = choose_second.to(device=rows.device, dtype=torch.bool).view(-1, *([1] * (a.dim() - 1)))
    return torch.where(mask, b, a)


def training_step(
    backbone: Backbone,
    modules: LiveEditModules,
    tb: TrainingBatch,
    generator: torch.Generator | None = None,
) -> LossBreakdown:
    """ℓ_total = ℓ_edit + ℓ_route for one batch (differentiable w.r.t. ``modules`` only)."""
    cfg = modules.cfg
    batch = tb.batch.to(backbone.device)
    layer = cfg.layer
    size = tb.size
    target_mask = batch.span_mask("target")

    # 1. pre-edit states at l_e and pre-edit logits (no grad, frozen model, no editor)
    with torch.no_grad():
        pre_logits, hidden = backbone.forward_with_hidden(batch, [layer])
        h_pre = hidden[layer]

    # 2. the batch's experts and edit-side features (Eqs. 1, 3)
    e_rows = tb.rows("edit")
    spans = batch.spans
    experts = modules.make_experts(h_pre[e_rows], spans[e_rows])
    edit_side = modules.edit_features(h_pre, spans)  # f̂fe on every row
    views = RepositoryViews(experts.U, experts.V, edit_side.phi[e_rows], edit_side.psi[e_rows])

    # 3. the edited forward: input-side features and soft routing over Ê inside the hook
    stash: dict[str, object] = {}

    def edit(h: Tensor) -> Tensor:
        feats = modules.input_features(h, spans, batch.has_image)
        weights = route(
            feats.phi,
            feats.psi,
            feats.phi_theta,
            feats.has_image,
            views,
            cfg.d_m,
            hard=False,
            soft=not cfg.no_soft_routing,
        )
        stash["input"] = feats
        return modules.adapt(h, weights, views)

    with backbone.layer_hook(layer, edit):
        post_logits = backbone.forward(batch)
    input_side = stash["input"]

    # 4. losses
    nll = target_nll(post_logits, batch.input_ids, target_mask, cfg.token_reduction)
    rel_nll = nll[e_rows]
    gen_nll = 0.5 * (nll[tb.rows("rephrase")] + nll[tb.rows("image_rephrase")])
    l_rows = tb.rows("m_loc")
    loc_kl = locality_kl(
        pre_logits[l_rows], post_logits[l_rows], target_mask[l_rows], cfg.token_reduction
    )

    # D_g per example: its text or its image rephrase (at random), then the π split (§4.3.2)
    use_image = torch.randint(0, 2, (size,), generator=generator)
    g_rows_text, g_rows_image = tb.rows("rephrase"), tb.rows("image_rephrase")
    idx = torch.arange(size)
    _, _, pi1, pi2 = split_generality_domain(idx.tolist(), idx.tolist(), generator)

    def gen_rows(x: Tensor) -> Tensor:
        return _pick(x, g_rows_text, g_rows_image, use_image)

    def hat(x: Tensor) -> Tensor:  # D̂g: edit sample (π1 = 0) or its generality sample
        return _pick(torch.cat([x[e_rows], gen_rows(x)]), slice(0, size), slice(size, None), pi1)

    def bar(x: Tensor) -> Tensor:  # D̄g: edit sample (π2 = 0) or its generality sample
        return _pick(torch.cat([x[e_rows], gen_rows(x)]), slice(0, size), slice(size, None), pi2)

    return liveedit_loss(
        cfg,
        rel_nll=rel_nll,
        gen_nll=gen_nll,
        loc_kl=loc_kl,
        phi_bar_g=bar(input_side.phi),
        phi_hat_g=hat(edit_side.phi),
        phi_theta_g=bar(input_side.phi_theta),
        phi_bar_l=input_side.phi[l_rows],
        phi_theta_l=input_side.phi_theta[l_rows],
        psi_bar_g=bar(input_side.psi),
        psi_hat_g=hat(edit_side.psi),
        psi_hat_l=edit_side.psi[l_rows],
        generator=generator,
    )
