"""One Lightning fit for every training stage: keep the best validation round, stop on divergence, log curves.

SFT (`llmrec train-llm`) and preference training (`llmrec train-sdpo`) differ in their LightningModule and data;
the trainer around them is the same: Lightning's CSV/TensorBoard loggers under the output folder, progress on a
terminal or as log lines, `DivergenceGuard` (a NaN/inf loss or weight stops the run, nothing is saved) and
`KeepBest` on a valid metric, with a final validation when training stopped between validation rounds
(`--max-steps`), so the last weights compete too. With `FitSettings.resume` (`llmrec.training.resume`) the run
writes its state periodically to `<out>.resume/` and can continue from it after an interruption (`--resume`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl

from llmrec.base.device import lightning_accelerator
from llmrec.training.divergence import DivergenceGuard
from llmrec.training.keep_best import KeepBest
from llmrec.training.loggers import training_loggers
from llmrec.training.progress import trainer_progress
from llmrec.training.resume import ResumeCheckpoint


@dataclass
class FitSettings:
    """The trainer options every stage has (taken from its config)."""

    device: str = "auto"
    precision: str = "32-true"
    epochs: int = 1
    max_steps: int = -1
    val_check_interval: float = 1.0
    progress_bar: bool | None = None
    log_every_n_steps: int = 10
    what: str = "training"               # names the run in progress lines
    divergence_hint: str = "lower the learning rate (--lr)"
    callbacks: list[pl.Callback] = field(default_factory=list)
    resume: ResumeCheckpoint | None = None  # periodic resume state (and the state to resume from, if any)


def fit_keeping_best(module: pl.LightningModule, datamodule: pl.LightningDataModule, settings: FitSettings,
                     monitor: str = "valid/hr@1", log_dir: Path | None = None) -> KeepBest:
    """Fit `module`; on return it holds the weights of the best validation round by `monitor` (higher is better)."""
    keep_best = KeepBest(monitor)
    show_bar, progress = trainer_progress(settings.progress_bar, what=settings.what)
    trainer = pl.Trainer(accelerator=lightning_accelerator(settings.device), devices=1, precision=settings.precision,
                         max_epochs=settings.epochs, max_steps=settings.max_steps,
                         logger=training_loggers(log_dir) if log_dir is not None else False,
                         enable_checkpointing=False, enable_progress_bar=show_bar, enable_model_summary=False,
                         callbacks=[keep_best, DivergenceGuard(hint=settings.divergence_hint), *settings.callbacks,
                                    *([settings.resume] if settings.resume is not None else []), *progress],
                         num_sanity_val_steps=0, val_check_interval=settings.val_check_interval,
                         log_every_n_steps=settings.log_every_n_steps, deterministic=False,
                         default_root_dir=str(log_dir) if log_dir is not None else None)
    trainer.fit(module, datamodule=datamodule)
    if keep_best.trained_since_validation:
        trainer.validate(module, datamodule=datamodule, verbose=False)  # stopped mid-epoch: judge the end too
        keep_best.restore(module)
    return keep_best
