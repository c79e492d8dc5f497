"""Edit metrics (paper §3; DESIGN §2.5), per record, then averaged.

- Rel, T-Gen, M-Gen: teacher-forced token accuracy on the target tokens — the fraction of target
  positions whose argmax equals the target token (the official evaluation of MMEdit/LiveEdit).
- T-Loc, M-Loc, ``liveedit`` definition: agreement of the post-edit argmax with the pre-edit argmax
  on the locality answer tokens (I{f_θt(v, p) = f_θ0(v, p)} per token).
- T-Loc, M-Loc, ``easyedit-top1`` / ``easyedit-top10``: EasyEdit's variant — the overlap of the
  post-edit top-k token sets with the pre-edit ones over *all* positions of the sequence.

Every value is a fraction in [0, 1]; tables multiply by 100.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

METRICS = ("rel", "t_gen", "m_gen", "t_loc", "m_loc")
"""Metric keys in table order: Rel, T-Gen, M-Gen, T-Loc, M-Loc."""

METRIC_TITLES = {
    "rel": "Rel.",
    "t_gen": "T-Gen.",
    "m_gen": "M-Gen.",
    "t_loc": "T-Loc.",
    "m_loc": "M-Loc.",
}

VIEW_OF_METRIC = {
    "rel": "edit",
    "t_gen": "rephrase",
    "m_gen": "image_rephrase",
    "t_loc": "loc",
    "m_loc": "m_loc",
}

LocalityDefinition = Literal["liveedit", "easyedit-top1", "easyedit-top10"]
LOCALITY_DEFINITIONS: tuple[str, ...] = ("liveedit", "easyedit-top1", "easyedit-top10")


def token_accuracy(
    predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Per-example token accuracy: mean over masked positions of I{predicted == target}.

    ``predicted``, ``target``: [B, T] token ids aligned on target positions; ``mask``: [B, T]
    true where a target token is. Examples with no target token are an error (a record whose
    target tokenised to nothing cannot be scored)."""
    mask = mask.bool()
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("token_accuracy: an example has no target tokens")
    hits = ((predicted == target) & mask).sum(dim=1)
    return hits.float() / counts.float()


def argmax_agreement(post: torch.Tensor, pre: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """LiveEdit's locality: per-example fraction of answer positions whose post-edit argmax
    equals the pre-edit argmax (``post``, ``pre``: [B, T] ids; ``mask``: [B, T])."""
    return token_accuracy(post, pre, mask)


def topk_agreement(
    post_logits: torch.Tensor, pre_logits: torch.Tensor, mask: torch.Tensor, k: int
) -> torch.Tensor:
    """EasyEdit's locality: per-example mean over positions of |topk(post) ∩ topk(pre)| / k,
    over every position where ``mask`` (all non-padding positions) is true."""
    post_top = post_logits.topk(k, dim=-1).indices  # [B, L, k]
    pre_top = pre_logits.topk(k, dim=-1).indices
    overlap = (post_top.unsqueeze(-1) == pre_top.unsqueeze(-2)).any(-1).float().mean(-1)  # [B, L]
    mask = mask.bool()
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("topk_agreement: an example has no positions")
    return (overlap * mask).sum(dim=1) / counts.float()


def locality(
    definition: str,
    *,
    post_argmax: torch.Tensor | None = None,
    pre_argmax: torch.Tensor | None = None,
    answer_mask: torch.Tensor | None = None,
    post_logits: torch.Tensor | None = None,
    pre_logits: torch.Tensor | None = None,
    position_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example locality under a named definition (see the module docstring)."""
    if definition == "liveedit":
        if post_argmax is None or pre_argmax is None or answer_mask is None:
            raise ValueError("locality 'liveedit' needs post_argmax, pre_argmax and answer_mask")
        return argmax_agreement(post_argmax, pre_argmax, answer_mask)
    if definition in ("easyedit-top1", "easyedit-top10"):
        if post_logits is None or pre_logits is None or position_mask is None:
            raise ValueError(f"locality '{definition}' needs post/pre logits and position_mask")
        k = 1 if definition == "easyedit-top1" else 10
        return topk_agreement(post_logits, pre_logits, position_mask, k)
    allowed = ", ".join(LOCALITY_DEFINITIONS)
    raise ValueError(f"locality definition {definition!r} is unknown; allowed values: {allowed}")


def average(values: Sequence[float]) -> float:
    """The mean of per-record values (an empty list is an error: nothing was measured)."""
    if not values:
        raise ValueError("average: no per-record values")
    return float(sum(values) / len(values))


def five_metric_average(means: dict[str, float]) -> float:
    """The tables' "Average" column: the plain mean of Rel, T-Gen, M-Gen, T-Loc, M-Loc."""
    missing = [m for m in METRICS if m not in means]
    if missing:
        raise ValueError(f"five_metric_average: missing {', '.join(missing)}")
    return float(sum(means[m] for m in METRICS) / len(METRICS))
