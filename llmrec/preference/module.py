"""The LightningModule of the preference stage: S-DPO and its variants on the SFT recommender (docs/design.md §6).

Per training batch: ONE forward pass of prompt + packed answers (`sequence_logprobs`) gives the policy's summed
log-probs of the chosen answer and the N negatives [B, 1+N]; with the stored reference log-probs they enter one
of the pure losses of `llmrec.preference.losses`, whose per-sample losses are combined with the per-sample
weights (`weighted_mean`, or Dr. DPO's `robust_aggregate`). Logged per step: `train/loss`, `rewards/chosen`,
`rewards/rejected`, `rewards/margins`, `rewards/accuracies` (chosen beats every negative) and the variants'
scalars (`train/beta`, ...). Validation (score-mode `valid/hr@1`), the optimiser and the warmup + cosine
schedule are SFT's (`LLMRecModule`). Prompts are always hybrid (for a hybrid model): SFT's curriculum ends there
and validation, test and serving use them; the slot tokens' own embedding rows therefore get no gradient here.

The policy is the loaded SFT model made trainable again exactly as `build_recommender` made it (`set_trainable`),
with dropout switched off (`disable_dropout`): as TRL's DPOTrainer does by default (S-DPO's trainer is built on
it), so that the policy equals the reference at step 0 and the implicit rewards start at exactly 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from llmrec.llm.hybrid import HybridLM
from llmrec.llm.logprobs import sequence_logprobs
from llmrec.llm.module import LLMRecModule
from llmrec.preference.datamodule import PreferenceBatch
from llmrec.preference.losses import (
    MarginStats,
    PreferenceLoss,
    alpha_dpo_loss,
    beta_dpo_loss,
    reward_metrics,
    robust_aggregate,
    sdpo_loss,
    weighted_mean,
)

LossName = Literal["sdpo", "dr-sdpo", "beta-sdpo", "alpha-sdpo"]
LOSSES: tuple[str, ...] = ("sdpo", "dr-sdpo", "beta-sdpo", "alpha-sdpo")


@dataclass(frozen=True)
class PreferenceSettings:
    """Which loss and its hyper-parameters (the options of `llmrec train-sdpo`)."""

    loss: LossName = "sdpo"
    beta: float = 1.0
    beta_prime: float = 1.0        # Dr. S-DPO's beta'
    beta_rho: float = 0.2          # beta-S-DPO: share of a batch the filter drops
    beta_alpha: float = 0.6        # beta-S-DPO: a, how strongly beta follows the batch's mean margin
    alpha: float = 0.2             # alpha-S-DPO: weight of the adaptive margin (0 = SimPO)
    gamma_beta_ratio: float = 0.6  # alpha-S-DPO: gamma / beta

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss {self.loss!r}: expected one of {', '.join(LOSSES)}")


def set_trainable(lm: HybridLM, finetune: str) -> HybridLM:
    """Make a loaded recommender (`load_recommender` returns it frozen where peft froze it) trainable exactly as
    `llmrec.llm.train.build_recommender` made it: every LM weight (`full`), or the LoRA adapters and the slot
    tokens' trainable rows (`lora`; base weights frozen), plus the projector. The encoder stays frozen."""
    if finetune == "full":
        lm.model.requires_grad_(True)
    elif finetune == "lora":
        lm.model.requires_grad_(False)
        adapters = list(getattr(lm.model, "peft_config", {}))
        if not adapters:
            raise ValueError("a LoRA checkpoint's model has no peft adapter")
        if hasattr(lm.model, "set_requires_grad"):
            lm.model.set_requires_grad(adapters, requires_grad=True)
        else:  # peft releases before `set_requires_grad`: the names peft gives adapter and trainable-token tensors
            for name, p in lm.model.named_parameters():
                if "lora_" in name or "trainable_tokens_delta" in name:
                    p.requires_grad_(True)
    else:
        raise ValueError(f"finetune {finetune!r}: expected full or lora")
    if lm.projector is not None:
        lm.projector.requires_grad_(True)
    return lm


