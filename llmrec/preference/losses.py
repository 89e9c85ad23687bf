"""Losses of the preference stage: DPO, S-DPO and its robust / dynamic / adaptive variants (docs/design.md §6).

Pure torch functions, no model and no Lightning. Every input is a log-probability SUMMED over an answer's tokens
(title + terminator, prompt masked): for prompt x, the chosen answer y_w and N negatives y_1..y_N,
`policy_*` = log pi_theta(y|x) and `ref_*` = log pi_ref(y|x) (the frozen SFT model). h(y) = policy - ref.
Shapes: B samples, N negatives per sample; `*_chosen` is [B], `*_rejected` is [B, N] ([B] for pairwise losses).

`PREFERENCE_LOSSES` maps each `llmrec train-sdpo --loss` name to the one function that computes it; the command's
choices and the training module's dispatch both come from it, so a name cannot be accepted without a loss behind it.

Each loss returns a `PreferenceLoss` holding PER-SAMPLE losses [B] and detached rewards for logging; the batch
loss is `weighted_mean(out.losses, weights, out.kept)` (per-sample fairness weights of docs/design.md §7 multiply each
sample's loss), or `robust_aggregate(...)` for Dr. DPO. beta-DPO and alpha-DPO keep running statistics of the
margins: they take a `MarginStats` and return the updated one instead of mutating hidden state.

References:
- `dpo_loss`: Rafailov et al., NeurIPS 2023, "Direct Preference Optimization: Your Language Model is Secretly a
  Reward Model".
- `sdpo_loss`: Chen et al., NeurIPS 2024, "On Softmax Direct Preference Optimization for Recommendation".
- `robust_aggregate`: Wu et al. 2024, "Towards Robust Alignment of Language Models: Distributionally Robustifying
  Direct Preference Optimization" (Dr. DPO).
- `beta_dpo_loss`: Wu et al., NeurIPS 2024, "beta-DPO: Direct Preference Optimization with Dynamic beta".
- `alpha_dpo_loss`: Wu et al. 2024, "alpha-DPO: Adaptive Reward Margin is What Direct Preference Optimization Needs".

The multi-negative forms of Dr. DPO (aggregating S-DPO losses), beta-DPO and alpha-DPO are this project's
generalisations (the authors define pairwise forms only); with N = 1 each equals its pairwise form.

What differs from the authors' code (github.com/chenyuxin1999/S-DPO, junkangwu/Dr_DPO, junkangwu/beta-DPO,
junkangwu/alpha-DPO):
- S-DPO: log(1 + sum_k exp(.)) is computed as softplus(logsumexp(.)); the authors exponentiate first, which
  overflows once beta * margin exceeds ~88 in float32.
- Dr. DPO: -beta' * log(mean exp(-L/beta')) is computed with logsumexp in float64; the authors' direct form
  underflows to log(0) (an infinite loss) once every L_i / beta' of a batch exceeds ~100 in float32, and loses
  all precision for large beta'. Per-sample weights are our extension (see `robust_aggregate`).
- beta-DPO: as the authors, M0 and s start at 0, move with momentum 0.9 using the batch mean and the unbiased
  (Bessel) std, and are updated BEFORE use; the dynamic beta uses the updated M0 and is not differentiated;
  dropped samples count neither in the numerator nor the denominator of the batch mean; rewards use beta0.
  Differences: (1) the filter draws int(B * (1 - rho)) samples with Gumbel-top-k on log-weights, which is the
  same distribution as the authors' torch.multinomial(weights, k, replacement=False) but cannot fail when the
  weights underflow to 0 (torch.multinomial raises when fewer than k weights are positive, and s = 0 at the first
  step gives 0/0); s is floored at 1e-8 where it divides; (2) at least one sample is kept (int(B*(1-rho)) can be 0
  for tiny batches, where the authors' mean over no sample is NaN); (3) a batch of one sample contributes std 0
  (torch.std gives NaN and would poison the running state for good); (4) statistics and filtering use the local
  batch (the authors all-gather across devices); (5) the authors also update the statistics on evaluation
  batches: here the caller keeps or discards the returned state.
- alpha-DPO: as the authors (`ln: true`), log-probs are averaged over answer tokens; z is normalised with the
  RUNNING mean and std of d (momentum 0.9, start at 0, unbiased std, updated before use), not per batch; the whole
  margin alpha * z + gamma / beta is detached; rewards for logging are the authors' beta * (a_pi - alpha *
  (a_pi - a_ref)). Differences: s is floored at 1e-8 (the authors divide by s = 0, giving NaN, when every d of the
  first batch is equal, e.g. a LoRA policy that still equals the reference); local batch, not all-gathered; no
  label smoothing (the authors' default is 0); the multi-negative form takes mu and s over all B * N values d_ik.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

_MIN_SCALE = 1e-8  # floor on a running std where it divides (it is exactly 0 while the policy equals the reference)
_MIN_BETA = 1e-3  # beta-DPO's clamp on the dynamic beta, as in the authors' code


@dataclass(frozen=True)
class PreferenceLoss:
    """Output of every loss here: per-sample losses plus detached rewards for logging."""

    losses: torch.Tensor
    """[B] per-sample losses; 0, with no gradient, for samples a filter dropped (see `kept`)."""
    chosen_rewards: torch.Tensor
    """[B] implicit reward of the chosen answer (beta * h(y_w) unless the loss's docstring says otherwise)."""
    rejected_rewards: torch.Tensor
    """Implicit rewards of the negatives, shaped like the rejected inputs: [B, N], or [B] for pairwise inputs."""
    kept: torch.Tensor | None = None
    """[B] bool, the samples that count in the batch loss (beta-DPO's filter); None means all of them."""
    extra: dict[str, float] = field(default_factory=dict)
    """Scalars worth logging, e.g. the beta actually used."""


@dataclass(frozen=True)
class MarginStats:
    """Running mean and std of a margin, as exponential moving averages (beta-DPO's M0 and s, alpha-DPO's mu and s).

    The authors of both papers start at mean = std = 0 with momentum 0.9 and no bias correction, so the first
    batches see a small s; pass another starting state to change that.
    """

    mean: float = 0.0
    std: float = 0.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"MarginStats.momentum must be in [0, 1], got {self.momentum}")
        if not self.std >= 0.0:
            raise ValueError(f"MarginStats.std must be >= 0, got {self.std}")

    def updated(self, values: torch.Tensor) -> MarginStats:
        """State after one batch of margins `values` (any shape, detached).

        mean <- m * mean + (1 - m) * mean(values); std <- m * std + (1 - m) * std(values), where std(values) is the
        unbiased sample std (torch.std, as the authors) and a single value contributes 0 instead of NaN.
        """
        v = values.detach().double().flatten()
        if v.numel() == 0:
            raise ValueError("MarginStats.updated needs at least one margin, got an empty tensor")
        batch_mean = float(v.mean())
        batch_std = float(v.std()) if v.numel() > 1 else 0.0
        m = self.momentum
        return replace(self, mean=m * self.mean + (1 - m) * batch_mean, std=m * self.std + (1 - m) * batch_std)


