"""Training progress for Lightning: tqdm's bar on a terminal, periodic log lines elsewhere (`llmrec.base.progress`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl

from llmrec.base.progress import DEFAULT_EVERY, duration, interactive

log = logging.getLogger("llmrec.progress")


class LogProgress(pl.Callback):
    """Lightning's progress as log lines (for non-terminals): step, loss, samples/s and time left."""

    def __init__(self, every: float = DEFAULT_EVERY, what: str = "training"):
        self.every, self.what = every, what
        self._started = self._last = 0.0
        self._samples = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = self._last = time.perf_counter()
        self._samples, self._first_step = 0, trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._samples += _batch_size(batch)
        now = time.perf_counter()
        if now - self._last < self.every or not trainer.is_global_zero:  # several processes: rank 0 reports
            return
        self._last = now
        total = int(trainer.estimated_stepping_batches)
        steps = trainer.global_step - self._first_step
        left = (total - trainer.global_step) * (now - self._started) / max(steps, 1)
        loss = trainer.callback_metrics.get("train/loss")
        loss_text = f", loss {float(loss):.4f}" if loss is not None else ""
        log.info("%s: step %d/%d (%.0f%%), epoch %d%s, %.1f samples/s, %s left", self.what, trainer.global_step,
                 total, 100 * trainer.global_step / max(total, 1), trainer.current_epoch, loss_text,
                 self._samples / (now - self._started), duration(left))


def _batch_size(batch: Any) -> int:
    batch = getattr(batch, "prompts", batch)  # a preference batch wraps its prompt batch
    ids = getattr(batch, "input_ids", None)
    if ids is not None:
        return int(ids.shape[0])
    if isinstance(batch, (tuple, list)) and batch and hasattr(batch[0], "shape"):
        return int(batch[0].shape[0])
    return 1


def trainer_progress(progress_bar: bool | None, every: float = DEFAULT_EVERY, what: str = "training"
                     ) -> tuple[bool, list[pl.Callback]]:
    """(`enable_progress_bar`, extra callbacks) for a `pl.Trainer`: the tqdm bar when asked for or on a terminal
    (`progress_bar=None`), else periodic log lines."""
    show = interactive() if progress_bar is None else progress_bar
    if show:
        from pytorch_lightning.callbacks import TQDMProgressBar

        return True, [TQDMProgressBar()]
    return False, [LogProgress(every, what)]
