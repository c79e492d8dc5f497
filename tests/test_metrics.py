"""Metrics against hand-computed values on small tensors (both locality definitions)."""

from __future__ import annotations

import pytest
import torch

from liveedit.evaluation.metrics import (
    argmax_agreement,
    five_metric_average,
    locality,
    token_accuracy,
    topk_agreement,
)


def test_token_accuracy_hand_computed() -> None:
    predicted = torch.tensor([[5, 6, 7, 0], [1, 2, 0, 0]])
    target = torch.tensor([[5, 9, 7, 0], [3, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    # example 0: 2 of 3 target tokens right; example 1: 1 of 2 (padding ignored).
    assert token_accuracy(predicted, target, mask).tolist() == pytest.approx([2 / 3, 1 / 2])


def test_token_accuracy_refuses_empty_target() -> None:
    with pytest.raises(ValueError, match="no target tokens"):
        token_accuracy(torch.tensor([[1]]), torch.tensor([[1]]), torch.tensor([[0]]))


def test_liveedit_locality_is_argmax_agreement() -> None:
    pre = torch.tensor([[4, 4, 4]])
    post = torch.tensor([[4, 3, 4]])
    mask = torch.tensor([[1, 1, 1]])
    assert argmax_agreement(post, pre, mask).item() == pytest.approx(2 / 3)
    value = locality("liveedit", post_argmax=post, pre_argmax=pre, answer_mask=mask)
    assert value.item() == pytest.approx(2 / 3)


def test_easyedit_topk_agreement_hand_computed() -> None:
    # vocabulary of 4; two positions. pre top-2 at pos 0: {3, 2}; post top-2: {3, 1} -> 1/2.
    pre = torch.tensor([[[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]]])
    post = torch.tensor([[[0.0, 2.5, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]]])
    mask = torch.tensor([[1, 1]])
    # position 0 overlap 1/2, position 1 overlap 2/2 -> mean 3/4.
    assert topk_agreement(post, pre, mask, k=2).item() == pytest.approx(0.75)
    top1 = locality("easyedit-top1", post_logits=post, pre_logits=pre, position_mask=mask)
    assert top1.item() == pytest.approx(1.0)  # argmax 3 and 0 unchanged at both positions
    masked = topk_agreement(post, pre, torch.tensor([[1, 0]]), k=2)
    assert masked.item() == pytest.approx(0.5)


def test_unknown_locality_definition_lists_allowed() -> None:
    with pytest.raises(ValueError, match="allowed values: liveedit, easyedit-top1, easyedit-top10"):
        locality("exact")


def test_five_metric_average() -> None:
    means = {"rel": 1.0, "t_gen": 0.5, "m_gen": 0.5, "t_loc": 1.0, "m_loc": 0.0}
    assert five_metric_average(means) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="missing m_loc"):
        five_metric_average({k: v for k, v in means.items() if k != "m_loc"})