BetaDPOState = MarginStats
"""beta-DPO's state: `mean` is the threshold M0, `std` the scale s."""
AlphaDPOState = MarginStats
"""alpha-DPO's state: running mean mu and std s of d."""


# ---------------------------------------------------------------------------------------------------- checks


def _check_inputs(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                  ref_rejected: torch.Tensor, rejected_dims: tuple[int, ...]) -> None:
    """Raise ValueError unless chosen inputs are [B], rejected ones [B] or [B, N] as allowed, ref shaped as policy."""
    if policy_chosen.dim() != 1 or policy_chosen.shape[0] == 0:
        raise ValueError(f"policy_chosen must have shape [B] with B >= 1, got {tuple(policy_chosen.shape)}")
    B = policy_chosen.shape[0]
    if ref_chosen.shape != policy_chosen.shape:
        raise ValueError(f"ref_chosen must have the shape of policy_chosen {tuple(policy_chosen.shape)}, "
                         f"got {tuple(ref_chosen.shape)}")
    dims = policy_rejected.dim()
    if dims not in rejected_dims or policy_rejected.shape[0] != B or (dims == 2 and policy_rejected.shape[1] == 0):
        expected = " or ".join({1: f"[{B}]", 2: f"[{B}, N] with N >= 1"}[d] for d in rejected_dims)
        raise ValueError(f"policy_rejected must have shape {expected}, got {tuple(policy_rejected.shape)}")
    if ref_rejected.shape != policy_rejected.shape:
        raise ValueError(f"ref_rejected must have the shape of policy_rejected {tuple(policy_rejected.shape)}, "
                         f"got {tuple(ref_rejected.shape)}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_per_sample(losses: torch.Tensor, weights: torch.Tensor | None, kept: torch.Tensor | None) -> None:
    if losses.dim() != 1 or losses.shape[0] == 0:
        raise ValueError(f"losses must have shape [B] with B >= 1, got {tuple(losses.shape)}")
    if weights is not None and weights.shape != losses.shape:
        raise ValueError(f"weights must have the shape of losses {tuple(losses.shape)}, got {tuple(weights.shape)}")
    if kept is not None and (kept.shape != losses.shape or kept.dtype != torch.bool):
        raise ValueError(f"kept must be a bool tensor of shape {tuple(losses.shape)}, "
                         f"got {kept.dtype} {tuple(kept.shape)}")


def _softmax_preference(neg_minus_chosen: torch.Tensor) -> torch.Tensor:
    """[B, N] scaled rewards of each negative minus the chosen one -> [B] log(1 + sum_k exp(.)), never overflowing.

    logsumexp subtracts the row maximum before exponentiating; softplus(x) = log(1 + e^x) returns x itself for
    large x. With N = 1 logsumexp returns its single input unchanged, so this is -log sigmoid of the pairwise margin.
    """
    return F.softplus(torch.logsumexp(neg_minus_chosen, dim=-1))


# ---------------------------------------------------------------------------------------------------- losses


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 1.0) -> PreferenceLoss:
    """Pairwise DPO (Rafailov et al. 2023): L_i = -log sigmoid(beta * (h(y_w) - h(y_l))).

    Args:
        policy_chosen, ref_chosen, policy_rejected, ref_rejected: [B] summed log-probs (one negative per sample).
        beta: strength of the implicit KL constraint (S-DPO's authors use 1).
    Returns:
        losses [B]; chosen_rewards = beta * h(y_w) [B]; rejected_rewards = beta * h(y_l) [B]; extra["beta"].
    """
    _check_inputs(policy_chosen, policy_rejected, ref_chosen, ref_rejected, rejected_dims=(1,))
    _check_positive("beta", beta)
    h_chosen = policy_chosen - ref_chosen  # [B]
    h_rejected = policy_rejected - ref_rejected  # [B]
    losses = -F.logsigmoid(beta * (h_chosen - h_rejected))
    return PreferenceLoss(losses, (beta * h_chosen).detach(), (beta * h_rejected).detach(),
                          extra={"beta": float(beta)})


def sdpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
              ref_rejected: torch.Tensor, beta: float = 1.0) -> PreferenceLoss:
    """S-DPO (Chen et al., NeurIPS 2024): L_i = log(1 + sum_k exp(beta * (h(y_k) - h(y_w)))).

    A softmax over the chosen answer and N negatives (Plackett-Luce with one winner); N = 1 is DPO. Invariant to
    the order of the negatives; finite for any finite input (computed as softplus(logsumexp(.))).

    Args:
        policy_chosen, ref_chosen: [B] summed log-probs of the chosen answer.
        policy_rejected, ref_rejected: [B, N] summed log-probs of the negatives.
        beta: the authors' run uses beta = 1 with N = 3.
    Returns:
        losses [B]; chosen_rewards = beta * h(y_w) [B]; rejected_rewards = beta * h(y_k) [B, N]; extra["beta"].
    """
    _check_inputs(policy_chosen, policy_rejected, ref_chosen, ref_rejected, rejected_dims=(2,))
    _check_positive("beta", beta)
    h_chosen = policy_chosen - ref_chosen  # [B]
    h_rejected = policy_rejected - ref_rejected  # [B, N]
    losses = _softmax_preference(beta * (h_rejected - h_chosen[:, None]))
    return PreferenceLoss(losses, (beta * h_chosen).detach(), (beta * h_rejected).detach(),
                          extra={"beta": float(beta)})


