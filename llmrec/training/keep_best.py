"""Keep the best validation round's trainable weights in memory and restore them when training ends.

One callback for every training stage (encoders, LLM SFT, S-DPO): checkpoint choice is made on a VALID metric
only, never on test, and no pickled Lightning checkpoint is written. Only what training changes is copied
(parameters with `requires_grad`, plus persistent buffers), so a LoRA run on a large base keeps a few MB.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytorch_lightning as pl
import torch

from llmrec.training.distributed import record

log = logging.getLogger(__name__)


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of `module`'s trainable parameters and persistent buffers, by name."""
    persistent = set(module.state_dict(keep_vars=True).keys())
    state = {n: p.detach().to("cpu", copy=True) for n, p in module.named_parameters() if p.requires_grad}
    state.update({n: b.detach().to("cpu", copy=True) for n, b in module.named_buffers() if n in persistent})
    return state


def load_trainable_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` (from `trainable_state`) back into `module` in place."""
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    missing = [n for n in state if n not in tensors]
    if missing:
        raise KeyError(f"cannot restore {len(missing)} tensor(s) absent from the module, e.g. {missing[0]}")
    with torch.no_grad():
        for name, value in state.items():
            tensors[name].copy_(value.to(tensors[name].device))


class KeepBest(pl.Callback):
    """After each validation round, copy the trainable state when `monitor` (higher is better) improved.

    Reads `monitor` from `trainer.callback_metrics` at `on_validation_end`, i.e. after the module logged its
    validation metrics. `history` holds one entry per round (step, epoch and every `valid/` metric); the best
    round's weights are loaded back at the end of `fit` (and by `restore`). Several processes: each rank's
    validation metrics are gathered over all ranks (the stage's module does it), so every rank decides the same.
    """

    def __init__(self, monitor: str):
        self.monitor = monitor
        self.best_score = -math.inf
        self.best_step = self.best_epoch = -1
        self.best_metrics: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.seconds_to_best = 0.0
        self.seconds_before = 0.0  # training seconds of the processes before a resume (set by ResumeCheckpoint)
        self.history: list[dict[str, Any]] = []
        self.batches_since_validation = 0
        self._started = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # from the first training batch on: what a stage computes at the fit's start (S-DPO's reference log-probs)
        # is not training time
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.batches_since_validation += 1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        self.batches_since_validation = 0
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("valid/")}
        score = metrics[self.monitor]
        self.history.append({"step": int(trainer.global_step), "epoch": int(trainer.current_epoch), **metrics})
        if math.isfinite(score) and score > self.best_score:
            self.best_score, self.best_metrics = score, metrics
            self.best_step, self.best_epoch = int(trainer.global_step), int(trainer.current_epoch)
            self.best_state = trainable_state(pl_module)
            self.seconds_to_best = self.seconds_before + time.perf_counter() - self._started
        record("valid", step=int(trainer.global_step), score=score, best_step=self.best_step,
               best_score=self.best_score)
        if getattr(trainer, "is_global_zero", True):  # every rank decided the same: say it once
            log.info("step %d (epoch %d): %s %.4f (best %.4f at step %d)", trainer.global_step, trainer.current_epoch,
                     self.monitor, score, self.best_score, self.best_step)

    @property
    def trained_since_validation(self) -> bool:
        """Whether training batches ran after the last validation round (their weights were never judged)."""
        return self.batches_since_validation > 0 or not self.history

    def restore(self, pl_module: pl.LightningModule) -> None:
        """Load the best round's weights into `pl_module` (no-op when it was never validated)."""
        if self.best_state is not None:
            load_trainable_state(pl_module, self.best_state)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restore(pl_module)
