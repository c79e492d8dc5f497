"""Hard routing (Eq. 5), soft routing (Eq. 7), '- SR' averaging and the residual (Eq. 6)."""

from __future__ import annotations

import math

import torch
from test_liveedit_reference import layer_norm

from liveedit.editors.liveedit import RepositoryViews, apply_experts, hard_route, route, soft_route
from liveedit.editors.liveedit.routing import average_route

D_M = 16
DIM = 2 * D_M  # k = 2


def _features(batch: int, t: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "phi_bar": torch.randn(batch, DIM, generator=g, dtype=torch.float64),
        "phi_hat": torch.randn(t, DIM, generator=g, dtype=torch.float64),
        "phi_theta": torch.randn(batch, DIM, generator=g, dtype=torch.float64),
        "psi_bar": torch.randn(batch, DIM, generator=g, dtype=torch.float64),
        "psi_hat": torch.randn(t, DIM, generator=g, dtype=torch.float64),
    }


def _ref_keep(f: dict[str, torch.Tensor]) -> list[list[bool]]:
    keep = []
    for i in range(f["phi_bar"].shape[0]):
        threshold = float(f["phi_bar"][i] @ f["phi_theta"][i]) / math.sqrt(D_M)
        row = []
        for tau in range(f["phi_hat"].shape[0]):
            row.append(float(f["phi_bar"][i] @ f["phi_hat"][tau]) / math.sqrt(D_M) > threshold)
        keep.append(row)
    return keep


def _ref_soft(f: dict[str, torch.Tensor], keep: list[list[bool]]) -> torch.Tensor:
    batch, t = len(keep), len(keep[0])
    w = torch.zeros(batch, t, dtype=torch.float64)
    for i in range(batch):
        s = [float(f["psi_bar"][i] @ f["psi_hat"][tau]) / math.sqrt(D_M) for tau in range(t)]
        denom = sum(math.exp(s[tau]) for tau in range(t) if keep[i][tau])
        for tau in range(t):
            if keep[i][tau]:
                w[i, tau] = 1 / (1 + math.exp(-s[tau])) * math.exp(s[tau]) / denom
    return w


def test_hard_routing_matches_per_expert_decisions() -> None:
    f = _features(batch=4, t=9)
    keep = hard_route(f["phi_bar"], f["phi_hat"], f["phi_theta"], D_M)
    ref = _ref_keep(f)
    assert keep.tolist() == ref
    flat = [x for row in ref for x in row]
    assert any(flat) and not all(flat)  # the case is informative


def test_soft_routing_weights_eq7() -> None:
    f = _features(batch=4, t=9, seed=1)
    keep = hard_route(f["phi_bar"], f["phi_hat"], f["phi_theta"], D_M)
    w = soft_route(f["psi_bar"], f["psi_hat"], keep, D_M)
    torch.testing.assert_close(w, _ref_soft(f, keep.tolist()))
    assert (w.sum(-1) <= 1 + 1e-12).all()
    assert (w[~keep] == 0).all()
    assert (w[keep] > 0).all()
    nothing = torch.zeros_like(keep)
    assert torch.equal(soft_route(f["psi_bar"], f["psi_hat"], nothing, D_M), torch.zeros_like(w))


def test_no_soft_routing_averages_the_kept_experts() -> None:
    keep = torch.tensor([[True, False, True, True], [False] * 4])
    w = average_route(keep, torch.float64)
    assert w.tolist() == [[1 / 3, 0.0, 1 / 3, 1 / 3], [0.0] * 4]


def _ref_residual(h, w, U, V, norm, scale) -> torch.Tensor:
    out = h.clone()
    for i in range(h.shape[0]):
        for pos in range(h.shape[1]):
            x = layer_norm(h[i, pos], norm)
            for tau in range(U.shape[0]):
                if w[i, tau] != 0:
                    out[i, pos] += w[i, tau] * scale * (torch.relu(x @ U[tau].T) @ V[tau])
    return out


def test_residual_eq6_at_every_position() -> None:
    torch.manual_seed(2)
    batch, length, d, r, t = 3, 5, 10, 4, 6
    h = torch.randn(batch, length, d, dtype=torch.float64)
    U = torch.randn(t, r, d, dtype=torch.float64)
    V = torch.randn(t, r, d, dtype=torch.float64)
    norm = torch.nn.LayerNorm(d).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.1, 0.1)
    w = torch.rand(batch, t, dtype=torch.float64) * (torch.rand(batch, t) > 0.4)
    w[1] = 0.0  # an input with no expert
    scale = 1 / (5 * math.sqrt(r))
    out = apply_experts(h, w, U, V, norm, scale)
    torch.testing.assert_close(out, _ref_residual(h, w, U, V, norm, scale))
    assert torch.equal(out[1], h[1])  # bitwise
    assert not torch.allclose(out[0], h[0])


def test_route_batched_end_to_end_and_image_less_inputs() -> None:
    f = _features(batch=5, t=40, seed=3)
    torch.manual_seed(3)
    views = RepositoryViews(
        U=torch.randn(40, 2, 6, dtype=torch.float64),
        V=torch.randn(40, 2, 6, dtype=torch.float64),
        phi=f["phi_hat"],
        psi=f["psi_hat"],
    )
    has_image = torch.tensor([True, True, False, True, True])
    w = route(f["phi_bar"], f["psi_bar"], f["phi_theta"], has_image, views, D_M)
    keep = _ref_keep(f)
    keep[2] = [False] * 40
    torch.testing.assert_close(w, _ref_soft(f, keep))
    assert (w[2] == 0).all()
    # '- SR'
    avg = route(f["phi_bar"], f["psi_bar"], f["phi_theta"], has_image, views, D_M, soft=False)
    for i, row in enumerate(keep):
        n = sum(row)
        assert avg[i].tolist() == [1 / n if kept else 0.0 for kept in row]
    # training: no hard filter, every expert of the batch is in Ê
    dense = route(f["phi_bar"], f["psi_bar"], f["phi_theta"], has_image, views, D_M, hard=False)
    assert (dense[[0, 1, 3, 4]] > 0).all() and (dense[2] == 0).all()
    # the residual of an image-less input is bitwise the input
    h = torch.randn(5, 3, 6, dtype=torch.float64)
    out = apply_experts(h, w, views.U, views.V, torch.nn.LayerNorm(6).double(), 0.1)
    assert torch.equal(out[2], h[2])


def test_no_experts_gives_h_unchanged() -> None:
    h = torch.randn(2, 4, 6)
    empty = RepositoryViews(
        U=torch.zeros(0, 2, 6), V=torch.zeros(0, 2, 6), phi=torch.zeros(0, 8), psi=torch.zeros(0, 8)
    )
    w = route(torch.randn(2, 8), torch.randn(2, 8), torch.randn(2, 8), torch.ones(2), empty, 4)
    assert w.shape == (2, 0)
    out = apply_experts(h, w, empty.U, empty.V, torch.nn.LayerNorm(6), 0.1)
    assert torch.equal(out, h)
