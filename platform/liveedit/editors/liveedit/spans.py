"""Per-example token spans and their gathering into padded, masked blocks.

The backbone adapter gives, for every example of an LM batch, the half-open ``(start, end)`` spans
of its vision, prompt and target tokens (``vision`` is ``None`` for a text-only input; ``target``
may be ``None`` for an input without target tokens). LiveEdit reads the hidden state of layer l_e on
those spans: h_v, h_p, h_o in the paper's notation. Examples have spans of different lengths, so a
gathered span is a padded block ``[B, L_max, d]`` with a boolean mask ``[B, L_max]`` (True = a real
token), consumed by the masked cross-attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

Span = tuple[int, int]


class SpanLike(Protocol):
    """Anything with ``vision`` / ``prompt`` / ``target`` spans (the backbone's ``Spans``)."""

    @property
    def vision(self) -> Span | None: ...

    @property
    def prompt(self) -> Span: ...

    @property
    def target(self) -> Span | None: ...


@dataclass(frozen=True)
class Spans:
    """The spans of one example (same fields as the backbone adapter's ``Spans``)."""

    vision: Span | None
    prompt: Span
    target: Span | None = None


def as_spans(item: SpanLike | Sequence[Span | None]) -> Spans:
    """Normalise an adapter ``Spans`` object or a ``(vision, prompt, target)`` tuple."""
    if isinstance(item, Spans):
        return item
    if hasattr(item, "prompt"):
        return Spans(item.vision, item.prompt, getattr(item, "target", None))  # type: ignore[union-attr]
    vision, prompt, *rest = item  # type: ignore[misc]
    if prompt is None:
        raise ValueError("a prompt span is required")
    return Spans(vision, prompt, rest[0] if rest else None)


def gather_spans(h: Tensor, ranges: Sequence[Sequence[Span | None]]) -> tuple[Tensor, Tensor]:
    """Concatenate, per example ``b``, the tokens of ``ranges[b]`` (in order; ``None`` skipped).

    ``h``: ``[B, L, d]``. Returns ``(x, mask)`` with ``x: [B, L_max, d]`` (padding rows repeat token
    0 and are masked out) and ``mask: [B, L_max]`` bool. ``L_max >= 1`` so that an example with no
    token (e.g. no vision) still gives a fully masked row, which the cross-attention maps to 0.
    """
    batch, length = h.shape[0], h.shape[1]
    if len(ranges) != batch:
        raise ValueError(f"{len(ranges)} span lists for a batch of {batch}")
    indices: list[list[int]] = []
    for b, spans in enumerate(ranges):
        idx: list[int] = []
        for span in spans:
            if span is None:
                continue
            start, end = int(span[0]), int(span[1])
            if not 0 <= start <= end <= length:
                raise ValueError(f"example {b}: span {span} is outside [0, {length}]")
            idx.extend(range(start, end))
        indices.append(idx)
    width = max(1, max(len(idx) for idx in indices))
    index = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.bool)
    for b, idx in enumerate(indices):
        if idx:
            index[b, : len(idx)] = torch.tensor(idx)
            mask[b, : len(idx)] = True
    index, mask = index.to(h.device), mask.to(h.device)
    x = h.gather(1, index.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    return x, mask


def segment_ids(ranges: Sequence[Sequence[Span | None]], width: int) -> Tensor:
    """``[B, width]`` long: for each token :func:`gather_spans` lays out from ``ranges[b]``, the
    position of its span in ``ranges[b]`` (0, 1, 2, ...; a ``None`` span still counts); padding
    is 0 (masked anyway)."""
    out = torch.zeros(len(ranges), width, dtype=torch.long)
    for b, spans in enumerate(ranges):
        pos = 0
        for i, span in enumerate(spans):
            if span is None:
                continue
            n = int(span[1]) - int(span[0])
            out[b, pos : pos + n] = i
            pos += n
    return out