def beta_guided_filter(margins: torch.Tensor, threshold: float, scale: float, rho: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """beta-DPO's data filter: which of B samples to keep, drawn without replacement.

    Keeps k = max(1, int(B * (1 - rho))) samples, drawn without replacement with probability proportional to
    exp(-0.5 * ((M_i - threshold) / scale)^2), i.e. samples whose margin is far from the running threshold
    (likely outliers or mislabelled pairs) are rarely kept. Drawn by Gumbel-top-k on the log-weights: the same
    distribution as torch.multinomial(weights, k, replacement=False), but it cannot fail when weights underflow.

    Args:
        margins: [B] margins M_i (detached).
        threshold, scale: running M0 and s (scale is floored at 1e-8).
        rho: share of the batch to drop, in [0, 1).
        generator: RNG for the draw (None = torch's default generator); the draw runs on its device.
    Returns:
        [B] bool mask on the device of `margins`.
    """
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"rho (the share of samples beta-DPO drops) must be in [0, 1), got {rho}")
    B = margins.numel()
    k = max(1, int(B * (1 - rho)))
    if k >= B:
        return torch.ones(B, dtype=torch.bool, device=margins.device)
    device = generator.device if generator is not None else torch.device("cpu")
    z = (margins.detach().to(device=device, dtype=torch.float64).flatten() - threshold) / max(scale, _MIN_SCALE)
    log_weights = -0.5 * z * z
    # Shifting by the maximum changes no probability but keeps the Gumbel noise from vanishing in rounding when
    # every log-weight is hugely negative (equal margins far from the threshold must still be drawn uniformly).
    log_weights = log_weights - log_weights.max()
    uniform = torch.rand(B, generator=generator, dtype=torch.float64, device=device)
    keys = log_weights - torch.log(-torch.log(uniform))  # + Gumbel(0, 1) noise
    kept = torch.zeros(B, dtype=torch.bool, device=device)
    kept[torch.topk(keys, k).indices] = True
    return kept.to(margins.device)


