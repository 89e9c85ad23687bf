"""Sharded inference: a job's work items (batches of samples, parts of users) split over the processes of a
Lightning strategy, each item computed exactly once, the results gathered.

`llmrec evaluate --devices N` ranks a split this way (`ShardedRanker`) and `llmrec predict --all-users --devices N`
predicts its parts of users this way (`llmrec.serving.all_users`). llmrec writes no process launching of its own:
the work runs inside `pl.Trainer(strategy=..., devices=N, num_nodes=M).predict(...)`, so Lightning's launcher
(`--devices N` on one machine: it re-runs the same command line in N-1 child processes), torchrun or SLURM start
the processes and `torch.distributed` connects them (gloo on CPUs, NCCL on GPUs). What each process does:

- the work items are the numbers 0..n-1 of a `DataLoader`; for `predict`, Lightning gives it an *unrepeated*
  distributed sampler (`UnrepeatedDistributedSamplerWrapper`): rank r of W computes items r, r+W, r+2W, ... and
  no item is padded in twice (the samplers of fit/validate/test repeat items to give every rank as many);
- an item is computed the same way in every process count (a batch of consecutive samples is the batch one
  process would have ranked), so gathered results equal one process's, up to float rounding of the thread count;
- the results are gathered on every rank (`torch.distributed.all_gather_object`, after `predict` returns) and
  put back in item order; a job that writes its results itself (parts of users) only waits for every rank
  (`strategy.barrier`) before rank 0 merges;
- only rank 0 writes the command's output (`global_rank()` says which process this is, once the work ran);
- CPU threads: with several processes on one machine and no `--threads`, each process takes an equal share of
  the cores (`set_process_threads`, `llmrec.training.distributed.threads_per_process`).

Strategies that shard weights (FSDP, DeepSpeed) do not fit here: each process holds the whole model and ranks its
own samples, so `check_launch` accepts `auto` and the DDP family only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from llmrec.base.device import lightning_accelerator, requested_threads, torch_device
from llmrec.base.errors import ConfigError
from llmrec.base.progress import DEFAULT_EVERY, progress_line, track
from llmrec.evaluation.ranker import CandidateRanking
from llmrec.training.distributed import SHARDED_STRATEGIES, check_strategy, process_count, threads_per_process

log = logging.getLogger(__name__)
R = TypeVar("R")


@dataclass(frozen=True)
class Launch:
    """Where a sharded job runs: `devices` processes on each of `num_nodes` machines with Lightning's `strategy`,
    on the command's `device` (`auto`, `cpu`, `gpu`, `cuda`)."""

    device: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"

    @property
    def processes(self) -> int:
        return process_count(self.devices, self.num_nodes)

    @property
    def sharded(self) -> bool:
        """Whether the work is split over several processes (else it runs in this process, without Lightning)."""
        return self.processes > 1

    def torch_device(self) -> str:
        """Where this process loads its model: `cpu`, `cuda`, or, for several processes on a GPU machine, this
        process's own GPU (`cuda:LOCAL_RANK`, the variable Lightning's launcher and torchrun set; SLURM's
        `SLURM_LOCALID`), so that N processes do not all load onto the first GPU first. Lightning's strategy
        moves the model there too; this only avoids the detour."""
        device = torch_device(self.device)
        if device != "cuda" or not self.sharded:
            return device
        return f"cuda:{int(os.environ.get('LOCAL_RANK') or os.environ.get('SLURM_LOCALID') or 0)}"


def check_launch(launch: Launch, command: str) -> str:
    """The Lightning strategy of a sharded job, or a one-line `ConfigError` (FSDP/DeepSpeed shard weights, not
    samples; the rest as `check_strategy`)."""
    if launch.strategy in SHARDED_STRATEGIES:
        raise ConfigError(f"option --strategy {launch.strategy}: `llmrec {command}` splits the samples over "
                          f"processes that each hold the whole model; use --strategy ddp (or auto)")
    accelerator = lightning_accelerator(launch.device)
    if accelerator == "gpu" and launch.devices > torch.cuda.device_count():
        raise ConfigError(f"option --devices {launch.devices}: this machine has {torch.cuda.device_count()} GPU(s) "
                          f"and `llmrec {command}` runs one process per GPU; pass --devices "
                          f"{torch.cuda.device_count()} or fewer (or --device cpu)")
    return check_strategy(launch.strategy, accelerator, launch.devices, launch.num_nodes)


def set_process_threads(launch: Launch) -> int:
    """Give this process its share of the CPU cores when `launch.devices` processes run on this machine and no
    `--threads` was given (2 processes on 2 cores: 1 thread each); returns the torch threads it now uses."""
    if launch.devices > 1 and requested_threads() is None and lightning_accelerator(launch.device) == "cpu":
        torch.set_num_threads(threads_per_process(launch.devices))
        log.info("%d processes share this machine's CPU: %d torch threads each (--threads sets another number)",
                 launch.devices, torch.get_num_threads())
    return torch.get_num_threads()


