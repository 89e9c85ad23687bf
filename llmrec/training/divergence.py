"""Stop a training run whose loss or weights stop being numbers, before anything is saved.

A learning rate that is too high, a fp16 overflow or a bad batch can turn the loss into nan/inf; from then on
every optimiser step writes nan into the weights, and a run that kept going would save a checkpoint that
looks finished and ranks at random. `DivergenceGuard` raises `TrainingDiverged` (an `LlmrecError`: the
command prints one line and exits 2) as soon as it sees it. The command's output folder is built in a
temporary folder (`llmrec.base.atomic.output_directory`), so the exception leaves no output behind.

Cost: the loss is checked after every step (one scalar moved to the CPU); the trainable weights — all of
them for a small model, only the adapters and projector for LoRA — every `weights_every` steps and once
when training ends, with a single device-to-host sync.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch

from llmrec.base.errors import TrainingDiverged


def _loss_of(outputs: Any) -> torch.Tensor | None:
    """The training loss in what `training_step` returned (a tensor, or a dict with `loss`)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and isinstance(outputs.get("loss"), torch.Tensor):
        return outputs["loss"]
    return None


def non_finite_weights(module: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters of `module` that hold a nan or an infinity."""
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not params:
        return []
    with torch.no_grad():
        finite = torch.stack([torch.isfinite(p).all() for _, p in params]).cpu()
    return [n for (n, _), ok in zip(params, finite.tolist()) if not ok]


class DivergenceGuard(pl.Callback):
    """Raise `TrainingDiverged` when the training loss, or a trainable weight, is nan or infinite.

    Args:
        weights_every: check the trainable weights every this many optimiser steps (and at the end).
        hint: what the user can change, appended to the message (e.g. "lower --lr (now 10.0)").
    """

    def __init__(self, weights_every: int = 50, hint: str = "lower the learning rate (--lr)"):
        if weights_every < 1:
            raise ValueError(f"weights_every must be >= 1, got {weights_every}")
        self.weights_every = weights_every
        self.hint = hint

    def _fail(self, trainer: pl.Trainer, what: str) -> None:
        raise TrainingDiverged(f"training diverged at step {trainer.global_step} (epoch {trainer.current_epoch}): "
                               f"{what}; stopped, and nothing was saved. Try again with a smaller step: "
                               f"{self.hint}")

    def check_weights(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bad = non_finite_weights(pl_module)
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            self._fail(trainer, f"the trainable weight(s) {', '.join(bad[:3])}{more} hold nan or inf values")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = _loss_of(outputs)
        if loss is not None:
            value = float(loss.detach().float().mean())
            finite = math.isfinite(value)
            if trainer.world_size > 1:  # every rank stops together (a rank that stopped alone would hang the rest)
                finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
            if not finite:
                self._fail(trainer, f"the training loss is {value}" if not math.isfinite(value)
                           else "the training loss of another process is not finite")
        if trainer.global_step % self.weights_every == 0:
            self.check_weights(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check_weights(trainer, pl_module)