def beta_dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                  ref_rejected: torch.Tensor, state: MarginStats, beta: float = 1.0, a: float = 0.6,
                  rho: float = 0.2, kept: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> tuple[PreferenceLoss, MarginStats]:
    """beta-DPO (Wu et al., NeurIPS 2024): DPO / S-DPO with a per-batch dynamic beta and beta-guided filtering.

    1. margins M_i = h(y_w) - h(y_l) (no beta factor); with N negatives M_i = mean_k (h(y_w) - h(y_k)).
    2. state <- state.updated(M): M0 <- m*M0 + (1-m)*mean(M), s <- m*s + (1-m)*std(M), BEFORE use.
    3. keep int(B * (1 - rho)) samples (`beta_guided_filter`), unless `kept` is given.
    4. beta_b = max(beta0 * (1 + a * (mean of kept M - M0)), 1e-3), a constant (not differentiated).
    5. L_i = -log sigmoid(beta_b * M_i) for pairwise inputs, or S-DPO's log(1 + sum_k exp(beta_b * (h(y_k) - h(y_w))))
       for [B, N] inputs; dropped samples get loss 0 and no gradient. The batch loss is
       `weighted_mean(out.losses, weights, out.kept)`, the mean over kept samples as in the authors' code.

    Deterministic given `state` and `kept`. Authors' defaults: rho = 0.2, momentum 0.9, a = 0.6 in their example.

    Args:
        policy_chosen, ref_chosen: [B]; policy_rejected, ref_rejected: [B] (pairwise) or [B, N].
        state: running (M0, s, momentum) before this batch.
        beta: beta0, the base beta (the S-DPO beta).
        a: how strongly beta follows the kept batch's mean margin.
        rho: share of the batch to drop.
        kept: [B] bool mask to use instead of drawing one (tests, or a caller with its own sampling).
        generator: RNG for the draw when `kept` is None (None = torch's default generator).
    Returns:
        (PreferenceLoss with rewards beta0 * h and the mask in `kept`, extra = {"beta": beta_b, "threshold": M0,
        "scale": s, "kept_fraction"}; the updated state).
    """
    _check_inputs(policy_chosen, policy_rejected, ref_chosen, ref_rejected, rejected_dims=(1, 2))
    _check_positive("beta", beta)
    if kept is not None and generator is not None:
        raise ValueError("beta_dpo_loss takes either a kept mask or a generator to draw one, not both")
    h_chosen = policy_chosen - ref_chosen  # [B]
    h_rejected = policy_rejected - ref_rejected  # [B] or [B, N]
    pairwise = h_rejected.dim() == 1
    gaps = h_chosen - h_rejected if pairwise else h_chosen[:, None] - h_rejected  # [B] or [B, N]
    margins = gaps.detach() if pairwise else gaps.detach().mean(dim=1)  # [B]

    state = state.updated(margins)
    B = margins.shape[0]
    if kept is None:
        kept = beta_guided_filter(margins, state.mean, state.std, rho, generator)
    else:
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"rho (the share of samples beta-DPO drops) must be in [0, 1), got {rho}")
        if kept.shape != (B,) or kept.dtype != torch.bool or not bool(kept.any()):
            raise ValueError(f"kept must be a bool tensor of shape ({B},) with at least one True, "
                             f"got {kept.dtype} {tuple(kept.shape)}")
        kept = kept.to(margins.device)
    kept_mean = float(margins[kept].double().mean())
    beta_b = max(beta * (1.0 + a * (kept_mean - state.mean)), _MIN_BETA)

    per_sample = -F.logsigmoid(beta_b * gaps) if pairwise else _softmax_preference(-beta_b * gaps)
    # where (not multiplication by the mask) so a non-finite loss of a dropped sample cannot leak into the batch.
    losses = torch.where(kept, per_sample, torch.zeros_like(per_sample))
    extra = {"beta": beta_b, "threshold": state.mean, "scale": state.std, "kept_fraction": float(kept.sum()) / B}
    out = PreferenceLoss(losses, (beta * h_chosen).detach(), (beta * h_rejected).detach(), kept=kept, extra=extra)
    return out, state


