"""The one `pl.Trainer` of every training stage (encoders, SFT, S-DPO), and the fit that keeps the best round.

The stages differ in their LightningModule, data and stopping rule; the trainer around them is the same and is
built here only, from `TrainerOptions` (`llmrec.training.options`): Lightning's CSV/TensorBoard loggers under the
output folder, progress as tqdm's bar on a terminal or a log line every 30 s elsewhere, `KeepBest` on a valid
metric, `DivergenceGuard` (a NaN/inf loss or weight stops the run, nothing is saved) and, with a
`ResumeCheckpoint` (`llmrec.training.resume`), the state to continue from after an interruption (`--resume`).
Lightning's own checkpoints, model summary and sanity validation are off (`KeepBest` keeps weights in memory).

Several processes (`--devices N`, `--num-nodes M`, torchrun, SLURM) run Lightning's DDP strategy (gloo on CPUs,
NCCL on GPUs), checked by `llmrec.training.distributed.check_strategy`; Lightning's own sampler replacement is off
(`use_distributed_sampler=False`): each stage's data module shards its loaders itself (`llmrec.training.distributed`:
a seeded `DistributedSampler` for training, whole one-process batches per rank for validation), so the resumable
train loader keeps its wrapper and validation counts no sample twice. A module whose training step may leave
trainable parameters without a gradient (the LLM stage's text-only curriculum batches never call the projector)
sets `may_skip_parameters`: DDP then looks for unused parameters every step, and a parameter unused on every
rank keeps no gradient (None), so AdamW skips it exactly as in one process.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl

from llmrec.base.device import lightning_accelerator
from llmrec.training.distributed import check_strategy, process_count
from llmrec.training.divergence import DivergenceGuard
from llmrec.training.keep_best import KeepBest
from llmrec.training.loggers import training_loggers
from llmrec.training.options import TrainerOptions
from llmrec.training.progress import trainer_progress
from llmrec.training.resume import ResumeCheckpoint


def build_trainer(options: TrainerOptions, callbacks: Sequence[pl.Callback] = (), *, log_dir: Path | None = None,
                  resume: ResumeCheckpoint | None = None, what: str = "training",
                  divergence_hint: str = "lower the learning rate (--lr)", unused_parameters: bool = False
                  ) -> pl.Trainer:
    """A `pl.Trainer` for `options` with the stage's `callbacks` (in order: `KeepBest` first), then the divergence
    guard, the resume state (after every callback that acts on a validation round, so that its saved state holds
    their decisions) and the progress reporting (`what` names the run in progress lines).

    `log_dir` receives `logs/` (no loggers without it: ranks other than 0 pass None); `divergence_hint` ends the
    divergence error. `unused_parameters`: the module may leave trainable parameters without a gradient in a
    step, so DDP is told to look for them (`ddp` becomes `ddp_find_unused_parameters_true`).
    """
    accelerator = lightning_accelerator(options.device)
    strategy = check_strategy(options.strategy, accelerator, options.devices, options.num_nodes)
    if unused_parameters and strategy == "ddp":
        strategy = "ddp_find_unused_parameters_true"
    if process_count(options.devices, options.num_nodes) > 1:
        # the stages log validation metrics already gathered over the ranks (the same value on every rank)
        warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
    show_bar, progress = trainer_progress(options.progress_bar, what=what)
    return pl.Trainer(
        accelerator=accelerator, devices=options.devices, num_nodes=options.num_nodes, strategy=strategy,
        accumulate_grad_batches=options.accumulate_grad_batches, use_distributed_sampler=False,
        precision=options.precision,
        max_epochs=options.epochs, min_epochs=options.min_epochs, max_steps=options.max_steps,
        val_check_interval=options.val_check_interval, log_every_n_steps=options.log_every_n_steps,
        deterministic=options.deterministic,
        logger=training_loggers(log_dir) if log_dir is not None else False,
        default_root_dir=str(log_dir) if log_dir is not None else None,
        callbacks=[*callbacks, DivergenceGuard(hint=divergence_hint), *([resume] if resume is not None else []),
                   *progress],
        enable_checkpointing=False, enable_progress_bar=show_bar, enable_model_summary=False, num_sanity_val_steps=0)


def fit_keeping_best(module: pl.LightningModule, datamodule: pl.LightningDataModule, options: TrainerOptions,
                     monitor: str = "valid/hr@1", callbacks: Sequence[pl.Callback] = (), *,
                     log_dir: Path | None = None, resume: ResumeCheckpoint | None = None, what: str = "training",
                     divergence_hint: str = "lower the learning rate (--lr)") -> tuple[KeepBest, pl.Trainer]:
    """Fit `module`; on return it holds the weights of the best validation round by `monitor` (higher is better).

    When training stopped between validation rounds (`--max-steps`), the end is validated too, so the last
    weights compete. Returns the `KeepBest` (best score, step, history) and the trainer (epochs run).
    """
    keep_best = KeepBest(monitor)
    trainer = build_trainer(options, [keep_best, *callbacks], log_dir=log_dir, resume=resume, what=what,
                            divergence_hint=divergence_hint,
                            unused_parameters=bool(getattr(module, "may_skip_parameters", False)))
    trainer.fit(module, datamodule=datamodule)
    if keep_best.trained_since_validation:
        trainer.validate(module, datamodule=datamodule, verbose=False)  # stopped mid-epoch: judge the end too
        keep_best.restore(module)
    return keep_best, trainer
