"""Preference losses against values computed by hand (llmrec.preference.losses, docs/design.md §6)."""

import math

import pytest
import torch
import torch.nn.functional as F

from llmrec.preference.losses import (
    MarginStats,
    PreferenceLoss,
    alpha_dpo_loss,
    beta_dpo_loss,
    beta_guided_filter,
    dpo_loss,
    reward_metrics,
    robust_aggregate,
    sdpo_loss,
    weighted_mean,
)

f64 = torch.float64


def t(values, dtype=f64, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def random_inputs(B: int, N: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pc, rc = -10 * torch.rand(B, generator=g, dtype=f64), -10 * torch.rand(B, generator=g, dtype=f64)
    pr, rr = -10 * torch.rand(B, N, generator=g, dtype=f64), -10 * torch.rand(B, N, generator=g, dtype=f64)
    return pc, pr, rc, rr


# ------------------------------------------------------------------------------------------------- DPO / S-DPO


def test_sdpo_with_one_negative_is_dpo_on_hand_computed_numbers():
    pc, rc = t([-2.0, -5.0]), t([-2.5, -4.0])  # h_w = [0.5, -1.0]
    pr, rr = t([[-3.0], [-4.0]]), t([[-2.0], [-4.5]])  # h_l = [-1.0, 0.5]
    beta = 0.5
    expected = [softplus(0.5 * (-1.0 - 0.5)), softplus(0.5 * (0.5 + 1.0))]  # log(1 + exp(beta (h_l - h_w)))
    expected_dpo = [-math.log(1 / (1 + math.exp(-0.5 * 1.5))), -math.log(1 / (1 + math.exp(0.5 * 1.5)))]
    assert expected == pytest.approx(expected_dpo, rel=1e-12)

    s = sdpo_loss(pc, pr, rc, rr, beta=beta)
    d = dpo_loss(pc, pr[:, 0], rc, rr[:, 0], beta=beta)
    assert s.losses.tolist() == pytest.approx(expected, rel=1e-12)
    assert d.losses.tolist() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(s.losses, d.losses, rtol=1e-14, atol=0)
    assert s.chosen_rewards.tolist() == pytest.approx([0.25, -0.5])
    assert s.rejected_rewards[:, 0].tolist() == pytest.approx([-0.5, 0.25]) and s.rejected_rewards.shape == (2, 1)
    assert s.extra == {"beta": 0.5} and s.kept is None


def test_sdpo_three_negatives_value_and_gradient_by_hand():
    pc, rc = t([-1.0], grad=True), t([-1.0])  # h_w = 0
    pr, rr = t([[-3.8, -4.4, -3.0]], grad=True), t([[-4.0, -4.0, -4.0]])  # h = [0.2, -0.4, 1.0]
    out = sdpo_loss(pc, pr, rc, rr, beta=2.0)
    x = [0.4, -0.8, 2.0]  # beta * (h_k - h_w)
    S = sum(math.exp(v) for v in x)
    assert out.losses.item() == pytest.approx(math.log(1 + S), rel=1e-12)
    out.losses.sum().backward()
    # dL/dpi(y_k) = beta * e^{x_k} / (1 + S) > 0; dL/dpi(y_w) = -beta * S / (1 + S) < 0.
    assert pr.grad[0].tolist() == pytest.approx([2 * math.exp(v) / (1 + S) for v in x], rel=1e-10)
    assert pc.grad.item() == pytest.approx(-2 * S / (1 + S), rel=1e-10)


def test_sdpo_gradient_signs_raise_chosen_lower_negatives():
    pc, pr, rc, rr = random_inputs(6, 4)
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    sdpo_loss(pc, pr, rc, rr, beta=1.0).losses.sum().backward()
    assert (pc.grad < 0).all()
    assert (pr.grad > 0).all()


def test_sdpo_is_invariant_to_the_order_of_negatives():
    pc, pr, rc, rr = random_inputs(5, 4, seed=1)
    perm = torch.tensor([2, 0, 3, 1])
    a = sdpo_loss(pc, pr, rc, rr, beta=1.5)
    b = sdpo_loss(pc, pr[:, perm], rc, rr[:, perm], beta=1.5)
    torch.testing.assert_close(a.losses, b.losses, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(a.rejected_rewards[:, perm], b.rejected_rewards)


@pytest.mark.parametrize("beta", [1.0, 100.0])
def test_losses_stay_finite_at_extreme_margins_in_float32(beta):
    # beta * margin = 1e4 both ways, with log-probs of -1e4 (a naive log(1 + sum exp) overflows to inf here).
    m = 1e4 / beta
    pc = torch.tensor([-1e4, -1e4], requires_grad=True)
    rc = torch.tensor([-1e4 + m, -1e4 - m])  # h_w = -m (badly wrong), +m (clearly right)
    pr = torch.tensor([[-1e4, -1e4], [-1e4, -1e4]], requires_grad=True)
    rr = torch.tensor([[-1e4, -1e4], [-1e4, -1e4]])  # h_k = 0
    out = sdpo_loss(pc, pr, rc, rr, beta=beta)
    assert out.losses[0].item() == pytest.approx(1e4 + math.log(2), rel=1e-6)
    assert out.losses[1].item() == pytest.approx(0.0, abs=1e-30)
    robust = robust_aggregate(out.losses, beta_prime=1.0)
    (out.losses.sum() + robust).backward()
    assert torch.isfinite(robust) and torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()

    d = dpo_loss(pc.detach().requires_grad_(True), pr[:, 0].detach(), rc, rr[:, 0], beta=beta)
    assert d.losses.tolist() == pytest.approx([1e4, 0.0], rel=1e-6, abs=1e-30)
    b, _ = beta_dpo_loss(pc, pr, rc, rr, MarginStats(), beta=beta, a=0.0, kept=torch.tensor([True, True]))
    assert torch.isfinite(b.losses).all()
    lens = torch.ones(2)
    al, _ = alpha_dpo_loss(pc, pr, rc, rr, lens, torch.ones(2, 2), MarginStats(), beta=beta, alpha=0.0,
                           gamma_beta_ratio=0.0)
    al.losses.sum().backward()
    assert torch.isfinite(al.losses).all() and torch.isfinite(pc.grad).all()
    assert torch.log(1 + torch.exp(torch.tensor(1e4))).isinf()  # the naive form would fail this test


def test_input_shapes_are_checked():
    pc, pr, rc, rr = random_inputs(3, 2)
    with pytest.raises(ValueError, match="policy_rejected must have shape \\[3, N\\]"):
        sdpo_loss(pc, pr[:, 0], rc, rr[:, 0])
    with pytest.raises(ValueError, match="ref_rejected"):
        sdpo_loss(pc, pr, rc, rr[:, :1])
    with pytest.raises(ValueError, match="policy_rejected must have shape \\[3\\]"):
        dpo_loss(pc, pr, rc, rr)
    with pytest.raises(ValueError, match="beta must be > 0"):
        sdpo_loss(pc, pr, rc, rr, beta=0.0)


# ------------------------------------------------------------------------------------------------- aggregation


def test_weighted_mean_by_hand():
    losses = t([1.0, 2.0, 3.0])
    w = t([0.5, 2.0, 1.0])
    kept = torch.tensor([True, False, True])
    assert weighted_mean(losses).item() == pytest.approx(2.0)
    assert weighted_mean(losses, w).item() == pytest.approx((0.5 + 4.0 + 3.0) / 3)  # / B, not / sum(w)
    assert weighted_mean(losses, None, kept).item() == pytest.approx(2.0)
    assert weighted_mean(losses, w, kept).item() == pytest.approx((0.5 + 3.0) / 2)
    # A dropped sample's non-finite loss does not leak into the batch.
    assert weighted_mean(t([1.0, math.nan, 3.0]), w, kept).item() == pytest.approx(1.75)
    # Weights act per sample: a batch whose samples share one weight c is scaled by c (not normalised away).
    assert weighted_mean(losses, t([3.0, 3.0, 3.0])).item() == pytest.approx(6.0)


def test_per_sample_weights_act_per_sample_not_per_batch():
    pc, pr, rc, rr = random_inputs(4, 3, seed=2)
    w = t([0.5, 2.0, 1.0, 3.0])

    def grad_of(aggregate):
        x = pc.clone().requires_grad_(True)
        aggregate(sdpo_loss(x, pr, rc, rr).losses).backward()
        return x.grad

    plain = grad_of(lambda L: weighted_mean(L))
    per_sample = grad_of(lambda L: weighted_mean(L, w))
    batch_scaled = grad_of(lambda L: w.mean() * weighted_mean(L))
    torch.testing.assert_close(per_sample, w * plain)  # each sample's gradient scaled by its OWN weight
    torch.testing.assert_close(batch_scaled, w.mean() * plain)
    assert not torch.allclose(per_sample, batch_scaled)
    losses = sdpo_loss(pc, pr, rc, rr).losses
    assert weighted_mean(losses, w).item() != pytest.approx((w.mean() * losses.mean()).item())


def test_dr_aggregation_by_hand_and_its_limits():
    losses = t([0.5, 1.0, 2.0], grad=True)
    expected = -math.log((math.exp(-0.5) + math.exp(-1.0) + math.exp(-2.0)) / 3)
    out = robust_aggregate(losses, beta_prime=1.0)
    assert out.item() == pytest.approx(expected, rel=1e-12)
    out.backward()
    z = [math.exp(-v) for v in (0.5, 1.0, 2.0)]
    assert losses.grad.tolist() == pytest.approx([v / sum(z) for v in z], rel=1e-10)  # softmax(-L / beta')
    mean, low = 3.5 / 3, 0.5
    assert robust_aggregate(losses.detach(), beta_prime=1e6).item() == pytest.approx(mean, abs=1e-6)
    assert robust_aggregate(losses.detach(), beta_prime=1e-3).item() == pytest.approx(low, abs=2e-3)
    mid = robust_aggregate(losses.detach(), beta_prime=0.3).item()
    assert low < mid < expected < mean
    # float32 input: still close to the mean for a huge beta' (computed in float64 inside).
    assert robust_aggregate(losses.detach().float(), beta_prime=1e6).item() == pytest.approx(mean, abs=1e-5)


def test_weighted_dr_aggregation_by_hand():
    L, w = [0.5, 1.0, 2.0], [2.0, 1.0, 0.5]
    W, n = sum(w), 3
    expected = (W / n) * -math.log(sum(wi * math.exp(-li) for wi, li in zip(w, L)) / W)
    losses, weights = t(L), t(w)
    assert robust_aggregate(losses, 1.0, weights).item() == pytest.approx(expected, rel=1e-12)
    # beta' -> inf gives weighted_mean (sum w L / B = (1 + 1 + 1) / 3); uniform weights give the unweighted form.
    assert robust_aggregate(losses, 1e6, weights).item() == pytest.approx(weighted_mean(losses, weights).item(),
                                                                          abs=1e-6)
    assert robust_aggregate(losses, 1.0, torch.ones(3, dtype=f64)).item() == pytest.approx(
        robust_aggregate(losses, 1.0).item(), rel=1e-14)
    assert robust_aggregate(losses, 1.0, 3 * weights).item() == pytest.approx(3 * expected, rel=1e-12)
    # A dropped sample counts as weight 0, whatever its loss.
    kept = torch.tensor([True, False, True])
    got = robust_aggregate(t([0.5, math.inf, 2.0]), 1.0, kept=kept).item()
    assert got == pytest.approx(-math.log((math.exp(-0.5) + math.exp(-2.0)) / 2), rel=1e-12)


# ------------------------------------------------------------------------------------------------- beta-DPO


def test_margin_stats_update_by_hand():
    state = MarginStats(mean=0.2, std=0.5)
    new = state.updated(t([1.5, -0.5, -0.5, 1.0]))
    # mean 0.375; unbiased std = sqrt((1.125^2 + 0.875^2 + 0.875^2 + 0.625^2) / 3) = sqrt(3.1875 / 3)
    assert new.mean == pytest.approx(0.9 * 0.2 + 0.1 * 0.375)
    assert new.std == pytest.approx(0.9 * 0.5 + 0.1 * math.sqrt(3.1875 / 3))
    assert (state.mean, state.std) == (0.2, 0.5)  # frozen: the old state is untouched
    one = MarginStats().updated(t([2.0]))
    assert (one.mean, one.std) == (pytest.approx(0.2), 0.0)  # one value: std 0, not NaN


def beta_case():
    # h_w = [0.5, 0, -0.5, 0]; h_l = [-1, 0.5, 0, -1]; M = h_w - h_l = [1.5, -0.5, -0.5, 1.0]
    pc, rc = t([-1.0, -2.0, -3.0, -4.0]), t([-1.5, -2.0, -2.5, -4.0])
    pr, rr = t([-3.0, -2.5, -3.0, -6.0]), t([-2.0, -3.0, -3.0, -5.0])
    return pc, pr, rc, rr


def test_beta_dpo_pairwise_by_hand_with_a_given_mask():
    pc, pr, rc, rr = beta_case()
    pc.requires_grad_(True)
    state = MarginStats(mean=0.2, std=0.5)
    kept = torch.tensor([True, False, True, True])
    out, new = beta_dpo_loss(pc, pr, rc, rr, state, beta=0.5, a=0.6, rho=0.2, kept=kept)

    M = [1.5, -0.5, -0.5, 1.0]
    M0 = 0.9 * 0.2 + 0.1 * 0.375
    s = 0.9 * 0.5 + 0.1 * math.sqrt(3.1875 / 3)
    beta_b = 0.5 * (1 + 0.6 * ((1.5 - 0.5 + 1.0) / 3 - M0))  # mean margin of the kept samples, updated M0
    expected = [softplus(-beta_b * m) if k else 0.0 for m, k in zip(M, kept.tolist())]
    assert (new.mean, new.std) == (pytest.approx(M0), pytest.approx(s))
    assert out.extra["beta"] == pytest.approx(beta_b)
    assert out.extra["kept_fraction"] == 0.75
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-12)
    assert weighted_mean(out.losses, kept=out.kept).item() == pytest.approx(sum(expected) / 3, rel=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([0.25, 0.0, -0.25, 0.0])  # beta0 * h, as the authors
    weighted_mean(out.losses, kept=out.kept).backward()
    assert pc.grad[1].item() == 0.0 and (pc.grad[kept] < 0).all()  # the dropped sample gets no gradient


def test_beta_dpo_is_deterministic_given_state_and_mask_and_n1_equals_pairwise():
    pc, pr, rc, rr = beta_case()
    state = MarginStats(mean=0.2, std=0.5)
    kept = torch.tensor([False, True, True, True])
    a1, s1 = beta_dpo_loss(pc, pr, rc, rr, state, kept=kept)
    a2, s2 = beta_dpo_loss(pc, pr, rc, rr, state, kept=kept)
    assert torch.equal(a1.losses, a2.losses) and s1 == s2 and a1.extra == a2.extra
    multi, s3 = beta_dpo_loss(pc, pr[:, None], rc, rr[:, None], state, kept=kept)
    assert s3 == s1 and multi.extra == a1.extra
    torch.testing.assert_close(multi.losses, a1.losses, rtol=1e-14, atol=0)
    # With a generator instead of a mask: the same seed draws the same mask, for [B] and [B, 1] alike.
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    p, _ = beta_dpo_loss(pc, pr, rc, rr, state, rho=0.5, generator=g1)
    m, _ = beta_dpo_loss(pc, pr[:, None], rc, rr[:, None], state, rho=0.5, generator=g2)
    assert int(p.kept.sum()) == 2 and torch.equal(p.kept, m.kept)
    torch.testing.assert_close(p.losses, m.losses, rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="either a kept mask or a generator"):
        beta_dpo_loss(pc, pr, rc, rr, state, kept=kept, generator=g1)


def test_beta_dpo_multi_negative_by_hand():
    # h_w = [0, 1]; h_neg = [[-1, 0.5], [0, 2]]; gaps h_w - h_k = [[1, -0.5], [1, -1]]; M = [0.25, 0]
    pc, rc = t([0.0, 1.0]), t([0.0, 0.0])
    pr, rr = t([[-1.0, 0.5], [0.0, 2.0]]), torch.zeros(2, 2, dtype=f64)
    out, new = beta_dpo_loss(pc, pr, rc, rr, MarginStats(), beta=1.0, a=0.6, kept=torch.tensor([True, True]))
    M0, s = 0.1 * 0.125, 0.1 * math.sqrt(2 * 0.125**2)
    beta_b = 1.0 + 0.6 * (0.125 - M0)
    expected = [math.log(1 + math.exp(-beta_b) + math.exp(0.5 * beta_b)),
                math.log(1 + math.exp(-beta_b) + math.exp(beta_b))]
    assert (new.mean, new.std) == (pytest.approx(M0), pytest.approx(s))
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-12)


def test_beta_dpo_dynamic_beta_is_clamped():
    pc, pr, rc, rr = beta_case()
    out, new = beta_dpo_loss(pc, pr, rc, rr, MarginStats(mean=10.0), beta=1.0, a=10.0, kept=torch.ones(4, dtype=bool))
    assert new.mean == pytest.approx(9.0375)
    assert out.extra["beta"] == 1e-3
    assert out.losses.tolist() == pytest.approx([softplus(-1e-3 * m) for m in [1.5, -0.5, -0.5, 1.0]], rel=1e-12)


def test_beta_guided_filter_counts_and_outliers():
    g = torch.Generator().manual_seed(0)
    margins = t([0.1, -0.2, 0.3, 0.0, 0.5, 0.2, -0.1, 0.05, 0.15, 0.25])
    assert int(beta_guided_filter(margins, 0.0, 1.0, 0.2, g).sum()) == 8  # int(10 * 0.8)
    assert beta_guided_filter(margins, 0.0, 1.0, 0.0, g).all()
    assert int(beta_guided_filter(margins[:2], 0.0, 1.0, 0.6, g).sum()) == 1  # int(0.8) = 0 -> keep one
    for seed in range(20):  # exp(-0.5 * 100^2) = 0: the outlier is never drawn while others remain
        kept = beta_guided_filter(t([0.0, 0.1, -0.1, 0.0, 100.0]), 0.0, 1.0, 0.2, torch.Generator().manual_seed(seed))
        assert kept.tolist() == [True, True, True, True, False]
    # Scale 0 and margins on the threshold (policy == reference at the first step): no NaN, a valid draw.
    assert int(beta_guided_filter(torch.zeros(5, dtype=f64), 0.0, 0.0, 0.2, g).sum()) == 4


def test_beta_guided_filter_draws_with_gaussian_weights():
    margins = t([0.0, 1.0, 2.0])
    weights = [math.exp(-0.5 * m * m) for m in (0.0, 1.0, 2.0)]
    probs = [w / sum(weights) for w in weights]  # ~[0.547, 0.332, 0.074]
    g = torch.Generator().manual_seed(123)
    n = 3000
    counts = sum(beta_guided_filter(margins, 0.0, 1.0, 0.5, g).double() for _ in range(n))  # keeps 1 of 3
    assert (counts / n).tolist() == pytest.approx(probs, abs=0.03)


# ------------------------------------------------------------------------------------------------- alpha-DPO


def alpha_case():
    # a_w = [-1, -2], a_l = [-2, -1] -> u = [1, -1]; ref a_w = [-1.5, -2], ref a_l = [-2, -1.5] -> d = [0.5, -0.5]
    pc, cl = t([-2.0, -6.0]), t([2.0, 3.0])
    pr, rl = t([-6.0, -4.0]), t([3.0, 4.0])
    rc, rr = t([-3.0, -6.0]), t([-6.0, -6.0])
    return pc, pr, rc, rr, cl, rl


def test_alpha_dpo_pairwise_by_hand():
    pc, pr, rc, rr, cl, rl = alpha_case()
    pc.requires_grad_(True)
    beta, gbr, alpha = 2.5, 0.6, 0.2
    out, new = alpha_dpo_loss(pc, pr, rc, rr, cl, rl, MarginStats(mean=0.1, std=0.4), beta, gbr, alpha)
    mu, s = 0.9 * 0.1 + 0.1 * 0.0, 0.9 * 0.4 + 0.1 * math.sqrt(0.5)  # mean(d) = 0, unbiased std(d) = sqrt(0.5)
    u, d = [1.0, -1.0], [0.5, -0.5]
    logits = [beta * (ui - (alpha * (di - mu) / s + gbr)) for ui, di in zip(u, d)]
    assert (new.mean, new.std) == (pytest.approx(mu), pytest.approx(s))
    assert out.losses.tolist() == pytest.approx([softplus(-x) for x in logits], rel=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([beta * (-1 - alpha * 0.5), beta * (-2 - alpha * 0.0)])
    assert out.rejected_rewards.tolist() == pytest.approx([beta * (-2 - 0.0), beta * (-1 - alpha * 0.5)])
    assert out.extra["gamma"] == pytest.approx(1.5)
    # The margin is a stop-gradient: dL/dpi(y_w) = -beta * sigmoid(-logit) / |y_w| only.
    out.losses.sum().backward()
    sig = [1 / (1 + math.exp(x)) for x in logits]
    assert pc.grad.tolist() == pytest.approx([-beta * sig[0] / 2, -beta * sig[1] / 3], rel=1e-10)


def test_alpha_zero_is_simpo_and_ignores_the_reference():
    pc, pr, rc, rr, cl, rl = alpha_case()
    beta, gbr = 2.0, 0.5
    out, _ = alpha_dpo_loss(pc, pr, rc, rr, cl, rl, MarginStats(), beta, gbr, alpha=0.0)
    simpo = [softplus(-(beta * u - beta * gbr)) for u in (1.0, -1.0)]  # -log sigmoid(beta * u - gamma)
    assert out.losses.tolist() == pytest.approx(simpo, rel=1e-12)
    other, _ = alpha_dpo_loss(pc, pr, rc + 3.0, rr - 1.0, cl, rl, MarginStats(), beta, gbr, alpha=0.0)
    torch.testing.assert_close(other.losses, out.losses)


def test_alpha_dpo_multi_negative_by_hand_and_n1_equals_pairwise():
    pc, pr, rc, rr, cl, rl = alpha_case()
    state = MarginStats(mean=0.1, std=0.4)
    pair, s1 = alpha_dpo_loss(pc, pr, rc, rr, cl, rl, state)
    multi, s2 = alpha_dpo_loss(pc, pr[:, None], rc, rr[:, None], cl, rl[:, None], state)
    assert s1 == s2
    torch.testing.assert_close(multi.losses, pair.losses, rtol=1e-14, atol=0)
    torch.testing.assert_close(multi.chosen_rewards, pair.chosen_rewards)

    # One sample, two negatives: a_w = -1; a_k = [-2, -0.5]; ref a_w = -1; ref a_k = [-1.5, -1]
    out, new = alpha_dpo_loss(t([-2.0]), t([[-4.0, -1.0]]), t([-2.0]), t([[-3.0, -2.0]]), t([2.0]), t([[2.0, 2.0]]),
                              MarginStats(), beta=2.0, gamma_beta_ratio=0.25, alpha=0.1)
    u, d = [1.0, -0.5], [0.5, -0.5]  # d = u - (ref a_w - ref a_k) = [1 - 0.5, -0.5 - 0]
    mu, s = 0.0, 0.1 * math.sqrt(0.5)
    x = [-(2.0 * uk - 0.5 - 2.0 * 0.1 * (dk - mu) / s) for uk, dk in zip(u, d)]
    assert (new.mean, new.std) == (pytest.approx(mu), pytest.approx(s))
    assert out.losses.item() == pytest.approx(math.log(1 + math.exp(x[0]) + math.exp(x[1])), rel=1e-12)


def test_alpha_dpo_first_step_with_policy_equal_to_reference_is_finite():
    pc, pr, _, _, cl, rl = alpha_case()
    out, new = alpha_dpo_loss(pc, pr, pc, pr, cl, rl, MarginStats())  # d = 0 everywhere: s = 0
    assert new.std == 0.0 and torch.isfinite(out.losses).all()


# ------------------------------------------------------------------------------------------------- logging


def test_reward_metrics_by_hand():
    out = PreferenceLoss(losses=t([0.0, 0.0]), chosen_rewards=t([1.0, 0.0]),
                         rejected_rewards=t([[0.5, -1.0], [0.5, -0.5]]))
    m = {k: v.item() for k, v in reward_metrics(out).items()}
    assert m == {"rewards/chosen": pytest.approx(0.5), "rewards/rejected": pytest.approx(-0.125),
                 "rewards/margins": pytest.approx((1.25 + 0.0) / 2), "rewards/accuracies": 0.5}
    pair = reward_metrics(PreferenceLoss(t([0.0]), t([1.0]), t([2.0])))
    assert pair["rewards/accuracies"].item() == 0.0 and pair["rewards/margins"].item() == pytest.approx(-1.0)


def test_dpo_reference_formula_is_logsigmoid():
    pc, pr, rc, rr = random_inputs(5, 1, seed=3)
    out = dpo_loss(pc, pr[:, 0], rc, rr[:, 0], beta=0.1)
    torch.testing.assert_close(out.losses, -F.logsigmoid(0.1 * ((pc - rc) - (pr[:, 0] - rr[:, 0]))))


# ------------------------------------------------------------------------------------------------- the registry


def test_the_train_sdpo_loss_choices_are_the_registry_keys(tmp_path):
    import argparse

    import yaml

    from llmrec.base.config import add_options, check_config, resolve_config
    from llmrec.base.errors import ConfigError
    from llmrec.preference.losses import PREFERENCE_LOSSES
    from llmrec.preference.train import TrainSDPOConfig

    assert list(PREFERENCE_LOSSES) == ["sdpo", "dr-sdpo", "beta-sdpo", "alpha-sdpo"]
    parser = argparse.ArgumentParser()
    add_options(parser, TrainSDPOConfig)
    loss_flag = next(a for a in parser._actions if a.dest == "loss")
    assert loss_flag.choices == list(PREFERENCE_LOSSES)
    config_file = tmp_path / "sdpo.yaml"
    config_file.write_text(yaml.safe_dump({"loss": "ipo"}))
    with pytest.raises(ConfigError, match="option 'loss': got 'ipo', expected one of sdpo, dr-sdpo"):
        resolve_config(TrainSDPOConfig, {}, config_file)
    with pytest.raises(ConfigError, match="option --loss: got 'ipo'"):  # the Python API checks it too
        check_config(TrainSDPOConfig(loss="ipo"))


def test_an_unknown_loss_name_is_refused_not_silently_another_loss():
    from llmrec.preference.losses import PreferenceSettings

    with pytest.raises(ValueError, match="loss 'alpha_sdpo': expected one of sdpo, dr-sdpo, beta-sdpo, alpha-sdpo"):
        PreferenceSettings("alpha_sdpo")


def test_each_registered_name_computes_its_own_loss():
    from llmrec.preference.losses import PREFERENCE_LOSSES, PreferenceInputs, PreferenceSettings

    pc, pr, rc, rr = random_inputs(6, 3, seed=3)
    x = PreferenceInputs(torch.cat([pc[:, None], pr], 1), torch.cat([rc[:, None], rr], 1),
                         weights=t([1.0, 2.0, 0.5, 1.0, 0.0, 1.5]),
                         answer_lengths=torch.tensor([[3, 4, 2, 5]] * 6))
    s = PreferenceSettings(beta=1.5, beta_prime=0.7, beta_rho=0.0, beta_alpha=0.4, alpha=0.1, gamma_beta_ratio=0.3)
    sdpo = sdpo_loss(pc, pr, rc, rr, beta=1.5)
    beta_out, beta_state = beta_dpo_loss(pc, pr, rc, rr, state=MarginStats(), beta=1.5, a=0.4, rho=0.0)
    alpha_out, alpha_state = alpha_dpo_loss(pc, pr, rc, rr, torch.tensor([3] * 6), torch.tensor([[4, 2, 5]] * 6),
                                            state=MarginStats(), beta=1.5, gamma_beta_ratio=0.3, alpha=0.1)
    expected = {"sdpo": (weighted_mean(sdpo.losses, x.weights), MarginStats()),
                "dr-sdpo": (robust_aggregate(sdpo.losses, 0.7, x.weights), MarginStats()),
                "beta-sdpo": (weighted_mean(beta_out.losses, x.weights), beta_state),
                "alpha-sdpo": (weighted_mean(alpha_out.losses, x.weights), alpha_state)}
    assert set(expected) == set(PREFERENCE_LOSSES)
    values = {}
    for name, objective in PREFERENCE_LOSSES.items():
        loss, out, state = objective(x, s, MarginStats(), torch.Generator().manual_seed(0))
        torch.testing.assert_close(loss, expected[name][0], msg=name)
        assert state == expected[name][1], name
        values[name] = float(loss)
    assert len(set(values.values())) == 4  # four different losses: no name silently falls back to another
    with pytest.raises(ValueError, match="alpha-sdpo needs the answers' lengths"):
        PREFERENCE_LOSSES["alpha-sdpo"](PreferenceInputs(x.policy, x.reference), s, MarginStats(), None)
