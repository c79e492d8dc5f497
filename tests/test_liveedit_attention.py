"""Cross-attention (Eq. 2), expert generator (Eq. 1), feature extractors (Eqs. 3–5), spans."""

from __future__ import annotations

import pytest
import torch
from test_liveedit_reference import cross_attention

from liveedit.editors.liveedit import (
    CrossAttention,
    ExpertGenerator,
    FeatureExtractor,
    InputFeatureExtractor,
    LiveEditConfig,
    gather_spans,
)
from liveedit.editors.liveedit.spans import segment_ids

CFG = LiveEditConfig(d=12, n_vision=5, d_m=8, r=3, k=2, heads=2, layer=0)


def test_cross_attention_matches_per_head_loop_with_padding() -> None:
    torch.manual_seed(0)
    ca = CrossAttention(d_m=8, d_kv=12, heads=2).double()
    x = torch.randn(3, 8, dtype=torch.float64)
    y = torch.randn(4, 6, 12, dtype=torch.float64)
    mask = torch.tensor(
        [[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0]]
    ).bool()
    out = ca(x, y, mask)
    assert out.shape == (4, 3, 8)
    torch.testing.assert_close(out, cross_attention(ca, x, y, mask))
    assert torch.equal(out[2], torch.zeros(3, 8, dtype=torch.float64))  # no key: zero, not NaN
    torch.testing.assert_close(ca(x, y), cross_attention(ca, x, y, None))
    # batched queries [B, n, d_m]
    xb = torch.randn(4, 3, 8, dtype=torch.float64)
    torch.testing.assert_close(ca(xb, y, mask), cross_attention(ca, xb, y, mask))


def test_padding_does_not_change_the_result() -> None:
    torch.manual_seed(1)
    ca = CrossAttention(d_m=8, d_kv=12, heads=4).double()
    x = torch.randn(2, 8, dtype=torch.float64)
    y = torch.randn(1, 3, 12, dtype=torch.float64)
    padded = torch.cat([y, 100 * torch.randn(1, 4, 12, dtype=torch.float64)], dim=1)
    mask = torch.tensor([[True] * 3 + [False] * 4])
    torch.testing.assert_close(ca(x, padded, mask), ca(x, y))


def test_cross_attention_rejects_bad_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        CrossAttention(d_m=10, d_kv=4, heads=4)


def test_gather_spans_concatenates_in_order_and_masks() -> None:
    h = torch.arange(2 * 7, dtype=torch.float32).view(2, 7, 1)
    x, mask = gather_spans(h, [[(0, 2), None, (5, 7)], [(3, 4)]])
    assert x.shape == (2, 4, 1)
    assert x[0, :, 0].tolist() == [0, 1, 5, 6]
    assert mask.tolist() == [[True] * 4, [True, False, False, False]]
    assert x[1, 0, 0] == 10
    x, mask = gather_spans(h, [[None], [None]])
    assert x.shape == (2, 1, 1) and not mask.any()
    with pytest.raises(ValueError, match="example 1"):
        gather_spans(h, [[(0, 1)], [(3, 9)]])


def test_segment_ids_follow_the_gathered_layout() -> None:
    ranges = [[(0, 2), None, (5, 7)], [(3, 4)], [(1, 2), (2, 4), (6, 7)]]
    assert segment_ids(ranges, 4).tolist() == [[0, 0, 2, 2], [0, 0, 0, 0], [0, 1, 1, 2]]


def test_expert_generator_eq1() -> None:
    torch.manual_seed(2)
    gen = ExpertGenerator(CFG).double()
    h = torch.randn(3, 9, 12, dtype=torch.float64)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 4:] = False
    experts = gen(h, mask)
    assert experts.U.shape == (3, 3, 12) and experts.V.shape == (3, 3, 12)
    ref_u = cross_attention(gen.ca_u, gen.U, h, mask) @ gen.out_u.weight.T
    ref_v = cross_attention(gen.ca_v, gen.V, h, mask) @ gen.out_v.weight.T
    torch.testing.assert_close(experts.U, ref_u)
    torch.testing.assert_close(experts.V, ref_v)