def alpha_dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                   ref_rejected: torch.Tensor, chosen_len: torch.Tensor, rejected_len: torch.Tensor,
                   state: MarginStats, beta: float = 2.5, gamma_beta_ratio: float = 0.6,
                   alpha: float = 0.2) -> tuple[PreferenceLoss, MarginStats]:
    """alpha-DPO (Wu et al. 2024): SimPO's length-normalised reward with an adaptive, reference-informed margin.

    a(y) = log pi(y|x) / |y| (length-AVERAGED log-probs, policy and reference alike);
    u_k = a_pi(y_w) - a_pi(y_k); d_k = u_k - (a_ref(y_w) - a_ref(y_k));
    state <- state.updated(d) (running mu and s, updated BEFORE use); z_k = (d_k - mu) / s;
    pairwise: L_i = -log sigmoid(beta * (u - stopgrad(alpha * z + gamma / beta)));
    N negatives: L_i = log(1 + sum_k exp(-(beta * u_k - gamma - beta * alpha * stopgrad(z_k)))).
    With alpha = 0 it is SimPO (Meng et al., NeurIPS 2024): -log sigmoid(beta * u - gamma), reference-free.

    Defaults are the authors' Llama-3-8B-Instruct config (beta 2.5, gamma/beta 0.6, alpha 0.2); their other configs
    use gamma/beta in 0.15-0.6, alpha in 0.05-0.2, beta 2.5 or 10.

    Args:
        policy_chosen, ref_chosen: [B] SUMMED log-probs of the chosen answer; chosen_len: [B] its token count (>= 1,
            the tokens the sum runs over).
        policy_rejected, ref_rejected, rejected_len: [B] (pairwise) or [B, N], likewise for the negatives.
        state: running (mu, s, momentum) of d before this batch.
        beta, gamma_beta_ratio, alpha: gamma = beta * gamma_beta_ratio is SimPO's target margin.
    Returns:
        (PreferenceLoss with the authors' logging rewards beta * (a_pi(y) - alpha * (a_pi(y) - a_ref(y))),
        extra = {"beta", "gamma", "mean": mu, "scale": s}; the updated state).
    """
    _check_inputs(policy_chosen, policy_rejected, ref_chosen, ref_rejected, rejected_dims=(1, 2))
    _check_positive("beta", beta)
    if chosen_len.shape != policy_chosen.shape or rejected_len.shape != policy_rejected.shape:
        raise ValueError(f"chosen_len / rejected_len must have shapes {tuple(policy_chosen.shape)} / "
                         f"{tuple(policy_rejected.shape)}, got {tuple(chosen_len.shape)} / {tuple(rejected_len.shape)}")
    dtype = policy_chosen.dtype
    avg_chosen = policy_chosen / chosen_len.to(dtype)  # [B]
    avg_rejected = policy_rejected / rejected_len.to(dtype)  # [B] or [B, N]
    ref_avg_chosen = ref_chosen / chosen_len.to(dtype)
    ref_avg_rejected = ref_rejected / rejected_len.to(dtype)
    pairwise = avg_rejected.dim() == 1
    if not pairwise:  # broadcast the chosen answer over the negatives
        avg_chosen, ref_avg_chosen = avg_chosen[:, None], ref_avg_chosen[:, None]
    u = avg_chosen - avg_rejected  # [B] or [B, N]
    d = (u - (ref_avg_chosen - ref_avg_rejected)).detach()

    state = state.updated(d)
    z = (d - state.mean) / max(state.std, _MIN_SCALE)
    margin = alpha * z + gamma_beta_ratio  # built from detached d: the stop-gradient of the papers
    logits = beta * (u - margin)
    losses = -F.logsigmoid(logits) if pairwise else _softmax_preference(-logits)

    chosen_rewards = (beta * (avg_chosen - alpha * (avg_chosen - ref_avg_chosen))).detach().reshape(-1)  # [B]
    rejected_rewards = (beta * (avg_rejected - alpha * (avg_rejected - ref_avg_rejected))).detach()
    extra = {"beta": float(beta), "gamma": float(beta * gamma_beta_ratio), "mean": state.mean, "scale": state.std}
    return PreferenceLoss(losses, chosen_rewards, rejected_rewards, extra=extra), state


# ---------------------------------------------------------------------------------------------------- batch loss


def weighted_mean(losses: torch.Tensor, weights: torch.Tensor | None = None,
                  kept: torch.Tensor | None = None) -> torch.Tensor:
    """Batch loss sum_i kept_i * w_i * L_i / sum_i kept_i: each sample's loss multiplied by its own weight.

    Normalised by the number of (kept) samples, NOT by the sum of the weights: dividing by sum_i w_i would cancel
    the weights in any batch whose samples share one weight (e.g. all from one popularity group), while IFairLRS's
    weights (docs/design.md §7) already average 1 over the training set. So the gradient w.r.t. L_i is w_i / B, and
    weights = None gives the plain mean.

    Args:
        losses: [B] per-sample losses.
        weights: [B] non-negative per-sample weights (constants), or None for 1.
        kept: [B] bool, samples that count (beta-DPO), or None for all.
    Returns:
        scalar tensor.
    """
    _check_per_sample(losses, weights, kept)
    weighted = losses if weights is None else weights.to(losses.dtype) * losses
    if kept is None:
        return weighted.mean()
    kept = kept.to(losses.device)
    return torch.where(kept, weighted, torch.zeros_like(weighted)).sum() / kept.sum().clamp_min(1).to(losses.dtype)


