"""InfoNCE (Eq. 14), routing losses (Eqs. 13, 15, 16), edit losses (Eqs. 9–11), the π split."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from liveedit.editors.liveedit import (
    LiveEditConfig,
    hard_routing_loss,
    info_nce,
    liveedit_loss,
    locality_kl,
    split_generality_domain,
    sr1_loss,
    sr2_loss,
    target_nll,
)
from liveedit.editors.liveedit.losses import sample_negatives


def test_info_nce_by_hand() -> None:
    anchor = torch.tensor([[2.0, 0.0]])
    positive = torch.tensor([[1.0, 0.0]])
    candidates = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # d_m = 4: sims are a·b / 2 -> positive 1, candidates 1, 0, -1
    expected = -math.log(math.e / (math.e + 1 + math.exp(-1)))
    assert info_nce(anchor, positive, candidates, d_m=4).item() == pytest.approx(expected)
    # d_m = 1 with per-row candidates
    cand = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert info_nce(anchor, positive, cand, d_m=1).item() == pytest.approx(expected)


def _sim(a: torch.Tensor, b: torch.Tensor, d_m: int) -> float:
    return float(a @ b) / math.sqrt(d_m)


def _nce(a, pos, cands, d_m) -> float:
    return -math.log(math.exp(_sim(a, pos, d_m)) / sum(math.exp(_sim(a, c, d_m)) for c in cands))


def test_hard_routing_loss_eq13() -> None:
    torch.manual_seed(0)
    b, dim, d_m = 3, 8, 4
    t = {n: torch.randn(b, dim, dtype=torch.float64) for n in ("bg", "hg", "tg", "bl", "tl")}
    loss = hard_routing_loss(t["bg"], t["hg"], t["tg"], t["bl"], t["tl"], d_m)
    for i in range(b):
        phi_hat_set = [t["hg"][j] for j in range(b)]
        first = _nce(t["bg"][i], t["hg"][i], [*phi_hat_set, t["tg"][i]], d_m)
        second = _nce(t["bl"][i], t["tl"][i], [*phi_hat_set, t["tl"][i]], d_m)
        assert loss[i].item() == pytest.approx(first + second)


def test_sr1_sr2_eq15_eq16() -> None:
    torch.manual_seed(1)
    b, dim, d_m = 3, 8, 4
    psi_bar = torch.randn(b, dim, dtype=torch.float64)
    psi_hat_g = torch.randn(b, dim, dtype=torch.float64)
    psi_hat_l = torch.randn(b, dim, dtype=torch.float64)
    pool = torch.cat([psi_hat_g, psi_hat_l])
    negatives = torch.tensor([4, 0, 5])
    sr1 = sr1_loss(psi_bar, psi_hat_g, psi_hat_l, d_m, negatives=negatives)
    sr2 = sr2_loss(psi_bar, psi_hat_g, psi_hat_l, d_m)

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    for i in range(b):
        pos = _sim(psi_bar[i], psi_hat_g[i], d_m)
        neg = _sim(psi_bar[i], pool[negatives[i]], d_m)
        assert sr1[i].item() == pytest.approx(-math.log(sigmoid(pos)) - math.log(1 - sigmoid(neg)))
        assert sr2[i].item() == pytest.approx(_nce(psi_bar[i], psi_hat_g[i], list(pool), d_m))


def test_negatives_are_other_features_and_reproducible() -> None:
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_negatives(4, 8, g) for _ in range(300)])
    assert (draws != torch.arange(4)).all()
    assert set(draws.flatten().tolist()) == set(range(8))
    a = sample_negatives(4, 8, torch.Generator().manual_seed(5))
    assert torch.equal(a, sample_negatives(4, 8, torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError):
        sample_negatives(1, 1)


def test_target_nll_eqs9_10() -> None:
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]).bool()
    nll = target_nll(logits, ids, mask)
    mean = target_nll(logits, ids, mask, reduction="mean")
    for b in range(2):
        total, count = 0.0, 0
        for j in range(1, 5):
            if mask[b, j]:
                probs = torch.softmax(logits[b, j - 1], -1)
                total -= math.log(float(probs[ids[b, j]]))
                count += 1
        assert nll[b].item() == pytest.approx(total)
        assert mean[b].item() == pytest.approx(total / count)


def test_locality_kl_eq11_against_kl_div() -> None:
    torch.manual_seed(3)
    pre = torch.randn(2, 6, 9, dtype=torch.float64)
    post = torch.randn(2, 6, 9, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 1, 0, 0, 0]]).bool()
    kl = locality_kl(pre, post, mask)
    log_p = F.log_softmax(pre, -1)
    log_q = F.log_softmax(post, -1)
    per_pos = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1).detach()
    for b in range(2):
        expected = sum(per_pos[b, j - 1] for j in range(1, 6) if mask[b, j])
        assert kl[b].item() == pytest.approx(float(expected))  # KL(pre || post)
    assert locality_kl(pre, pre, mask).abs().max() < 1e-12
    kl.sum().backward()
    assert post.grad is not None and post.grad.abs().sum() > 0


def test_generality_split_picks_per_pi() -> None:
    edits, gens = ["e0", "e1", "e2", "e3", "e4"], ["g0", "g1", "g2", "g3", "g4"]
    hat, bar, pi1, pi2 = split_generality_domain(edits, gens, torch.Generator().manual_seed(0))
    assert set(pi1.tolist()) <= {0, 1} and set(pi2.tolist()) <= {0, 1}
    for b in range(5):
        assert hat[b] == (edits[b], gens[b])[int(pi1[b])]
        assert bar[b] == (edits[b], gens[b])[int(pi2[b])]
    again = split_generality_domain(edits, gens, torch.Generator().manual_seed(0))
    assert again[0] == hat and again[1] == bar


def _loss_inputs(b: int = 3, dim: int = 8) -> dict[str, torch.Tensor]:
    torch.manual_seed(4)
    names = ["phi_bar_g", "phi_hat_g", "phi_theta_g", "phi_bar_l", "phi_theta_l"]
    names += ["psi_bar_g", "psi_hat_g", "psi_hat_l"]
    out = {n: torch.randn(b, dim) for n in names}
    out.update(rel_nll=torch.rand(b), gen_nll=torch.rand(b), loc_kl=torch.rand(b))
    return out


def test_total_loss_weights_and_ablations() -> None:
    cfg = LiveEditConfig(d=8, d_m=4, k=2, heads=2, weight_loc=2.0, weight_hr=0.5)
    x = _loss_inputs()
    full = liveedit_loss(cfg, **x, generator=torch.Generator().manual_seed(0))
    assert full.rel.item() == pytest.approx(x["rel_nll"].mean().item())
    assert full.sr1.item() > 0 and full.sr2.item() > 0 and full.hr.item() > 0
    expected = full.rel + full.gen + 2 * full.loc + 0.5 * full.hr + full.sr1 + full.sr2
    assert full.total.item() == pytest.approx(expected.item())
    assert full.edit.item() == pytest.approx((full.rel + full.gen + full.loc).item())
    assert set(full.as_floats()) == {"rel", "gen", "loc", "hr", "sr1", "sr2", "total"}
    for switch, zeroed in [
        ("no_sr1", {"sr1"}),
        ("no_sr2", {"sr2"}),
        ("no_soft_routing", {"sr1", "sr2"}),
    ]:
        c = LiveEditConfig(d=8, d_m=4, k=2, heads=2, **{switch: True})
        parts = liveedit_loss(c, **x, generator=torch.Generator().manual_seed(0))
        for name in ("sr1", "sr2"):
            assert (getattr(parts, name).item() == 0) == (name in zeroed)
