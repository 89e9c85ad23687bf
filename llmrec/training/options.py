"""The trainer options every training stage shares, declared once: `TrainerOptions`.

`llmrec train-encoder`, `train-llm` and `train-sdpo` each have a flat config dataclass (their flags and YAML keys
are flat), and each takes the trainer options from here with `trainer_option(name, ...)`, which copies the field
declared in `TrainerOptions` (type, default, help text, accepted range); a stage only overrides what differs (its
default epochs, what its seed seeds). `TrainerOptions.of(config)` then reads them back from a stage config by name,
and `llmrec.training.trainer.build_trainer` turns them into the one `pl.Trainer` of every stage.

Adding a trainer option is: a field here, its use in `build_trainer`, and one `trainer_option(...)` line in each
stage config that offers the flag. The multi-process options (`devices`, `num_nodes`, `strategy`) are checked by
`llmrec.training.distributed`, which also says what each process does.

This module imports neither torch nor Lightning, so a config class can use it without paying for them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from llmrec.base.config import option

Device = Literal["auto", "cpu", "gpu", "cuda"]
# Lightning's strategy names offered on the command line; `llmrec.training.distributed.check_strategy` refuses, in
# one line, the ones the accelerator or the installed packages cannot run (FSDP on CPU, DeepSpeed without a GPU)
Strategy = Literal["auto", "ddp", "ddp_find_unused_parameters_true", "fsdp", "deepspeed"]
STRATEGIES: tuple[str, ...] = ("auto", "ddp", "ddp_find_unused_parameters_true", "fsdp", "deepspeed")
PRECISIONS: tuple[str, ...] = ("32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true",
                               "64-true", "64", "transformer-engine", "transformer-engine-float16")


@dataclass
class TrainerOptions:
    """How a stage's training loop runs: the fields a `pl.Trainer` is built from (`build_trainer`).

    The first group are command-line options of the stages (declared here once, see `trainer_option`); the loop
    options after them are set by each stage's code.
    """

    device: Device = option("auto", "where to train (auto: a GPU if present)")
    precision: str = option("32-true", "Lightning precision (e.g. bf16-mixed on a GPU)", choices=PRECISIONS)
    seed: int = option(0, "random seed", min=0, max=2**32 - 1)
    progress_bar: bool | None = option(None, "Lightning's progress bar (default: on a terminal; periodic log "
                                             "lines otherwise)")
    epochs: int = option(1, "training epochs", min=1)
    max_steps: int = option(-1, "stop after this many optimiser steps (-1: no limit)", min=1, also=(-1,))
    val_check_interval: float = option(1.0, "validate every this share of an epoch", min=0, max=1,
                                       min_exclusive=True)
    resume: bool = option(False, "continue an interrupted run from its saved state in <out>.resume (same options "
                                 "required)")
    devices: int = option(1, "processes per machine, one per device (CPU: gloo processes; GPU: one per GPU)", min=1)
    num_nodes: int = option(1, "machines taking part (each runs --devices processes: torchrun, SLURM)", min=1)
    strategy: Strategy = option("auto", "Lightning's distribution strategy (auto: ddp when more than one process)")
    accumulate_grad_batches: int = option(1, "optimiser step every this many batches (effective batch = batch "
                                             "size x processes x this)", min=1)
    resume_every: int = option(50, "save the state to resume from every this many optimiser steps (and after "
                                   "each validation)", min=1)
    # --- loop options each stage sets in code (not flags)
    min_epochs: int | None = None
    log_every_n_steps: int = 10
    deterministic: bool = False

    @classmethod
    def of(cls, config: Any, **overrides: Any) -> TrainerOptions:
        """The trainer options of a stage config: each field the config has under the same name, then
        `overrides` (e.g. `epochs=config.max_epochs` for the encoder stage); the rest keep their defaults."""
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if hasattr(config, f.name)}
        return cls(**{**values, **overrides})


def trainer_option(name: str, default: Any = dataclasses.MISSING, help: str | None = None) -> Any:
    """The declaration of `TrainerOptions.<name>` for a stage config's field, with another `default` or `help`.

    The accepted range stays the declared one (the stage's annotation must be the declared type), so every stage
    checks the option the same way.
    """
    declared = {f.name: f for f in dataclasses.fields(TrainerOptions)}
    if name not in declared or "help" not in declared[name].metadata:
        raise ValueError(f"trainer_option({name!r}): not a command-line option of TrainerOptions")
    field = declared[name]
    metadata = {**field.metadata, **({"help": help} if help is not None else {})}
    return dataclasses.field(default=field.default if default is dataclasses.MISSING else default, metadata=metadata)