def global_rank() -> int:
    """This process's rank among all processes of the job (0 in a one-process run). Right once a sharded job's
    trainer has set up its strategy (Lightning sets it for each process then)."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


class _Progress(pl.Callback):
    """Each process logs its own share of the work every `every` seconds: `what (rank r/W): done/total unit`."""

    def __init__(self, what: str, unit: str, sizes: Sequence[int], every: float = DEFAULT_EVERY):
        self.what, self.unit, self.sizes, self.every = what, unit, list(sizes), every
        self.done, self.total, self.started, self.last = 0, 0, 0.0, 0.0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.total = sum(self.sizes[trainer.global_rank::trainer.world_size])  # the unrepeated sampler's share
        self.what = f"{self.what} (rank {trainer.global_rank}/{trainer.world_size})"
        self.started = self.last = time.perf_counter()

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self.done += sum(self.sizes[int(i)] for i in batch.tolist())
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            done = " (done)" if self.done >= self.total else ""
            log.info(progress_line(self.what, self.done, self.total, now - self.started, self.unit) + done)


class _ShardModule(pl.LightningModule):
    """`predict_step` runs `work(i)` for each work item i of its batch. `model` (the network `work` uses) is
    registered as a submodule so that Lightning moves it to this process's device."""

    def __init__(self, work: Callable[[int], Any], model: torch.nn.Module | None = None):
        super().__init__()
        self.work = work
        self.model = model

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> list[tuple[int, Any]]:
        return [(int(i), self.work(int(i))) for i in batch.tolist()]


def shard_map(work: Callable[[int], R], n: int, launch: Launch, what: str, unit: str = "items",
              sizes: Sequence[int] | None = None, model: torch.nn.Module | None = None, gather: bool = True
              ) -> list[R] | None:
    """[work(0), ..., work(n-1)], each computed once by one of `launch`'s processes (module docstring).

    `sizes[i]` is how many `unit`s item i holds (for the progress lines). One process (`launch.sharded` false):
    a plain loop here, no Lightning. Several: every rank returns all n results in item order (`gather`), or, with
    `gather=False` (work that writes its own results), None once every rank has finished its items.
    """
    sizes = list(sizes) if sizes is not None else [1] * n
    if not launch.sharded:
        results = [work(i) for i in track(range(n), what, total=sum(sizes), unit=unit, size=lambda i: sizes[i])]
        return results if gather else None
    strategy = check_launch(launch, what)
    trainer = pl.Trainer(accelerator=lightning_accelerator(launch.device), devices=launch.devices,
                         num_nodes=launch.num_nodes, strategy=strategy, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=False, use_distributed_sampler=True,
                         callbacks=[_Progress(what, unit, sizes)])
    # batch_size 1: every item is one call to `work`, whatever the item holds (a batch of samples, a part)
    loader = DataLoader(list(range(n)), batch_size=1, shuffle=False)
    outputs = trainer.predict(_ShardModule(work, model), dataloaders=loader, return_predictions=True) or []
    local = [pair for batch in outputs for pair in batch]  # type: ignore[union-attr]
    if not gather:
        trainer.strategy.barrier("shard_map")
        return None
    everyone: list[list[tuple[int, R]] | None] = [None] * trainer.world_size
    if trainer.world_size > 1:
        torch.distributed.all_gather_object(everyone, local)
    else:
        everyone = [local]
    results: dict[int, R] = {i: r for part in everyone for i, r in (part or [])}
    if sorted(results) != list(range(n)):
        raise RuntimeError(f"{what}: the processes returned {len(results)} of {n} work items")
    return [results[i] for i in range(n)]


def concat_rankings(parts: Sequence[CandidateRanking], mode: str) -> CandidateRanking:
    """The `CandidateRanking` of consecutive chunks of samples, joined in order (`scores` only in score mode)."""
    chosen = np.concatenate([p.chosen for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    scores = None
    if mode == "score":
        rows = [p.scores for p in parts if p.scores is not None and len(p.scores)]
        scores = np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float64)
    texts = [t for p in parts for t in (p.texts or [""] * len(p.chosen))]
    return CandidateRanking(scores, chosen.astype(np.int64), texts)


class ShardedRanker:
    """A `Ranker` (`llmrec.evaluation.ranker`) whose samples are ranked by several processes: consecutive chunks of
    `chunk` samples (the batches one process ranks) are the work items of `shard_map`, each ranked by
    `ranker.rank_rows(rows) -> CandidateRanking`, gathered in sample order on every rank."""

    def __init__(self, ranker: Any, chunk: int, launch: Launch, model: torch.nn.Module | None = None):
        self.ranker, self.chunk, self.launch, self.model = ranker, chunk, launch, model
        self.mode = ranker.mode

    def score_candidates(self, samples: pd.DataFrame, label: str = "ranking") -> CandidateRanking:
        starts = list(range(0, len(samples), self.chunk))
        parts = shard_map(lambda b: self.ranker.rank_rows(samples.iloc[starts[b]:starts[b] + self.chunk]),
                          len(starts), self.launch, label, "samples",
                          sizes=[min(self.chunk, len(samples) - s) for s in starts], model=self.model)
        assert parts is not None
        return concat_rankings(parts, self.mode)
