"""Curriculum from text-only to hybrid prompts (LLaRA §3.3, "curriculum prompt tuning"; docs/design.md §5).

`hybrid_probability(schedule, progress)` is the probability that a training batch uses hybrid prompts at
`progress = global_step / total_steps` in [0, 1]. LLaRA uses the linear schedule p = t / T. Valid and test
batches are always hybrid; the schedule only concerns training.
"""

from __future__ import annotations

import math
from typing import Literal

import pytorch_lightning as pl

Schedule = Literal["linear", "step", "cosine", "constant"]
SCHEDULES: tuple[str, ...] = ("linear", "step", "cosine", "constant")


def hybrid_probability(schedule: Schedule, progress: float, constant: float = 1.0, step_at: float = 0.5) -> float:
    """Probability of a hybrid batch at training progress `progress` (clipped to [0, 1]).

    linear: p = t; step: 0 before `step_at`, 1 from it on; cosine: p = (1 - cos(pi t)) / 2 (slow start and
    finish); constant: p = `constant` (1.0 = hybrid only, no curriculum). All but `constant` go from 0 to 1
    and never decrease.
    """
    t = min(max(float(progress), 0.0), 1.0)
    if schedule == "linear":
        return t
    if schedule == "step":
        return 1.0 if t >= step_at else 0.0
    if schedule == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * t))
    if schedule == "constant":
        return float(constant)
    raise ValueError(f"unknown curriculum schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")


class CurriculumCallback(pl.Callback):
    """Before each training batch, sets `pl_module.hybrid_probability` from the schedule and global progress."""

    def __init__(self, schedule: Schedule, constant: float = 1.0, step_at: float = 0.5):
        self.schedule, self.constant, self.step_at = schedule, constant, step_at

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        total = max(int(trainer.estimated_stepping_batches), 1)
        progress = trainer.global_step / total
        pl_module.hybrid_probability = hybrid_probability(self.schedule, progress, self.constant, self.step_at)
        pl_module.log("curriculum/hybrid_probability", pl_module.hybrid_probability, on_step=True,
                      on_epoch=False, batch_size=1)
