"""Sharded inference: a job's work items (batches of samples, parts of users) split over the processes of a
Lightning strategy, each item computed exactly once, the results gathered.

`llmrec evaluate --devices N` ranks a split this way (`ShardedRanker`) and `llmrec predict --all-users --devices N`
predicts its parts of users this way (`llmrec.serving.all_users`). llmrec writes no process launching of its own:
the work runs inside `pl.Trainer(strategy=..., devices=N, num_nodes=M).predict(...)`, so Lightning's launcher
(`--devices N` on one machine: it re-runs the same command line in N-1 child processes), torchrun or SLURM start
the processes and `torch.distributed` connects them (gloo on CPUs, NCCL on GPUs). What each process does:

- the work items are the numbers 0..n-1 of a `DataLoader` whose sampler gives rank r of W the items r, r+W,
  r+2W, ... (`llmrec.training.distributed.shard_sampler` with batches of one item, the rule validation shards by;
  the same items Lightning's unrepeated predict sampler would give): each item once, none padded in twice;
- an item is computed the same way in every process count (a batch of consecutive samples is the batch one
  process would have ranked), so gathered results equal one process's, up to float rounding of the thread count;
- the results are gathered on every rank after `predict` returns and put back in item order: each result is
  turned into JSON by the job's `Codec` (numpy arrays as their raw bytes, `array_to_json`, so float scores
  arrive bit for bit) and sent as bytes in tensors (`llmrec.training.distributed.gather_objects`); nothing is
  pickled (`torch.distributed.all_gather_object` would unpickle what another process sent). A job that writes
  its results itself (parts of users) only waits for every rank (`strategy.barrier`) before rank 0 merges;
- only rank 0 writes the command's output (`Launch.rank` says which process this is:
  `llmrec.training.distributed.global_rank`, from the launcher's environment, known before the work runs);
- CPU threads: with several processes on one machine and no `--threads`, each process takes an equal share of
  the cores (`llmrec.training.distributed.set_process_threads`, called with `Launch.local_processes`).

Strategies that shard weights (FSDP, DeepSpeed) do not fit here: each process holds the whole model and ranks its
own samples, so `check_launch` accepts `auto` and the DDP family only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from llmrec.base.device import lightning_accelerator, torch_device
from llmrec.base.errors import ConfigError
from llmrec.base.progress import DEFAULT_EVERY, progress_line, track
from llmrec.evaluation.ranker import CandidateRanking
from llmrec.training.distributed import (
    SHARDED_STRATEGIES,
    array_from_json,
    array_to_json,
    check_strategy,
    gather_objects,
    global_rank,
    local_process_count,
    local_rank,
    process_count,
    shard_sampler,
)

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

    @property
    def rank(self) -> int:
        """This process's rank among the job's processes (`llmrec.training.distributed.global_rank`; 0 alone)."""
        return global_rank(self.devices) if self.sharded else 0

    @property
    def local_processes(self) -> int:
        """The job's processes on this machine (`llmrec.training.distributed.local_process_count`)."""
        return local_process_count(self.devices)

    def torch_device(self) -> str:
        """Where this process loads its model: `cpu`, `cuda`, or, for several processes on a GPU machine, this
        process's own GPU (`cuda:<local rank>`: `llmrec.training.distributed.local_rank`), so that N processes do
        not all load onto the first GPU first. Lightning's strategy moves the model there too; this only avoids
        the detour."""
        device = torch_device(self.device)
        if device != "cuda" or not self.sharded:
            return device
        return f"cuda:{local_rank()}"


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


@dataclass(frozen=True)
class Codec(Generic[R]):
    """How a work result crosses processes: `to_json(result)` is a JSON value (lists, dicts, strings, numbers,
    None; numpy arrays through `array_to_json`) from which `from_json` makes the very same result again."""

    to_json: Callable[[R], Any]
    from_json: Callable[[Any], R]


def ranking_to_json(ranking: CandidateRanking) -> dict[str, Any]:
    """A `CandidateRanking` as JSON: `scores` and `chosen` by their raw bytes (`array_to_json`), `texts` as is."""
    return {"scores": None if ranking.scores is None else array_to_json(ranking.scores),
            "chosen": array_to_json(ranking.chosen),
            "texts": None if ranking.texts is None else list(ranking.texts)}


