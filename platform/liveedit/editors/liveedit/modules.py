"""LiveEdit's trainable modules tied together (paper §4; DESIGN §2.4).

:class:`LiveEditModules` holds f_eg (:class:`.generator.ExpertGenerator`), f̂fe
(:class:`.features.FeatureExtractor`) and f̄fe with the vision sentinel Θ
(:class:`.features.InputFeatureExtractor`). It works on the hidden state of layer l_e,
``h [B, L, d]``, and per-example spans (``vision``, ``prompt``, ``target``; half-open;
``vision=None`` for text-only) as the backbone adapter provides them. Everything is batched over B.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .config import LiveEditConfig
from .features import FeatureExtractor, Features, InputFeatureExtractor, InputFeatures
from .generator import ExpertGenerator, Experts
from .routing import RepositoryViews, apply_experts, route
from .spans import Span, SpanLike, Spans, as_spans, gather_spans, segment_ids

SpanInput = SpanLike | Sequence[Span | None]


class LiveEditModules(nn.Module):
    """f_eg, f̂fe and f̄fe (with Θ). The frozen backbone is not part of it."""

    def __init__(self, cfg: LiveEditConfig):
        super().__init__()
        self.cfg = cfg
        self.generator = ExpertGenerator(cfg)
        self.edit_extractor = FeatureExtractor(cfg)
        self.input_extractor = InputFeatureExtractor(cfg)

    # ------------------------------------------------------------------ edit side

    def make_experts(self, h: Tensor, spans: Sequence[SpanInput]) -> Experts:
        """Eq. 1 for B edit samples: f_eg(h_v ⊕ h_p ⊕ h_o) -> U, V ``[B, r, d]``."""
        sp = [as_spans(s) for s in spans]
        ranges = [(s.vision, s.prompt, s.target) for s in sp]
        x, mask = gather_spans(h, ranges)
        segments = segment_ids(ranges, x.shape[1]) if self.cfg.segment_embedding else None
        return self.generator(x, mask, segments)

    def edit_features(self, h: Tensor, spans: Sequence[SpanInput]) -> Features:
        """Eq. 3: (φ̂, ψ̂) = f̂fe(h_v, h_p), each ``[B, k·d_m]``."""
        h_v, v_mask, h_p, p_mask = self._vision_prompt(h, spans)
        return self.edit_extractor(h_v, v_mask, h_p, p_mask)

    # ------------------------------------------------------------------ input side

    def input_features(
        self,
        h: Tensor,
        spans: Sequence[SpanInput],
        has_image: Tensor | Sequence[bool] | None = None,
    ) -> InputFeatures:
        """Eqs. 4–5: (φ̄, ψ̄) = f̄fe(h_v, h_p) and φ̄_Θ = f̄fe(Θ, h_p), each ``[B, k·d_m]``, with
        ``has_image [B]`` attached (default: whether each example has a vision span). A text-only
        input's φ̄ is 0 (no vision tokens); routing gives it no expert."""
        h_v, v_mask, h_p, p_mask = self._vision_prompt(h, spans)
        feats = self.input_extractor(h_v, v_mask, h_p, p_mask)
        return feats._replace(has_image=self.has_image(spans, has_image).to(h.device))

    def route(
        self,
        h: Tensor,
        spans: Sequence[SpanInput],
        has_image: Tensor | Sequence[bool] | None,
        views: RepositoryViews,
        *,
        hard_routing: bool = True,
    ) -> Tensor:
        """Routing weights ``[B, t]`` (Eqs. 5, 7; '- SR' averages). ``hard_routing=False`` keeps
        every expert, as in training where the batch's experts form Ê (§4.3.1)."""
        image = self.has_image(spans, has_image).to(h.device)
        if len(views) == 0 or not bool(image.any()):
            return h.new_zeros(h.shape[0], len(views))
        feats = self.input_features(h, spans, image)
        return route(
            feats.phi,
            feats.psi,
            feats.phi_theta,
            image,
            views,
            self.cfg.d_m,
            hard=hard_routing,
            soft=not self.cfg.no_soft_routing,
        )

    def adapt(self, h: Tensor, weights: Tensor, views: RepositoryViews) -> Tensor:
        """Eq. 6 with given weights ``[B, t]``: ĥ ``[B, L, d]`` (rows without weight unchanged)."""
        if len(views) == 0:
            return h
        return apply_experts(
            h, weights, views.U, views.V, self.generator.expert_norm, self.cfg.scale
        )

    def route_and_apply(
        self,
        h: Tensor,
        spans: Sequence[SpanInput],
        has_image: Tensor | Sequence[bool] | None,
        views: RepositoryViews,
        *,
        hard_routing: bool = True,
    ) -> Tensor:
        """ĥ = h + Σ_τ w_τ ρ(LN(h) U_τ^T) V_τ · scale for B inputs (Eqs. 4–7). With no expert, or
        for inputs without an image, the output is ``h`` bitwise."""
        if len(views) == 0:
            return h
        weights = self.route(h, spans, has_image, views, hard_routing=hard_routing)
        return self.adapt(h, weights, views)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def has_image(
        spans: Sequence[SpanInput], has_image: Tensor | Sequence[bool] | None = None
    ) -> Tensor:
        """Bool ``[B]``: the given flags, or (if None) whether each example has a vision span."""
        if has_image is not None:
            return torch.as_tensor(has_image, dtype=torch.bool)
        sp = [as_spans(s) for s in spans]
        return torch.tensor([s.vision is not None and s.vision[1] > s.vision[0] for s in sp])

    @staticmethod
    def _vision_prompt(
        h: Tensor, spans: Sequence[SpanInput]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        sp: list[Spans] = [as_spans(s) for s in spans]
        h_v, v_mask = gather_spans(h, [(s.vision,) for s in sp])
        h_p, p_mask = gather_spans(h, [(s.prompt,) for s in sp])
        return h_v, v_mask, h_p, p_mask
