"""`EncoderModule`: wires any trainable `SequentialEncoder` to Adam, a loss and validation metrics.

The encoder itself stays a pure `nn.Module`; this module only optimises it, logs `train/loss` and the
`valid/...` metrics; the best validation epoch's weights are kept by the shared
`llmrec.training.keep_best.KeepBest` callback (chosen on the VALID metric only; nothing is pickled). Several
processes: each rank ranks its share of the valid samples and the ranks are gathered in sample order, so the
metrics (and the keep-best and early-stopping decisions) are those of one process, on every rank.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch

from llmrec.encoders.base import SequentialEncoder
from llmrec.encoders.evaluate import (
    EvalSet,
    gather_ranks,
    metrics_from_ranks,
    rank_rows,
)
from llmrec.encoders.losses import full_softmax_loss, sample_negatives, sampled_bce_loss
from llmrec.training.distributed import gather_in_order

log = logging.getLogger(__name__)


class EncoderModule(pl.LightningModule):
    def __init__(self, encoder: SequentialEncoder, valid_set: EvalSet | None = None, monitor: str = "full/ndcg@10",
                 lr: float = 1e-3, weight_decay: float = 0.0, loss: Literal["ce", "bce"] = "ce",
                 num_negatives: int = 1):
        super().__init__()
        self.encoder, self.valid_set, self.monitor = encoder, valid_set, monitor
        self.lr, self.weight_decay, self.loss_name, self.num_negatives = lr, weight_decay, loss, num_negatives
        self._ranks: list[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]] = []

    # ------------------------------------------------------------------ training
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch  # [B, L], [B, L]
        out = self.encoder.forward_all(inputs)  # [B, L, H]
        real = targets > 0
        seq_out, tgt = out[real], targets[real]  # [N, H], [N]
        item_emb = self.encoder.item_embeddings()
        if self.loss_name == "ce":
            loss = full_softmax_loss(seq_out, item_emb, tgt)
        else:
            neg = sample_negatives(tgt, self.encoder.n_items, self.num_negatives)
            loss = sampled_bce_loss(seq_out, item_emb, tgt, neg)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=int(tgt.numel()))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.weight_decay:
            return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._ranks = []

    def validation_step(self, rows: torch.Tensor, batch_idx: int) -> None:
        assert self.valid_set is not None
        rows = rows.cpu().numpy()
        self._ranks.append((rows, *rank_rows(self.encoder, self.valid_set, rows)))

    def _gathered(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(full ranks, candidate ranks) of every valid sample in sample order, gathered from every rank's share
        (several processes; every rank gets the same)."""
        assert self.valid_set is not None
        rows = np.concatenate([r for r, _, _ in self._ranks])
        total = len(self.valid_set)
        full = gather_in_order(self, torch.cat([f for _, f, _ in self._ranks]), rows, total)
        cand = None
        if self._ranks[0][2] is not None:
            cand = gather_in_order(self, torch.cat([c for _, _, c in self._ranks]), rows, total)
        return full, cand

    def on_validation_epoch_end(self) -> None:
        if self.valid_set is None or not self._ranks or self.trainer.sanity_checking:
            return
        full, cand = gather_ranks(self.valid_set, self._ranks) if self.trainer.world_size == 1 else self._gathered()
        metrics = metrics_from_ranks(self.valid_set, full, cand)
        metrics = {k: v for k, v in metrics.items() if not k.startswith("n_samples")}
        for k, v in metrics.items():
            self.log(f"valid/{k}", v, prog_bar=k == self.monitor)
        self._ranks = []