def disable_dropout(module: nn.Module) -> int:
    """Set p = 0 in every `nn.Dropout` of `module` (LoRA's dropout included); returns how many were changed."""
    changed = 0
    for m in module.modules():
        if isinstance(m, nn.Dropout) and m.p != 0:
            m.p = 0.0
            changed += 1
    return changed


class PreferenceModule(LLMRecModule):
    """Wires a policy `HybridLM` to a preference loss; validation and optimiser are SFT's.

    Args:
        lm: the policy (the SFT model, made trainable with `set_trainable`).
        settings: the loss and its hyper-parameters.
        lr, weight_decay, warmup_ratio: AdamW and the warmup + cosine schedule (projector at the same lr).
        seed: seeds beta-DPO's filter draws.
    """

    def __init__(self, lm: HybridLM, settings: PreferenceSettings, lr: float = 1e-4, weight_decay: float = 0.0,
                 warmup_ratio: float = 0.05, seed: int = 0):
        super().__init__(lm, lr, None, weight_decay, warmup_ratio, seed)
        self.settings = settings
        self.margin_state = MarginStats()  # beta-DPO's (M0, s) or alpha-DPO's (mu, s), updated every step
        self._filter = torch.Generator().manual_seed(seed)

    def resume_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """SFT's state (the coin) plus the variants' running margin statistics and beta-DPO's filter generator."""
        values, tensors = super().resume_state()
        margins = {k: float(v) for k, v in asdict(self.margin_state).items()}
        return {**values, "margin_state": margins}, {**tensors, "filter": self._filter.get_state()}

    def load_resume_state(self, values: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().load_resume_state(values, tensors)
        self.margin_state = MarginStats(**values["margin_state"])
        self._filter.set_state(tensors["filter"])

    def policy_logprobs(self, batch: PreferenceBatch) -> torch.Tensor:
        """[B, 1+N] the policy's summed answer log-probs of `batch.items`, one prompt pass, with gradients."""
        return sequence_logprobs(self.lm, batch.prompts, batch.items, hybrid=True)

    def preference_loss(self, batch: PreferenceBatch, policy: torch.Tensor) -> tuple[torch.Tensor, PreferenceLoss]:
        """(batch loss, per-sample output) from the policy log-probs [B, 1+N]; updates the margin state."""
        s = self.settings
        ref = batch.reference.to(policy.dtype)
        args = (policy[:, 0], policy[:, 1:], ref[:, 0], ref[:, 1:])
        weights = batch.weights
        if s.loss in ("sdpo", "dr-sdpo"):
            out = sdpo_loss(*args, beta=s.beta)
        elif s.loss == "beta-sdpo":
            out, self.margin_state = beta_dpo_loss(*args, state=self.margin_state, beta=s.beta, a=s.beta_alpha,
                                                   rho=s.beta_rho, generator=self._filter)
        else:
            lengths = self.lm.builder.answer_table(batch.items.device)[1][batch.items]  # [B, 1+N] answer tokens
            out, self.margin_state = alpha_dpo_loss(*args, lengths[:, 0], lengths[:, 1:], state=self.margin_state,
                                                    beta=s.beta, gamma_beta_ratio=s.gamma_beta_ratio, alpha=s.alpha)
        if s.loss == "dr-sdpo":
            return robust_aggregate(out.losses, s.beta_prime, weights, out.kept), out
        return weighted_mean(out.losses, weights, out.kept), out

    def training_step(self, batch: PreferenceBatch, batch_idx: int) -> torch.Tensor:
        loss, out = self.preference_loss(batch, self.policy_logprobs(batch))
        bs = batch.items.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name, value in reward_metrics(out).items():
            self.log(name, value, batch_size=bs)
        for name, value in out.extra.items():
            self.log(f"train/{name}", float(value), batch_size=bs)
        return loss
