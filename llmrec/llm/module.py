"""The LightningModule of the LLM stage: wires `HybridLM` to optimisation, the curriculum and validation.

Per training batch a seeded coin with probability `hybrid_probability` (set by `CurriculumCallback`) picks a
hybrid or a text-only prompt; a text-only batch never calls the projector, so its gradients stay None and
AdamW skips it (no weight decay either). Several processes (DDP): every rank holds the same seeded coin and
draws once per training batch, so all ranks make the same choice at every step; the module says that the
projector may go unused (`may_skip_parameters`), so DDP searches for unused parameters, and a projector unused
on every rank keeps a None gradient there too (exactly as one process: no zero-gradient step, no weight decay).
Validation ranks each rank's share and gathers the ranks in sample order before computing the metrics, which
are then those of one process on every rank. A batch's per-sample `weights` (fairness reweighting) multiply each
sample's loss. Validation ranks the valid candidates in `score` mode with hybrid prompts and logs `valid/hr@1`;
`llmrec.training.keep_best.KeepBest` keeps the best round's trainable weights (choice on VALID, never on test).
`resume_state` / `load_resume_state` hand the coin's state to `llmrec.training.resume` (resumable training).
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch

from llmrec.evaluation.metrics import hit_ratio_at_k, ndcg_at_k, target_ranks
from llmrec.llm.hybrid import HybridLM, PromptBatch
from llmrec.llm.ranking import score_candidates
from llmrec.training.distributed import gather_in_order, positions_of, record


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """LR multiplier: linear warmup over `warmup` steps, then cosine decay to `floor` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


class LLMRecModule(pl.LightningModule):
    def __init__(self, lm: HybridLM, lr: float = 5e-4, projector_lr: float | None = None,
                 weight_decay: float = 0.01, warmup_ratio: float = 0.05, seed: int = 0):
        super().__init__()
        self.lm = lm
        self.lr, self.projector_lr, self.weight_decay, self.warmup_ratio = lr, projector_lr, weight_decay, warmup_ratio
        self.hybrid_probability = 1.0
        self._coin = torch.Generator().manual_seed(seed)
        self._val_ranks: list[torch.Tensor] = []

    def resume_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON values, tensors) a resumed run needs beyond weights and optimiser: the curriculum coin's state."""
        return {"hybrid_probability": self.hybrid_probability}, {"coin": self._coin.get_state()}

    def load_resume_state(self, values: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.hybrid_probability = float(values["hybrid_probability"])
        self._coin.set_state(tensors["coin"])

    @property
    def may_skip_parameters(self) -> bool:
        """Whether a training step may leave trainable parameters without a gradient: a text-only curriculum batch
        does not call the projector (read by `llmrec.training.trainer.fit_keeping_best`)."""
        return self.lm.uses_slots

    def trainable_named_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.lm.named_parameters() if p.requires_grad}

    # ------------------------------------------------------------------ train
    def training_step(self, batch: PromptBatch, batch_idx: int) -> torch.Tensor:
        hybrid = self.lm.uses_slots and float(torch.rand(1, generator=self._coin)) < self.hybrid_probability
        record("coin", step=int(self.global_step), batch=int(batch_idx), hybrid=bool(hybrid),
               probability=float(self.hybrid_probability))
        loss = self.lm.loss(batch, hybrid=hybrid, weights=batch.weights)
        bs = batch.input_ids.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/hybrid", float(hybrid), batch_size=bs)
        return loss

    # ------------------------------------------------------------------ valid
    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        scores = score_candidates(self.lm, batch, hybrid=True)
        self._val_ranks.append(target_ranks(scores, batch.target_index).cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._val_ranks:
            return
        ranks = torch.cat(self._val_ranks)
        self._val_ranks = []
        ranks = self.gather_valid(ranks)
        self.log("valid/hr@1", hit_ratio_at_k(ranks, 1), prog_bar=True)
        self.log("valid/ndcg@5", ndcg_at_k(ranks, 5))

    def gather_valid(self, ranks: torch.Tensor) -> torch.Tensor:
        """[N] target ranks of all valid samples in sample order, from this rank's share [n] (several processes:
        every rank calls this and gets the same result); one process: `ranks` as they are."""
        if self._trainer is None or self.trainer.world_size == 1:
            return ranks
        positions, total = positions_of(self.trainer.val_dataloaders)
        return gather_in_order(self, ranks, positions, total)

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self):
        params = self.trainable_named_parameters()
        proj = [p for n, p in params.items() if n.startswith("projector.")]
        rest = [p for n, p in params.items() if not n.startswith("projector.")]
        groups = [{"params": rest, "lr": self.lr}]
        if proj:
            groups.append({"params": proj, "lr": self.projector_lr or self.lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.warmup_ratio * total)
        record("schedule", total=total, warmup=warmup)  # optimiser steps: each rank's batches / accumulation
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup, 0.05))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
