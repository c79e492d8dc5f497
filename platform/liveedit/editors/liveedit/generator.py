"""The expert generator f_eg (paper Eq. 1; DESIGN §2.4).

    (U_e, V_e) = f_eg(h_v ⊕ h_p ⊕ h_o),   f_eg(h) = (CA_U(U, h) W_U, CA_V(V, h) W_V)

U, V ∈ R^{r×d_m} are learned queries; CA_U, CA_V attend over the layer-l_e hidden states of the
edit sample's vision, prompt and target tokens. As in the official code, the produced expert has
rows in the LLM hidden size d, so each cross-attention output is mapped d_m -> d by an output
projection (W_U, W_V, no bias): U_e, V_e ∈ R^{r×d}, and ρ(LN(h) U_e^T) V_e ∈ R^d is a residual of
layer l_e (Eq. 6). The LayerNorm applied to h before U_e (official code) belongs to f_eg too
(:attr:`ExpertGenerator.expert_norm`), since it is part of how a generated expert is applied.

Segment embedding (``segment_embedding``, off by default; not in the paper). The cross-attentions
have no positions, so U, V can find the tokens of the new answer h_o only by their content, which
in a small LM looks much like the prompt's words (the question names a colour, the answer is a
colour). With the option on, f_eg reads ``LN(h) + E[s]`` instead of h, where ``s`` is 0 / 1 / 2
for tokens of h_v / h_p / h_o and ``E ∈ R^{3×d}`` is learned (entries ~ N(0, 1), the scale of a
LayerNorm-ed state).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .attention import CrossAttention, init_queries
from .config import LiveEditConfig


class Experts(NamedTuple):
    """A batch of B generated experts: ``U``, ``V`` of shape ``[B, r, d]``. A named tuple (not a
    dataclass) so that DeepSpeed ZeRO-3 finds the tensors f_eg returns (see
    :class:`~.features.Features`)."""

    U: Tensor
    V: Tensor


class ExpertGenerator(nn.Module):
    """f_eg: ``forward(h [B, L, d], mask [B, L]) -> Experts([B, r, d], [B, r, d])`` where ``h``
    holds h_v ⊕ h_p ⊕ h_o of each edit sample (padded; ``mask`` marks real tokens)."""

    def __init__(self, cfg: LiveEditConfig):
        super().__init__()
        self.U = init_queries(cfg.r, cfg.d_m)
        self.V = init_queries(cfg.r, cfg.d_m)
        self.ca_u = CrossAttention(cfg.d_m, cfg.d, cfg.heads)
        self.ca_v = CrossAttention(cfg.d_m, cfg.d, cfg.heads)
        self.out_u = nn.Linear(cfg.d_m, cfg.d, bias=False)
        self.out_v = nn.Linear(cfg.d_m, cfg.d, bias=False)
        self.expert_norm = nn.LayerNorm(cfg.d)
        """LN applied to h before U_e in Eq. 6 (official code)."""
        self.segment_norm = nn.LayerNorm(cfg.d) if cfg.segment_embedding else None
        self.segments = nn.Parameter(torch.randn(3, cfg.d)) if cfg.segment_embedding else None

    def forward(
        self, h: Tensor, mask: Tensor | None = None, segments: Tensor | None = None
    ) -> Experts:
        """``segments [B, L]`` (0 / 1 / 2: h_v / h_p / h_o) is required with
        ``segment_embedding`` and ignored without."""
        if self.segments is not None:
            if segments is None:
                raise ValueError("segment_embedding: f_eg needs the segment of every token")
            assert self.segment_norm is not None
            h = self.segment_norm(h) + self.segments[segments.to(h.device)]
        u = self.out_u(self.ca_u(self.U, h, mask))  # [B, r, d]
        v = self.out_v(self.ca_v(self.V, h, mask))
        return Experts(u, v)