def robust_aggregate(losses: torch.Tensor, beta_prime: float = 1.0, weights: torch.Tensor | None = None,
                     kept: torch.Tensor | None = None) -> torch.Tensor:
    """Dr. DPO's distributionally robust batch loss (Wu et al. 2024): L = -beta' * log(mean_i exp(-L_i / beta')).

    Unweighted: L = -beta' * (logsumexp_i(-L_i / beta') - log B). The gradient weight of sample i is
    softmax_i(-L_i / beta'), so likely-mislabelled pairs (high loss) count less. beta' -> inf gives the mean,
    beta' -> 0 the minimum. Authors' default beta' = 1, over the local batch. Pass S-DPO's losses for Dr. S-DPO.

    With per-sample weights w_i (our extension, so fairness weights still act per sample), the uniform average
    inside the log becomes the w-weighted one, and the result is scaled by the batch's mean weight W / n
    (W = sum_i w_i over the n kept samples) so that the scale matches `weighted_mean`:
        L = (W / n) * (-beta' * log(sum_i w_i exp(-L_i / beta') / W)).
    As beta' -> inf it tends to sum_i w_i L_i / n = weighted_mean(losses, weights, kept); scaling all weights by c
    scales L by c, as for `weighted_mean`. Dropped samples (kept = False) act as weight 0.
    Computed in float64 (the log of a mean of near-1 numbers cancels badly in float32 for large beta').

    Args:
        losses: [B]; beta_prime: beta' > 0; weights: [B] >= 0 with a positive sum over kept samples, or None;
        kept: [B] bool or None.
    Returns:
        scalar tensor in the dtype of `losses`.
    """
    _check_positive("beta_prime", beta_prime)
    _check_per_sample(losses, weights, kept)
    values = losses.double()
    w = torch.ones_like(values) if weights is None else weights.to(values)
    n = float(values.numel())
    if kept is not None:
        kept = kept.to(values.device)
        w = torch.where(kept, w, torch.zeros_like(w))
        n = kept.sum().to(values)
    total = w.sum()
    # where, not + log(0): a masked sample must contribute exactly nothing, even if its loss is not finite.
    scores = torch.where(w > 0, -values / beta_prime + torch.log(w), torch.full_like(values, -math.inf))
    log_mean = torch.logsumexp(scores, dim=0) - torch.log(total)
    return (-beta_prime * log_mean * (total / n)).to(losses.dtype)


def reward_metrics(out: PreferenceLoss) -> dict[str, torch.Tensor]:
    """Logging metrics over the batch (docs/design.md §6), as detached 0-d tensors.

    `rewards/chosen` = mean chosen reward; `rewards/rejected` = mean over all negatives; `rewards/margins` =
    mean of (chosen - mean of the sample's negatives); `rewards/accuracies` = share of samples whose chosen reward
    beats ALL of its negatives.
    """
    chosen = out.chosen_rewards.detach()  # [B]
    rejected = out.rejected_rewards.detach()
    rejected = rejected[:, None] if rejected.dim() == 1 else rejected  # [B, N]
    return {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margins": (chosen - rejected.mean(dim=1)).mean(),
        "rewards/accuracies": (chosen > rejected.max(dim=1).values).float().mean(),
    }


# ---------------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class PreferenceSettings:
    """Which loss (a `PREFERENCE_LOSSES` name) and its hyper-parameters (the options of `llmrec train-sdpo`)."""

    loss: str = "sdpo"
    beta: float = 1.0
    beta_prime: float = 1.0        # Dr. S-DPO's beta'
    beta_rho: float = 0.2          # beta-S-DPO: share of a batch the filter drops
    beta_alpha: float = 0.6        # beta-S-DPO: a, how strongly beta follows the batch's mean margin
    alpha: float = 0.2             # alpha-S-DPO: weight of the adaptive margin (0 = SimPO)
    gamma_beta_ratio: float = 0.6  # alpha-S-DPO: gamma / beta

    def __post_init__(self) -> None:
        if self.loss not in PREFERENCE_LOSSES:
            raise ValueError(f"loss {self.loss!r}: expected one of {', '.join(PREFERENCE_LOSSES)}")


