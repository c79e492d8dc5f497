"""Training losses of LiveEdit (paper §4.3, Eqs. 8–16).

Similarities. Every inner product between routing features is scaled by 1/sqrt(d_m), exactly as in
routing (:func:`.routing.similarity`), so the InfoNCE / sigmoid logits seen in training are the
ones routing uses. InfoNCE runs at temperature 1 (Eq. 14).

Reductions follow the paper: the edit loss averages over the batch (Eq. 8), the routing loss sums
over it (Eq. 12). Within one example, ℓ_rel / ℓ_gen / ℓ_loc sum (or, with
``token_reduction="mean"``, average) over the target tokens.

Logit alignment (standard causal LM): ``logits[b, i]`` predicts token ``i + 1``, so the target token
at position ``j`` (``target_mask[b, j]``) is scored by ``logits[b, j - 1]``.

ψ̂_l (Eqs. 15–16) are *edit-side* features (f̂fe) of the locality samples; the caller extracts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import LiveEditConfig
from .routing import pair_similarity, similarity

T = TypeVar("T")
Reduction = Literal["sum", "mean"]


# ---------------------------------------------------------------------- InfoNCE and routing


def info_nce(anchor: Tensor, positive: Tensor, candidates: Tensor, d_m: int) -> Tensor:
    """Eq. 14, per row: ``-log exp(α·β+) / Σ_j exp(α·β_j)`` with sims / sqrt(d_m), temperature 1.

    ``anchor``, ``positive``: ``[B, D]``; ``candidates``: ``[n, D]`` (shared) or ``[B, n, D]``.
    Returns ``[B]``. The positive is *not* added to the candidates (in Eqs. 13, 16 it is one)."""
    pos = pair_similarity(anchor, positive, d_m)
    if candidates.dim() == 2:
        logits = similarity(anchor, candidates, d_m)  # [B, n]
    else:
        logits = torch.einsum("bd,bnd->bn", anchor, candidates) / d_m**0.5
    return torch.logsumexp(logits, dim=-1) - pos


def hard_routing_loss(
    phi_bar_g: Tensor,
    phi_hat_g: Tensor,
    phi_theta_g: Tensor,
    phi_bar_l: Tensor,
    phi_theta_l: Tensor,
    d_m: int,
) -> Tensor:
    """Eq. 13 per example ``[B]``:
    ``f_nce(φ̄_g, φ̂_g, Φ̂ ∪ {φ̄_Θg}) + f_nce(φ̄_l, φ̄_Θl, Φ̂ ∪ {φ̄_Θl})`` with Φ̂ = {φ̂_gb}_b."""
    batch = phi_hat_g.shape[0]
    shared = phi_hat_g.unsqueeze(0).expand(batch, -1, -1)  # Φ̂ for every row
    cand_g = torch.cat([shared, phi_theta_g.unsqueeze(1)], dim=1)  # [B, B+1, D]
    cand_l = torch.cat([shared, phi_theta_l.unsqueeze(1)], dim=1)
    return info_nce(phi_bar_g, phi_hat_g, cand_g, d_m) + info_nce(
        phi_bar_l, phi_theta_l, cand_l, d_m
    )


def sample_negatives(batch: int, pool: int, generator: torch.Generator | None = None) -> Tensor:
    """For each b < batch, an index drawn uniformly from ``range(pool)`` minus ``{b}``. ``[B]``."""
    if pool < 2:
        raise ValueError(f"ℓ_sr1 needs at least one other feature; the pool has {pool}")
    draw = torch.randint(0, pool - 1, (batch,), generator=generator)
    return draw + (draw >= torch.arange(batch)).long()


def sr1_loss(
    psi_bar_g: Tensor,
    psi_hat_g: Tensor,
    psi_hat_l: Tensor,
    d_m: int,
    generator: torch.Generator | None = None,
    negatives: Tensor | None = None,
) -> Tensor:
    """Eq. 15 per example ``[B]``: ``-log σ(ψ̄_g·ψ̂_g) - log(1 - σ(ψ̄_g·ψ̂_\\g))`` where ψ̂_\\g is a
    random *other* member of {ψ̂_gj} ∪ {ψ̂_lj} (indices into that concatenation may be given as
    ``negatives``; otherwise drawn with ``generator``)."""
    pool = torch.cat([psi_hat_g, psi_hat_l], dim=0)  # [2B, D]
    if negatives is None:
        negatives = sample_negatives(psi_bar_g.shape[0], pool.shape[0], generator)
    neg = pool.index_select(0, negatives.to(pool.device))
    pos_logit = pair_similarity(psi_bar_g, psi_hat_g, d_m)
    neg_logit = pair_similarity(psi_bar_g, neg, d_m)
    return -F.logsigmoid(pos_logit) - F.logsigmoid(-neg_logit)


def sr2_loss(psi_bar_g: Tensor, psi_hat_g: Tensor, psi_hat_l: Tensor, d_m: int) -> Tensor:
    """Eq. 16 per example ``[B]``: ``f_nce(ψ̄_g, ψ̂_g, {ψ̂_gj} ∪ {ψ̂_lj})``."""
    return info_nce(psi_bar_g, psi_hat_g, torch.cat([psi_hat_g, psi_hat_l], dim=0), d_m)


# ---------------------------------------------------------------------- edit losses


def _reduce(per_token: Tensor, mask: Tensor, reduction: Reduction) -> Tensor:
    total = (per_token * mask).sum(-1)
    if reduction == "mean":
        return total / mask.sum(-1).clamp_min(1)
    return total


def target_nll(
    logits: Tensor, input_ids: Tensor, target_mask: Tensor, reduction: Reduction = "sum"
) -> Tensor:
    """Eqs. 9–10 per example ``[B]``: ``-log f(o | v, p)`` over the target tokens.

    ``logits [B, L, V]``, ``input_ids [B, L]``, ``target_mask [B, L]`` bool (target positions)."""
    pred = logits[:, :-1].float().log_softmax(-1)
    tokens = input_ids[:, 1:]
    mask = target_mask[:, 1:].to(pred.dtype)
    token_logp = pred.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return _reduce(-token_logp, mask, reduction)


def locality_kl(
    pre_logits: Tensor, post_logits: Tensor, target_mask: Tensor, reduction: Reduction = "sum"
) -> Tensor:
    """Eq. 11 per example ``[B]``: ``KL(f_θ ‖ f_θÊ)`` at the positions predicting target tokens.

    ``pre_logits`` (pre-edit, computed once without grad; detached here) and ``post_logits``:
    ``[B, L, V]``; ``target_mask [B, L]``."""
    log_p = pre_logits[:, :-1].detach().float().log_softmax(-1)
    log_q = post_logits[:, :-1].float().log_softmax(-1)
    per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
    return _reduce(per_token, target_mask[:, 1:].to(per_token.dtype), reduction)


# ---------------------------------------------------------------------- generality split


def generality_split(batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """§4.3.2: the random vectors π1, π2 ∈ {0, 1}^B (independent draws). Index 0 is the edit
    sample, 1 its generality sample."""
    pi = torch.randint(0, 2, (2, batch), generator=generator)
    return pi[0], pi[1]


def split_generality_domain(
    edit_samples: Sequence[T], gen_samples: Sequence[T], generator: torch.Generator | None = None
) -> tuple[list[T], list[T], Tensor, Tensor]:
    """D̂g = {[D_e^(b), D_g^(b)]_{π1(b)}}, D̄g = {[D_e^(b), D_g^(b)]_{π2(b)}} (§4.3.2).

    Returns ``(D̂g, D̄g, π1, π2)``: D̂g goes to the edit side (f̂fe), D̄g to the input side (f̄fe)."""
    if len(edit_samples) != len(gen_samples):
        raise ValueError(f"{len(edit_samples)} edit samples but {len(gen_samples)} generality")
    pi1, pi2 = generality_split(len(edit_samples), generator)
    pairs = list(zip(edit_samples, gen_samples, strict=True))
    hat = [pair[int(i)] for pair, i in zip(pairs, pi1, strict=True)]
    bar = [pair[int(i)] for pair, i in zip(pairs, pi2, strict=True)]
    return hat, bar, pi1, pi2


# ---------------------------------------------------------------------- total


@dataclass
class LossBreakdown:
    """Unweighted components (scalars; ablated terms are 0) and the weighted ``total``:
    ``total = Σ weight_x · x`` with rel/gen/loc batch-means (Eq. 8) and hr/sr1/sr2 batch-sums
    (Eq. 12)."""

    rel: Tensor
    gen: Tensor
    loc: Tensor
    hr: Tensor
    sr1: Tensor
    sr2: Tensor
    total: Tensor

    @property
    def edit(self) -> Tensor:
        return self.rel + self.gen + self.loc

    @property
    def route(self) -> Tensor:
        return self.hr + self.sr1 + self.sr2

    def as_floats(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name).detach()) for f in fields(self)}


def liveedit_loss(
    cfg: LiveEditConfig,
    *,
    rel_nll: Tensor,
    gen_nll: Tensor,
    loc_kl: Tensor,
    phi_bar_g: Tensor,
    phi_hat_g: Tensor,
    phi_theta_g: Tensor,
    phi_bar_l: Tensor,
    phi_theta_l: Tensor,
    psi_bar_g: Tensor,
    psi_hat_g: Tensor,
    psi_hat_l: Tensor,
    generator: torch.Generator | None = None,
) -> LossBreakdown:
    """ℓ_total = ℓ_edit + ℓ_route (Eqs. 8, 12) from per-example edit losses ``[B]``
    (:func:`target_nll`, :func:`locality_kl`) and the routing features ``[B, k·d_m]``.
    ``no_sr1`` / ``no_sr2`` zero their term; ``no_soft_routing`` zeroes both (ψ is unused then)."""
    d_m = cfg.d_m
    zero = rel_nll.new_zeros(())
    rel, gen, loc = rel_nll.mean(), gen_nll.mean(), loc_kl.mean()
    hr = hard_routing_loss(phi_bar_g, phi_hat_g, phi_theta_g, phi_bar_l, phi_theta_l, d_m).sum()
    use_sr1 = not (cfg.no_sr1 or cfg.no_soft_routing)
    use_sr2 = not (cfg.no_sr2 or cfg.no_soft_routing)
    sr1 = sr1_loss(psi_bar_g, psi_hat_g, psi_hat_l, d_m, generator).sum() if use_sr1 else zero
    sr2 = sr2_loss(psi_bar_g, psi_hat_g, psi_hat_l, d_m).sum() if use_sr2 else zero
    total = (
        cfg.weight_rel * rel
        + cfg.weight_gen * gen
        + cfg.weight_loc * loc
        + cfg.weight_hr * hr
        + cfg.weight_sr1 * sr1
        + cfg.weight_sr2 * sr2
    )
    return LossBreakdown(rel=rel, gen=gen, loc=loc, hr=hr, sr1=sr1, sr2=sr2, total=total)
