"""Plain re-computations of LiveEdit's equations, shared by the other LiveEdit tests."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from liveedit.editors.liveedit.attention import CrossAttention


def layer_norm(x: Tensor, ln: torch.nn.LayerNorm) -> Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def softmax(scores: Tensor) -> Tensor:
    e = torch.exp(scores - scores.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def cross_attention(ca: CrossAttention, x: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
    """Eq. 2 per example and per head; an example without valid keys gives zeros."""
    batch = y.shape[0]
    outs = []
    for b in range(batch):
        xb = x if x.dim() == 2 else x[b]
        yb = y[b] if mask is None else y[b][mask[b]]
        if yb.shape[0] == 0:
            outs.append(torch.zeros(xb.shape[0], ca.d_m, dtype=y.dtype))
            continue
        yn = layer_norm(yb, ca.norm)
        q = xb @ ca.w_q.weight.T
        k = yn @ ca.w_k.weight.T
        v = yn @ ca.w_v.weight.T
        heads = []
        for head in range(ca.heads):
            sl = slice(head * ca.head_dim, (head + 1) * ca.head_dim)
            w = softmax(q[:, sl] @ k[:, sl].T / math.sqrt(ca.head_dim))
            heads.append(w @ v[:, sl])
        outs.append(torch.cat(heads, dim=-1))
    return torch.stack(outs)


def test_reference_helpers_agree_with_torch() -> None:
    x = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(softmax(x), torch.softmax(x, -1))
    ln = torch.nn.LayerNorm(5).double()
    torch.testing.assert_close(layer_norm(x, ln), ln(x))
