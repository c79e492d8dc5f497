"""LiveEditModules on hidden states + spans; config; gradients to every trainable part."""

from __future__ import annotations

import math

import pytest
import torch

from liveedit.config import ConfigError, from_dict
from liveedit.editors.liveedit import (
    ExpertRepository,
    LiveEditConfig,
    LiveEditModules,
    RepositoryViews,
    Spans,
    liveedit_loss,
)

CFG = LiveEditConfig(d=16, n_vision=4, d_m=8, r=2, k=2, heads=2, layer=1)

# vision (4 tokens) + prompt + target, with different prompt/target lengths per example
SPANS = [
    Spans(vision=(0, 4), prompt=(4, 9), target=(9, 11)),
    Spans(vision=(0, 4), prompt=(4, 7), target=(7, 10)),
    Spans(vision=(1, 5), prompt=(5, 8), target=(8, 9)),
]
TEXT_ONLY = Spans(vision=None, prompt=(0, 5), target=(5, 7))


def _model(cfg: LiveEditConfig = CFG) -> LiveEditModules:
    torch.manual_seed(0)
    return LiveEditModules(cfg).double()


def test_batched_calls_equal_one_example_at_a_time() -> None:
    model = _model()
    h = torch.randn(3, 12, 16, dtype=torch.float64)
    experts = model.make_experts(h, SPANS)
    feats = model.edit_features(h, SPANS)
    inp = model.input_features(h, SPANS)
    assert experts.U.shape == (3, 2, 16) and feats.phi.shape == (3, 16)
    assert inp.phi_theta.shape == (3, 16)
    for b in range(3):
        one = model.make_experts(h[b : b + 1], SPANS[b : b + 1])
        torch.testing.assert_close(one.U[0], experts.U[b])
        torch.testing.assert_close(one.V[0], experts.V[b])
        one_f = model.edit_features(h[b : b + 1], [SPANS[b]])
        torch.testing.assert_close(one_f.phi[0], feats.phi[b])
        torch.testing.assert_close(one_f.psi[0], feats.psi[b])
        one_i = model.input_features(h[b : b + 1], [SPANS[b]])
        torch.testing.assert_close(one_i.phi_theta[0], inp.phi_theta[b])
    # spans may be plain tuples too
    tuples = [(s.vision, s.prompt, s.target) for s in SPANS]
    torch.testing.assert_close(model.make_experts(h, tuples).U, experts.U)


def _repository(model: LiveEditModules, n: int = 6) -> ExpertRepository:
    h = torch.randn(n, 12, 16, dtype=torch.float64)
    spans = [SPANS[i % 3] for i in range(n)]
    with torch.no_grad():
        ex = model.make_experts(h, spans)
        f = model.edit_features(h, spans)
    repo = ExpertRepository.for_config(CFG, "test", dtype=torch.float64)
    repo.append(ex.U, ex.V, f.phi, f.psi, [f"e{i}" for i in range(n)])
    return repo


def test_route_and_apply_composes_the_equations() -> None:
    model = _model()
    repo = _repository(model)
    h = torch.randn(4, 12, 16, dtype=torch.float64)
    spans = [*SPANS, TEXT_ONLY]
    with torch.no_grad():
        out = model.route_and_apply(h, spans, None, repo.views())
        inp = model.input_features(h, spans)
        views = repo.views()
        norm = model.generator.expert_norm
        n_kept = 0
        for i in range(4):
            expected = h[i].clone()
            if spans[i].vision is not None:
                thr = float(inp.phi[i] @ inp.phi_theta[i])
                kept = [t for t in range(len(repo)) if float(inp.phi[i] @ views.phi[t]) > thr]
                n_kept += len(kept)
                s = {t: float(inp.psi[i] @ views.psi[t]) / math.sqrt(CFG.d_m) for t in kept}
                denom = sum(math.exp(v) for v in s.values())
                x = norm(h[i])
                for t in kept:
                    w = 1 / (1 + math.exp(-s[t])) * math.exp(s[t]) / denom
                    expected += CFG.scale * w * (torch.relu(x @ views.U[t].T) @ views.V[t])
            torch.testing.assert_close(out[i], expected)
    assert 0 < n_kept < 3 * len(repo)  # some experts kept, some filtered
    assert inp.has_image.tolist() == [True, True, True, False]
    assert torch.equal(inp.phi[3], torch.zeros_like(inp.phi[3]))
    assert torch.equal(out[3], h[3])  # the text-only input is untouched, bitwise
    # explicit has_image=False for everyone: identical
    none = model.route_and_apply(h, spans, [False] * 4, repo.views())
    assert torch.equal(none, h)


