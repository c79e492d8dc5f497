"""The expert generator f_eg (paper Eq. 1; DESIGN §2.4).

    (U_e, V_e) = f_eg(h_v ⊕ h_p ⊕ h_o),   f_eg(h) = (CA_U(U, h) W_U, CA_V(V, h) W_V)

U, V ∈ R^{r×d_m} are learned queries; CA_U, CA_V attend over the layer-l_e hidden states of the
edit sample's vision, prompt and target tokens. As in the official code, the produced expert has
rows in the LLM hidden size d, so each cross-attention output is mapped d_m -> d by an output
projection (W_U, W_V, no bias): U_e, V_e ∈ R^{r×d}, and ρ(LN(h) U_e^T) V_e ∈ R^d is a residual of
layer l_e (Eq. 6). The LayerNorm applied to h before U_e (official code) belongs to f_eg too
(:attr:`ExpertGenerator.expert_norm`), since it is part of how a generated expert is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .attention import CrossAttention, init_queries
from .config import LiveEditConfig


@dataclass
class Experts:
    """A batch of B generated experts: ``U``, ``V`` of shape ``[B, r, d]``."""

    U: Tensor
    V: Tensor

    def __len__(self) -> int:
        return self.U.shape[0]


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

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Experts:
        u = self.out_u(self.ca_u(self.U, h, mask))  # [B, r, d]
        v = self.out_v(self.ca_v(self.V, h, mask))
        return Experts(u, v)
