"""Multi-head cross-attention CA(x, y) (paper Eq. 2; DESIGN §2.4).

    CA(x, y) = softmax( x W_q (LN(y) W_k)^T / sqrt(head_dim) ) · LN(y) W_v

per head, heads concatenated (no output projection, as in Eq. 2). Queries ``x`` have dimension
d_m; keys/values ``y`` have dimension ``d_kv`` (the LLM hidden size d, or d_m when attending over
another module's output) and are LayerNorm-ed, then mapped d_kv -> d_m inside W_k / W_v. The linear
maps have no bias (Eq. 2 has none); the LayerNorm is affine.

Padding: ``mask[b, j]`` False excludes key ``j`` of example ``b``. An example with no valid key
yields a zero output (not NaN), e.g. the vision span of a text-only input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CrossAttention(nn.Module):
    """CA(x, y) of Eq. 2 with ``heads`` heads over d_m.

    ``x``: ``[n, d_m]`` (learned queries, shared by the batch) or ``[B, n, d_m]``;
    ``y``: ``[B, L, d_kv]``; ``mask``: ``[B, L]`` bool or None. Returns ``[B, n, d_m]``.
    """

    def __init__(self, d_m: int, d_kv: int, heads: int):
        super().__init__()
        if d_m % heads:
            raise ValueError(f"d_m = {d_m} is not divisible by heads = {heads}")
        self.d_m, self.heads, self.head_dim = d_m, heads, d_m // heads
        self.norm = nn.LayerNorm(d_kv)
        self.w_q = nn.Linear(d_m, d_m, bias=False)
        self.w_k = nn.Linear(d_kv, d_m, bias=False)
        self.w_v = nn.Linear(d_kv, d_m, bias=False)

    def forward(self, x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        batch, length = y.shape[0], y.shape[1]
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(batch, -1, -1)
        n = x.shape[1]
        q = self._split(self.w_q(x))  # [B, H, n, hd]
        y = self.norm(y)
        k = self._split(self.w_k(y))  # [B, H, L, hd]
        v = self._split(self.w_v(y))
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            if mask.shape != (batch, length):
                raise ValueError(f"mask {tuple(mask.shape)} does not match y {(batch, length)}")
            any_valid = mask.any(dim=1)  # [B]
            # A fully masked row attends everywhere (finite), then is zeroed below.
            safe = mask | ~any_valid.unsqueeze(1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe[:, None, None, :])
            out = out * any_valid.to(out.dtype)[:, None, None, None]
        return out.transpose(1, 2).reshape(batch, n, self.d_m)

    def _split(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)


def init_queries(rows: int, d_m: int) -> nn.Parameter:
    """A learned query matrix (U, V, φ, ψ) ∈ R^{rows×d_m}, entries ~ N(0, 1) like embeddings."""
    return nn.Parameter(torch.randn(rows, d_m))