def test_expert_generator_with_segment_embedding() -> None:
    """Option ``segment_embedding``: f_eg reads LN(h) + E[segment] instead of h."""
    from dataclasses import replace

    torch.manual_seed(4)
    gen = ExpertGenerator(replace(CFG, segment_embedding=True)).double()
    h = torch.randn(2, 6, 12, dtype=torch.float64)
    mask = torch.ones(2, 6, dtype=torch.bool)
    segments = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]])
    mask[1, 5] = False
    experts = gen(h, mask, segments)
    norm = torch.nn.functional.layer_norm(
        h, (12,), gen.segment_norm.weight, gen.segment_norm.bias, gen.segment_norm.eps
    )
    y = norm + gen.segments[segments]
    torch.testing.assert_close(
        experts.V, cross_attention(gen.ca_v, gen.V, y, mask) @ gen.out_v.weight.T
    )
    torch.testing.assert_close(
        experts.U, cross_attention(gen.ca_u, gen.U, y, mask) @ gen.out_u.weight.T
    )
    # the segment changes the expert: swap prompt and answer labels
    swapped = torch.where(segments == 1, 2, torch.where(segments == 2, 1, segments))
    assert not torch.allclose(gen(h, mask, swapped).V, experts.V)
    with pytest.raises(ValueError, match="segment of every token"):
        gen(h, mask)


def _inputs() -> tuple[torch.Tensor, ...]:
    h_v = torch.randn(3, 5, 12, dtype=torch.float64)
    v_mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0], [0] * 5]).bool()
    h_p = torch.randn(3, 4, 12, dtype=torch.float64)
    p_mask = torch.tensor([[1] * 4, [1, 1, 0, 0], [1, 1, 1, 0]]).bool()
    return h_v, v_mask, h_p, p_mask


def test_edit_feature_extractor_eq3() -> None:
    torch.manual_seed(3)
    fe = FeatureExtractor(CFG).double()
    h_v, v_mask, h_p, p_mask = _inputs()
    feats = fe(h_v, v_mask, h_p, p_mask)
    assert feats.phi.shape == (3, CFG.k * CFG.d_m) and feats.psi.shape == (3, CFG.k * CFG.d_m)
    prompted = cross_attention(fe.ca_phi1, fe.phi, h_p, p_mask)
    ref_phi = cross_attention(fe.ca_phi2, prompted, h_v, v_mask).flatten(1)
    ref_psi = cross_attention(fe.ca_psi, fe.psi, h_p, p_mask).flatten(1)
    torch.testing.assert_close(feats.phi, ref_phi)
    torch.testing.assert_close(feats.psi, ref_psi)
    assert torch.equal(feats.phi[2], torch.zeros_like(feats.phi[2]))  # no vision tokens


def test_input_feature_extractor_and_sentinel_eq4_eq5() -> None:
    torch.manual_seed(4)
    fe = InputFeatureExtractor(CFG).double()
    assert fe.theta.shape == (CFG.n_vision, CFG.d)
    h_v, v_mask, h_p, p_mask = _inputs()
    feats = fe(h_v, v_mask, h_p, p_mask)
    prompted = cross_attention(fe.ca_phi1, fe.phi, h_p, p_mask)
    theta = fe.theta.unsqueeze(0).expand(3, -1, -1)
    ref_theta = cross_attention(fe.ca_phi2, prompted, theta, None).flatten(1)
    torch.testing.assert_close(feats.phi_theta, ref_theta)
    ref_phi = cross_attention(fe.ca_phi2, prompted, h_v, v_mask).flatten(1)
    torch.testing.assert_close(feats.phi, ref_phi)


def test_hr_star_compresses_vision_without_prompt() -> None:
    torch.manual_seed(5)
    cfg = LiveEditConfig(d=12, n_vision=5, d_m=8, r=3, k=2, heads=2, layer=0, hr_star=True)
    fe = InputFeatureExtractor(cfg).double()
    assert fe.ca_phi1 is None
    h_v, v_mask, h_p, p_mask = _inputs()
    feats = fe(h_v, v_mask, h_p, p_mask)
    ref = cross_attention(fe.ca_phi2, fe.phi, h_v, v_mask).flatten(1)
    torch.testing.assert_close(feats.phi, ref)
    other_prompt = fe(h_v, v_mask, torch.randn_like(h_p), p_mask)
    torch.testing.assert_close(other_prompt.phi, feats.phi)
    torch.testing.assert_close(other_prompt.phi_theta[0], other_prompt.phi_theta[1])
