"""The feature extractors f̂fe (edit side) and f̄fe (input side) (paper Eqs. 3–5; DESIGN §2.4).

    f_fe(h_v, h_p) = ( CA_φ2( CA_φ1(φ, h_p), h_v ),  CA_ψ(ψ, h_p) )          (Eqs. 3, 4)

φ, ψ ∈ R^{k×d_m} are learned queries (the paper writes them as 1 × k·d_m vectors: the same
numbers). φ first attends over the prompt (CA_φ1), then the prompt-conditioned queries pick the key
visual features (CA_φ2); ψ compresses the prompt. Both features are returned flattened,
``[B, k·d_m]``, for the similarities of Eqs. 5, 7, 13–16. f̂fe and f̄fe are two instances with
separate weights.

The input side also owns the vision sentinel Θ ∈ R^{N_v×d} (Eq. 5): φ̄_Θ = f̄fe(Θ, h_p), i.e. Θ takes
the place of h_v for the same prompt; its similarity to φ̄ is the hard-routing threshold.

HR* (``hr_star``, Table 2): "directly compressing the entire visual representation". Here that is
φ̂ = CA_φ2(φ, h_v): the learned queries attend over all visual tokens with no prompt guidance (CA_φ1
is not built). The sentinel feature is then CA_φ2(φ, Θ), independent of the prompt. ψ is unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .attention import CrossAttention, init_queries
from .config import LiveEditConfig


class Features(NamedTuple):
    """Routing features of B samples, flattened: ``phi``, ``psi`` of shape ``[B, k·d_m]``.

    A named tuple (not a dataclass): DeepSpeed ZeRO-3 finds the tensors a module returns in
    tuples, lists and dicts only, and re-gathers the module's partitioned parameters for backward
    through hooks on them."""

    phi: Tensor
    psi: Tensor


class InputFeatures(NamedTuple):
    """Input-side features φ̄, ψ̄ plus the sentinel feature ``phi_theta`` = φ̄_Θ ``[B, k·d_m]``
    (Eq. 5) and, when known, ``has_image`` ``[B]`` bool (inputs without an image route to no
    expert). A named tuple for ZeRO-3, as :class:`Features`."""

    phi: Tensor
    psi: Tensor
    phi_theta: Tensor
    has_image: Tensor | None = None


class FeatureExtractor(nn.Module):
    """f̂fe (Eq. 3); also the base of f̄fe. ``forward(h_v, v_mask, h_p, p_mask) -> Features``
    with ``h_v: [B, L_v, d]``, ``h_p: [B, L_p, d]`` and boolean masks ``[B, L_v]``, ``[B, L_p]``."""

    def __init__(self, cfg: LiveEditConfig):
        super().__init__()
        self.hr_star = cfg.hr_star
        self.phi = init_queries(cfg.k, cfg.d_m)
        self.psi = init_queries(cfg.k, cfg.d_m)
        self.ca_phi1 = None if cfg.hr_star else CrossAttention(cfg.d_m, cfg.d, cfg.heads)
        self.ca_phi2 = CrossAttention(cfg.d_m, cfg.d, cfg.heads)
        self.ca_psi = CrossAttention(cfg.d_m, cfg.d, cfg.heads)

    def visual_feature(
        self, h_v: Tensor, v_mask: Tensor | None, h_p: Tensor, p_mask: Tensor | None
    ) -> Tensor:
        """φ = CA_φ2(CA_φ1(φ, h_p), h_v) flattened, ``[B, k·d_m]`` (HR*: CA_φ2(φ, h_v))."""
        queries = self.phi if self.ca_phi1 is None else self.ca_phi1(self.phi, h_p, p_mask)
        return self.ca_phi2(queries, h_v, v_mask).flatten(1)

    def prompt_feature(self, h_p: Tensor, p_mask: Tensor | None) -> Tensor:
        """ψ = CA_ψ(ψ, h_p) flattened, ``[B, k·d_m]``."""
        return self.ca_psi(self.psi, h_p, p_mask).flatten(1)

    def forward(
        self, h_v: Tensor, v_mask: Tensor | None, h_p: Tensor, p_mask: Tensor | None
    ) -> Features:
        return Features(
            self.visual_feature(h_v, v_mask, h_p, p_mask), self.prompt_feature(h_p, p_mask)
        )


class InputFeatureExtractor(FeatureExtractor):
    """f̄fe (Eq. 4) with the vision sentinel Θ ∈ R^{N_v×d} (Eq. 5).
    ``forward(...) -> InputFeatures`` (φ̄, ψ̄, φ̄_Θ)."""

    def __init__(self, cfg: LiveEditConfig):
        super().__init__(cfg)
        self.theta = nn.Parameter(torch.randn(cfg.n_vision, cfg.d))

    def sentinel_feature(self, h_p: Tensor, p_mask: Tensor | None) -> Tensor:
        """φ̄_Θ = f̄fe(Θ, h_p)'s visual part, ``[B, k·d_m]``."""
        theta = self.theta.unsqueeze(0).expand(h_p.shape[0], -1, -1)
        return self.visual_feature(theta, None, h_p, p_mask)

    def forward(  # type: ignore[override]
        self, h_v: Tensor, v_mask: Tensor | None, h_p: Tensor, p_mask: Tensor | None
    ) -> InputFeatures:
        return InputFeatures(
            phi=self.visual_feature(h_v, v_mask, h_p, p_mask),
            psi=self.prompt_feature(h_p, p_mask),
            phi_theta=self.sentinel_feature(h_p, p_mask),
        )
