"""Expert routing and the edited representation (paper Eqs. 5–7; DESIGN §2.4).

Similarity. Every inner product between routing features is divided by sqrt(d_m) (§4.2: "the inner
products are rescaled by sqrt(d_m)"). The features are the flattened k·d_m vectors, and the factor
is 1/sqrt(d_m) as written — not 1/sqrt(k·d_m): ``sim(a, b) = a·b / sqrt(d_m)``, i.e. the *sum* over
the k slots of the per-slot scaled products. The same factor is used by the losses (Eqs. 13–16),
so training and routing see the same logits. (Hard routing compares two similarities of the same
input and is unaffected by any positive factor; soft routing and the InfoNCE losses are not.)

Hard routing (Eq. 5): expert τ is kept for input i iff sim(φ̄_i, φ̂_τ) > sim(φ̄_i, φ̄_Θ,i) — strictly;
no top-k; any number of experts, including none, may be kept.

Soft routing (Eq. 7): over the kept set Ê_i, ``w_τ = σ(s_τ) · exp(s_τ) / Σ_{τ'∈Ê_i} exp(s_τ')`` with
``s = sim(ψ̄_i, ψ̂_τ)``; w_τ = 0 for experts not kept, so Σ_τ w_τ <= 1. '- SR' (``no_soft_routing``)
replaces it by the plain average 1/|Ê_i| over the kept experts.

Edited representation (Eq. 6), at every position of the sequence:

    ĥ = h + scale · Σ_τ w_τ · ReLU(LN(h) U_τ^T) V_τ,    scale = 1 / (expert_scale · sqrt(r))

LN is the LayerNorm the official code applies to h before U (``ExpertGenerator.expert_norm``).
An input without an image routes to no expert (w = 0), and a row with no weight keeps h bitwise.
All of this is batched: one matmul over all experts for B inputs at once, no loop over experts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RepositoryViews:
    """The experts and routing features routed over: ``U``, ``V`` ``[t, r, d]``; ``phi``, ``psi``
    ``[t, k·d_m]`` (live slices of an :class:`~.repository.ExpertRepository`, or a training
    batch)."""

    U: Tensor
    V: Tensor
    phi: Tensor
    psi: Tensor

    def __len__(self) -> int:
        return self.U.shape[0]


def similarity(a: Tensor, b: Tensor, d_m: int) -> Tensor:
    """``a [B, D] · b [t, D]^T / sqrt(d_m) -> [B, t]`` (D = k·d_m)."""
    return (a @ b.transpose(-1, -2)) / math.sqrt(d_m)


def pair_similarity(a: Tensor, b: Tensor, d_m: int) -> Tensor:
    """Row-wise ``a[i] · b[i] / sqrt(d_m) -> [B]``."""
    return (a * b).sum(-1) / math.sqrt(d_m)


def hard_route(phi_bar: Tensor, phi_hat: Tensor, phi_theta: Tensor, d_m: int) -> Tensor:
    """Eq. 5: ``keep[i, τ] = sim(φ̄_i, φ̂_τ) > sim(φ̄_i, φ̄_Θ,i)``.

    ``phi_bar``, ``phi_theta``: ``[B, D]``; ``phi_hat``: ``[t, D]``. Returns bool ``[B, t]``."""
    return similarity(phi_bar, phi_hat, d_m) > pair_similarity(phi_bar, phi_theta, d_m)[:, None]


def soft_route(psi_bar: Tensor, psi_hat: Tensor, keep: Tensor, d_m: int) -> Tensor:
    """Eq. 7: ``w[i, τ] = σ(s) · softmax over kept τ of s``, 0 where not kept. ``[B, t]``."""
    s = similarity(psi_bar, psi_hat, d_m)
    any_kept = keep.any(-1, keepdim=True)
    safe = keep | ~any_kept  # rows with nothing kept: finite softmax, zeroed below
    relative = torch.softmax(s.masked_fill(~safe, float("-inf")), dim=-1)
    return torch.sigmoid(s) * relative * keep.to(s.dtype)


def average_route(keep: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """'- SR': ``w[i, τ] = 1 / |Ê_i|`` for kept experts, 0 otherwise. ``[B, t]``."""
    w = keep.to(dtype)
    return w / w.sum(-1, keepdim=True).clamp_min(1.0)


def apply_experts(
    h: Tensor,
    weights: Tensor,
    U: Tensor,
    V: Tensor,
    norm: Callable[[Tensor], Tensor],
    scale: float,
) -> Tensor:
    """Eq. 6 at every position: ``h [B, L, d]``, ``weights [B, t]``, ``U``, ``V`` ``[t, r, d]``.

    Only experts with a non-zero weight for some input are gathered; their rows are flattened to
    ``[t'·r, d]`` so that the whole mixture is two matmuls. Rows of ``h`` whose weights are all
    zero (and every row when no expert is active) are returned bitwise unchanged."""
    active_rows = (weights != 0).any(-1)  # [B]
    used = (weights != 0).any(0).nonzero().flatten()  # experts active for some input
    if used.numel() == 0:
        return h
    t_used, r, d = used.numel(), U.shape[1], U.shape[2]
    u = U.index_select(0, used).reshape(t_used * r, d).to(h.dtype)
    v = V.index_select(0, used).reshape(t_used * r, d).to(h.dtype)
    w = weights.index_select(1, used).to(h.dtype) * scale  # [B, t']
    a = torch.relu(norm(h) @ u.T)  # [B, L, t'·r]
    a = a * w.repeat_interleave(r, dim=1).unsqueeze(1)
    delta = a @ v  # [B, L, d]
    return torch.where(active_rows[:, None, None], h + delta, h)


def route(
    phi_bar: Tensor,
    psi_bar: Tensor,
    phi_theta: Tensor,
    has_image: Tensor,
    views: RepositoryViews,
    d_m: int,
    *,
    hard: bool = True,
    soft: bool = True,
) -> Tensor:
    """Routing weights ``[B, t]`` of B inputs over the t experts of ``views``.

    ``hard=False`` keeps every expert (training: the batch's experts form Ê, §4.3.1);
    ``soft=False`` averages the kept experts ('- SR'). Inputs with ``has_image`` False get 0."""
    batch, t = phi_bar.shape[0], len(views)
    dtype = psi_bar.dtype
    if t == 0:
        return psi_bar.new_zeros(batch, 0)
    if hard:
        keep = hard_route(phi_bar, views.phi.to(dtype), phi_theta, d_m)
    else:
        keep = torch.ones(batch, t, dtype=torch.bool, device=phi_bar.device)
    keep = keep & has_image.to(device=keep.device, dtype=torch.bool)[:, None]
    if soft:
        return soft_route(psi_bar, views.psi.to(dtype), keep, d_m)
    return average_route(keep, dtype)