def ranking_from_json(value: dict[str, Any]) -> CandidateRanking:
    """The `CandidateRanking` `ranking_to_json` described: equal to it bit for bit (dtypes, shapes, values)."""
    return CandidateRanking(None if value["scores"] is None else array_from_json(value["scores"]),
                            array_from_json(value["chosen"]), value["texts"])


RANKINGS: Codec[CandidateRanking] = Codec(ranking_to_json, ranking_from_json)


IDLE = -1  # the work item of a rank that has none: `shard_map` computes nothing for it


class _Progress(pl.Callback):
    """Each process logs its own share of the work every `every` seconds: `what (rank r/W): done/total unit`.

    `items` are the work items this process's sampler gives it, and `rank` the rank it was built for: checked
    against the rank Lightning's strategy set up (they come from the same launcher's environment)."""

    def __init__(self, what: str, unit: str, sizes: Sequence[int], items: Sequence[int], rank: int,
                 every: float = DEFAULT_EVERY):
        self.what, self.unit, self.sizes, self.every = what, unit, list(sizes), every
        self.items, self.rank = list(items), rank
        self.done, self.total, self.started, self.last = 0, 0, 0.0, 0.0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != self.rank:
            raise RuntimeError(f"{self.what}: this process took the work items of rank {self.rank} but Lightning "
                               f"made it rank {trainer.global_rank} of {trainer.world_size}; are --devices and "
                               f"--num-nodes those the processes were launched with?")
        self.total = sum(self.sizes[i] for i in self.items)
        self.what = f"{self.what} (rank {trainer.global_rank}/{trainer.world_size})"
        self.started = self.last = time.perf_counter()

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self.done += sum(self.sizes[int(i)] for i in batch.tolist() if i != IDLE)
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
        return [(int(i), self.work(int(i))) for i in batch.tolist() if i != IDLE]


def shard_map(work: Callable[[int], R], n: int, launch: Launch, what: str, unit: str = "items",
              sizes: Sequence[int] | None = None, model: torch.nn.Module | None = None, gather: bool = True,
              codec: Codec[R] | None = None) -> list[R] | None:
    """[work(0), ..., work(n-1)], each computed once by one of `launch`'s processes (module docstring).

    `sizes[i]` is how many `unit`s item i holds (for the progress lines). One process (`launch.sharded` false):
    a plain loop here, no Lightning. Several: every rank returns all n results in item order (`gather`; they
    cross processes as `codec` says, which a sharded gathering job must give), or, with `gather=False` (work that
    writes its own results), None once every rank has finished its items.
    """
    sizes = list(sizes) if sizes is not None else [1] * n
    if not launch.sharded:
        results = [work(i) for i in track(range(n), what, total=sum(sizes), unit=unit, size=lambda i: sizes[i])]
        return results if gather else None
    if gather and codec is None:
        raise ValueError(f"shard_map ({what}): gathering results from several processes needs a Codec")
    strategy = check_launch(launch, what)
    # batches of one item: every item is one call to `work`, whatever the item holds (a batch of samples, a part)
    sampler = shard_sampler(n, 1, launch.rank, launch.processes)
    trainer = pl.Trainer(accelerator=lightning_accelerator(launch.device), devices=launch.devices,
                         num_nodes=launch.num_nodes, strategy=strategy, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=False, use_distributed_sampler=False,
                         callbacks=[_Progress(what, unit, sizes, sampler.indices, launch.rank)])
    # a rank with no item (fewer items than processes) still takes part, with the one item IDLE that does nothing:
    # Lightning refuses an empty loader on any rank, and every rank must reach the gather or the barrier
    loader = DataLoader(list(sampler.indices) or [IDLE], batch_size=1)
    outputs = trainer.predict(_ShardModule(work, model), dataloaders=loader, return_predictions=True) or []
    local = [pair for batch in outputs for pair in batch]  # type: ignore[union-attr]
    if not gather:
        trainer.strategy.barrier("shard_map")
        return None
    assert codec is not None
    everyone = gather_objects(trainer, [[i, codec.to_json(r)] for i, r in local])
    results: dict[int, R] = {int(i): codec.from_json(r) for part in everyone for i, r in part}
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
                          sizes=[min(self.chunk, len(samples) - s) for s in starts], model=self.model,
                          codec=RANKINGS)
        assert parts is not None
        return concat_rankings(parts, self.mode)