def test_no_experts_returns_h_bitwise() -> None:
    model = _model()
    empty = ExpertRepository.for_config(CFG, "test", dtype=torch.float64)
    h = torch.randn(3, 12, 16, dtype=torch.float64)
    assert torch.equal(model.route_and_apply(h, SPANS, None, empty.views()), h)


def test_no_soft_routing_averages_the_hard_routed_experts() -> None:
    cfg = LiveEditConfig(d=16, n_vision=4, d_m=8, r=2, k=2, heads=2, layer=1, no_soft_routing=True)
    model = _model(cfg)
    repo = _repository(model)
    h = torch.randn(3, 12, 16, dtype=torch.float64)
    with torch.no_grad():
        w = model.route(h, SPANS, None, repo.views())
    for row in w:
        kept = row[row > 0]
        if len(kept):
            torch.testing.assert_close(kept, torch.full_like(kept, 1 / len(kept)))


@pytest.mark.parametrize("hr_star", [False, True])
def test_gradients_reach_every_trainable_part(hr_star: bool) -> None:
    torch.manual_seed(1)
    cfg = LiveEditConfig(d=16, n_vision=4, d_m=8, r=2, k=2, heads=2, layer=1, hr_star=hr_star)
    model = LiveEditModules(cfg)
    h = torch.randn(3, 12, 16)
    experts = model.make_experts(h, SPANS)
    edit = model.edit_features(h, SPANS)
    inp = model.input_features(h, SPANS)
    loc = model.input_features(torch.randn(3, 12, 16), SPANS)
    batch = RepositoryViews(experts.U, experts.V, edit.phi, edit.psi)
    out = model.route_and_apply(h, SPANS, None, batch, hard_routing=False)
    parts = liveedit_loss(
        cfg,
        rel_nll=out.pow(2).mean((1, 2)),
        gen_nll=torch.zeros(3),
        loc_kl=torch.zeros(3),
        phi_bar_g=inp.phi,
        phi_hat_g=edit.phi,
        phi_theta_g=inp.phi_theta,
        phi_bar_l=loc.phi,
        phi_theta_l=loc.phi_theta,
        psi_bar_g=inp.psi,
        psi_hat_g=edit.psi,
        psi_hat_l=model.edit_features(torch.randn(3, 12, 16), SPANS).psi,
        generator=torch.Generator().manual_seed(0),
    )
    parts.total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    names = {n for n, _ in model.named_parameters()}
    for expected in [
        "generator.U",
        "generator.V",
        "generator.ca_u.w_q.weight",
        "generator.ca_v.w_k.weight",
        "edit_extractor.phi",
        "edit_extractor.psi",
        "edit_extractor.ca_phi2.w_v.weight",
        "input_extractor.theta",
        "input_extractor.phi",
        "input_extractor.psi",
    ]:
        assert expected in names
    assert ("edit_extractor.ca_phi1.w_q.weight" in names) is not hr_star


def test_config_paper_scale_hash_and_validation() -> None:
    paper = LiveEditConfig.paper(d=2560, n_vision=32)
    assert (paper.d_m, paper.r, paper.k, paper.layer, paper.heads) == (1024, 4, 4, 21, 8)
    assert paper.lr == 1e-4 and paper.feature_dim == 4096
    assert paper.scale == pytest.approx(1 / (5 * 2))
    assert LiveEditConfig.paper(d=64, n_vision=4, d_m=32).d_m == 32
    base = LiveEditConfig()
    assert base.architecture_hash() != LiveEditConfig(d_m=64).architecture_hash()
    assert base.architecture_hash() == LiveEditConfig(lr=1e-3, weight_hr=2).architecture_hash()
    with pytest.raises(ValueError, match="heads"):
        LiveEditConfig(d_m=10, heads=4)
    cfg = from_dict(
        LiveEditConfig, {"d": 64, "layer": 3, "hr_star": True, "token_reduction": "mean"}
    )
    assert cfg.d == 64 and cfg.hr_star and cfg.token_reduction == "mean"
    with pytest.raises(ConfigError) as info:
        from_dict(LiveEditConfig, {"token_reduction": "max", "r": 0})
    assert "token_reduction" in str(info.value) and "r:" in str(info.value)