@dataclass(frozen=True)
class PreferenceInputs:
    """One batch as every registered loss takes it (B samples, N negatives, the chosen answer first)."""

    policy: torch.Tensor
    """[B, 1+N] the policy's summed answer log-probs."""
    reference: torch.Tensor
    """[B, 1+N] the reference model's summed answer log-probs."""
    weights: torch.Tensor | None = None
    """[B] per-sample loss weights, or None for 1."""
    answer_lengths: torch.Tensor | None = None
    """[B, 1+N] answer lengths in tokens (alpha-sdpo averages log-probs over them)."""

    def split(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(policy_chosen [B], policy_rejected [B, N], ref_chosen [B], ref_rejected [B, N])."""
        return self.policy[:, 0], self.policy[:, 1:], self.reference[:, 0], self.reference[:, 1:]


PreferenceObjective = Callable[[PreferenceInputs, PreferenceSettings, MarginStats, "torch.Generator | None"],
                               tuple[torch.Tensor, PreferenceLoss, MarginStats]]
"""A registered loss: (inputs, settings, running margin state, filter generator) -> (batch loss, per-sample output,
the margin state after this batch). Losses without running statistics return the state unchanged."""


def sdpo_objective(x: PreferenceInputs, s: PreferenceSettings, state: MarginStats,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, PreferenceLoss, MarginStats]:
    """`sdpo`: S-DPO's per-sample losses (`sdpo_loss`; DPO with one negative), their weighted mean."""
    out = sdpo_loss(*x.split(), beta=s.beta)
    return weighted_mean(out.losses, x.weights, out.kept), out, state


def dr_sdpo_objective(x: PreferenceInputs, s: PreferenceSettings, state: MarginStats,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, PreferenceLoss, MarginStats]:
    """`dr-sdpo`: S-DPO's per-sample losses, aggregated by Dr. DPO's `robust_aggregate` (beta')."""
    out = sdpo_loss(*x.split(), beta=s.beta)
    return robust_aggregate(out.losses, s.beta_prime, x.weights, out.kept), out, state


def beta_sdpo_objective(x: PreferenceInputs, s: PreferenceSettings, state: MarginStats,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, PreferenceLoss, MarginStats]:
    """`beta-sdpo`: `beta_dpo_loss` (dynamic beta, filter drawn with `generator`), weighted mean over kept samples."""
    out, state = beta_dpo_loss(*x.split(), state=state, beta=s.beta, a=s.beta_alpha, rho=s.beta_rho,
                               generator=generator)
    return weighted_mean(out.losses, x.weights, out.kept), out, state


def alpha_sdpo_objective(x: PreferenceInputs, s: PreferenceSettings, state: MarginStats,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, PreferenceLoss, MarginStats]:
    """`alpha-sdpo`: `alpha_dpo_loss` (length-averaged rewards, adaptive margin), weighted mean."""
    if x.answer_lengths is None:
        raise ValueError("alpha-sdpo needs the answers' lengths (PreferenceInputs.answer_lengths)")
    out, state = alpha_dpo_loss(*x.split(), x.answer_lengths[:, 0], x.answer_lengths[:, 1:], state=state,
                                beta=s.beta, gamma_beta_ratio=s.gamma_beta_ratio, alpha=s.alpha)
    return weighted_mean(out.losses, x.weights, out.kept), out, state


PREFERENCE_LOSSES: dict[str, PreferenceObjective] = {
    "sdpo": sdpo_objective,
    "dr-sdpo": dr_sdpo_objective,
    "beta-sdpo": beta_sdpo_objective,
    "alpha-sdpo": alpha_sdpo_objective,
}
"""`llmrec train-sdpo --loss NAME` -> its loss; the order is the order of the command's choices."""
