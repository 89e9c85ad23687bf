"""The LightningModule of the preference stage: S-DPO and its variants on the SFT recommender (docs/design.md §6).

Per training batch: ONE forward pass of prompt + packed answers (`sequence_logprobs`) gives the policy's summed
log-probs of the chosen answer and the N negatives [B, 1+N]; with the stored reference log-probs they enter the
loss the registry `PREFERENCE_LOSSES` of `llmrec.preference.losses` holds under `settings.loss`, whose per-sample
losses are combined with the per-sample weights (`weighted_mean`, or Dr. DPO's `robust_aggregate`). Logged per step: `train/loss`, `rewards/chosen`,
`rewards/rejected`, `rewards/margins`, `rewards/accuracies` (chosen beats every negative) and the variants'
scalars (`train/beta`, ...). Validation (score-mode `valid/hr@1`), the optimiser and the warmup + cosine
schedule are SFT's (`LLMRecModule`). Prompts are always hybrid (for a hybrid model): SFT's curriculum ends there
and validation, test and serving use them; the slot tokens' own embedding rows therefore get no gradient here.

The policy is the loaded SFT model made trainable again exactly as `build_recommender` made it (`set_trainable`),
with dropout switched off (`disable_dropout`): as TRL's DPOTrainer does by default (S-DPO's trainer is built on
it), so that the policy equals the reference at step 0 and the implicit rewards start at exactly 0.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from llmrec.llm.hybrid import HybridLM
from llmrec.llm.logprobs import sequence_logprobs
from llmrec.llm.module import LLMRecModule
from llmrec.preference.datamodule import PreferenceBatch
from llmrec.preference.losses import (
    PREFERENCE_LOSSES,
    MarginStats,
    PreferenceInputs,
    PreferenceLoss,
    PreferenceSettings,
    reward_metrics,
)

__all__ = ["PreferenceModule", "PreferenceSettings", "disable_dropout", "set_trainable"]


def set_trainable(lm: HybridLM, finetune: str) -> HybridLM:
    """Make a loaded recommender (`load_recommender(..., merge_adapters=False)` returns it frozen where peft froze it;
    merged adapters cannot be trained) trainable exactly as
    `llmrec.llm.train.build_recommender` made it: every LM weight (`full`), or the LoRA adapters and the slot
    tokens' trainable rows (`lora`; base weights frozen), plus the projector. The encoder stays frozen."""
    if finetune == "full":
        lm.model.requires_grad_(True)
    elif finetune == "lora":
        lm.model.requires_grad_(False)
        adapters = list(getattr(lm.model, "peft_config", {}))
        if not adapters:
            raise ValueError("a LoRA checkpoint's model has no peft adapter: its adapters were merged at load; load "
                             "it with load_recommender(..., merge_adapters=False) to train them")
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

    @property
    def may_skip_parameters(self) -> bool:
        """Every step scores hybrid prompts: the projector and the LM's trained weights always get a gradient."""
        return False

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
        # [B, 1+N] answer tokens (alpha-sdpo's length average; a lookup in the builder's cached table)
        lengths = self.lm.builder.answer_table(batch.items.device)[1][batch.items]
        inputs = PreferenceInputs(policy, batch.reference.to(policy.dtype), batch.weights, lengths)
        loss, out, self.margin_state = PREFERENCE_LOSSES[self.settings.loss](inputs, self.settings, self.margin_state,
                                                                             self._filter)
        return loss, out

    def training_step(self, batch: PreferenceBatch, batch_idx: int) -> torch.Tensor:
        loss, out = self.preference_loss(batch, self.policy_logprobs(batch))
        bs = batch.items.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name, value in reward_metrics(out).items():
            self.log(name, value, batch_size=bs)
        for name, value in out.extra.items():
            self.log(f"train/{name}", float(value), batch_size=bs)
        return loss
