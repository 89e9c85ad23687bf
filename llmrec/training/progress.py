"""Progress of long loops: a live bar on a terminal, plain periodic log lines everywhere else.

Every loop that can run for minutes (training steps, ranking a split, decoding) reports its rate and the time
left. On an interactive terminal that is tqdm's bar (Lightning's `TQDMProgressBar` during training); when
stderr is not a terminal (a log file, CI, `nohup`) a bar would print control characters, so one plain line is
logged every `every` seconds instead.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import pytorch_lightning as pl

log = logging.getLogger("llmrec.progress")
T = TypeVar("T")
DEFAULT_EVERY = 30.0


def interactive() -> bool:
    """Whether stderr is a terminal (where a live bar makes sense)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def duration(seconds: float) -> str:
    """`75` -> `1m15s`; `4000` -> `1h06m`."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(what: str, done: float, total: float | None, elapsed: float, unit: str) -> str:
    """`ranking test: 120/1,160 users (10%), 12.3 users/s, 1m25s left`."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if total:
        eta = duration((total - done) / rate) if rate > 0 else "?"
        return f"{what}: {done:,.0f}/{total:,.0f} {unit} ({100 * done / total:.0f}%), {rate:.1f} {unit}/s, {eta} left"
    return f"{what}: {done:,.0f} {unit}, {rate:.1f} {unit}/s"


def track(items: Iterable[T], what: str, total: float | None = None, unit: str = "it",
          size=lambda item: 1, every: float = DEFAULT_EVERY, bar: bool | None = None) -> Iterator[T]:
    """Yield `items`, reporting progress (`size(item)` units per item, e.g. the samples of a batch)."""
    bar = interactive() if bar is None else bar
    if bar:
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=what, unit=f" {unit}", dynamic_ncols=True, leave=False) as pbar:
            for item in items:
                yield item
                pbar.update(size(item))
        return
    started = last = time.perf_counter()
    done = 0.0
    for item in items:
        yield item
        done += size(item)
        now = time.perf_counter()
        if now - last >= every:
            last = now
            log.info(progress_line(what, done, total, now - started, unit))
    if done:
        log.info(progress_line(what, done, total, time.perf_counter() - started, unit) + " (done)")


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
        if now - self._last < self.every:
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
