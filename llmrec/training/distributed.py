"""Several processes, one run: the checks and pure rules behind `--devices`, `--num-nodes` and `--strategy`.

llmrec writes no distributed code of its own: Lightning's strategies launch the processes (its own launcher for
`--devices N` on one machine, `torchrun` and SLURM environments detected by Lightning) and run
`torch.distributed` underneath (gloo on CPUs, NCCL on GPUs). What is left to us is decided here, once:

- which strategy names run where (`check_strategy`): FSDP and DeepSpeed need GPUs (and DeepSpeed its package);
  `auto` with more than one process is DDP;
- how many torch threads each process gets (`threads_per_process`), so that N processes on one machine do not
  ask for N x cores threads between them.

What each process (rank) of a run does -- the rules below are applied by the stages and the shared trainer:

- every process runs the whole command (Lightning's launcher re-runs the command line in N-1 child processes at
  `trainer.fit`; torchrun and SLURM start them all), so data loading and model building happen in each; the
  process's rank is known before any trainer exists (`global_rank`, from the launcher's environment);
- threads: N processes on one machine each take `threads_per_process(N)` torch threads unless the user chose
  (`--threads`, or `OMP_NUM_THREADS`): `set_process_threads`;
- training data: each rank trains on its own shard, drawn by torch's `DistributedSampler` (the sampler Lightning
  itself would put in; seeded by `--seed`, reshuffled every epoch by Lightning's `set_epoch`), padded to equal
  length so every rank takes the same number of steps: `train_sampler`. Effective batch = batch size x
  processes x `--accumulate-grad-batches`;
- validation (and the S-DPO reference log-probs): each rank takes whole batches of the one-process order
  (batch k to rank k mod N, no sample twice: `ShardSampler`), the results are gathered in sample order on
  every rank (`gather_in_order`), so every rank computes the same metrics as one process and makes the same
  keep-best / early-stopping decision;
- only rank 0 writes: the output folder (built atomically, `on_rank_zero`), the loggers' files and the resume
  state; the other ranks keep no temporary folder and end when training ends, while rank 0 ranks the test
  split and writes;
- gathering anything else (resume states; sharded inference's results, `llmrec.training.sharding`): JSON text as
  bytes in tensors (`gather_objects`; numpy arrays by their raw bytes, `array_to_json`), never pickled;
- sharded inference (`llmrec evaluate` / `llmrec predict --all-users --devices N`, `llmrec.training.sharding`)
  takes its rank, threads and work items by these same rules;
- `LLMREC_RANK_RECORD=<folder>` (for tests and debugging) makes each rank append what it decided (curriculum
  draws, validation rounds, threads) to `<folder>/rank-<r>.jsonl`: `record`.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from llmrec.base.errors import ConfigError

log = logging.getLogger(__name__)
SHARDED_STRATEGIES = ("fsdp", "deepspeed")


def process_count(devices: int, num_nodes: int) -> int:
    """How many processes a run has: `devices` per machine on `num_nodes` machines."""
    return devices * num_nodes


def check_strategy(strategy: str, accelerator: str, devices: int, num_nodes: int) -> str:
    """The Lightning strategy name to run with, or a one-line `ConfigError` for a combination that cannot run.

    `accelerator` is Lightning's (`cpu` or `gpu`, from `llmrec.base.device.lightning_accelerator`). `auto` is
    `ddp` for more than one process and Lightning's single-device strategy otherwise. FSDP and DeepSpeed shard
    weights across GPUs: refused on CPU (Lightning's FSDP has no CPU path; DeepSpeed needs CUDA), and DeepSpeed
    is refused when its package is not installed (it is not a dependency of llmrec).
    """
    processes = process_count(devices, num_nodes)
    if strategy == "auto":
        return "ddp" if processes > 1 else "auto"
    if strategy in SHARDED_STRATEGIES and accelerator != "gpu":
        raise ConfigError(f"option --strategy {strategy}: {strategy} shards the model across GPUs and does not run "
                          f"on CPU; use --strategy ddp on CPU (or --device gpu on a machine with GPUs)")
    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("option --strategy deepspeed: the deepspeed package is not installed; `pip install "
                          "deepspeed` on the GPU machine, or use --strategy ddp or fsdp")
    return strategy


def threads_per_process(local_processes: int, cores: int | None = None) -> int:
    """torch threads for each of `local_processes` processes sharing this machine's `cores` (default: the cores
    this process may run on): an equal share, at least one. On a 2-core CPU, 2 processes get 1 thread each."""
    if local_processes < 1:
        raise ValueError(f"local_processes must be >= 1, got {local_processes}")
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // local_processes)


# ------------------------------------------------------------------------------------------ which process am I
def global_rank(devices: int = 1) -> int:
    """This process's rank among all processes of the run, known before any trainer exists (0 when alone).

    torchrun sets RANK; Lightning's own launcher sets LOCAL_RANK in the processes it starts, and the user sets
    NODE_RANK on every machine but the first; `srun` sets SLURM_PROCID. `devices` is the processes per machine
    (`--devices`).
    """
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if "LOCAL_RANK" in env or "NODE_RANK" in env:  # NODE_RANK alone: the launching process of another machine
        return int(env.get("NODE_RANK", "0")) * devices + int(env.get("LOCAL_RANK", "0"))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"])
    return 0


def local_rank() -> int:
    """This process's rank on its machine, which GPU it uses (0 when alone): LOCAL_RANK (Lightning's launcher,
    torchrun), else SLURM_LOCALID (`srun`)."""
    return int(os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID") or 0)


def local_process_count(devices: int) -> int:
    """Processes of this run on this machine: torchrun's LOCAL_WORLD_SIZE, else `--devices`."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", devices))


def set_process_threads(local_processes: int) -> int:
    """Give this process its share of the machine's cores, before its slow work; returns the torch threads used.

    With more than one process on this machine and no choice of the user (`--threads`, or OMP_NUM_THREADS in the
    environment), torch gets `threads_per_process(local_processes)` threads. OMP_NUM_THREADS is then set to the
    count used, so that Lightning's launcher (which otherwise sets its own share at `trainer.fit`) keeps it and
    the processes it starts inherit it. One process: nothing changes.
    """
    import torch

    from llmrec.base.device import requested_threads

    if local_processes > 1:
        if requested_threads() is None and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(threads_per_process(local_processes))
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        if requested_threads() is None:  # (every process says it: a child inherits the count in OMP_NUM_THREADS)
            log.info("%d processes share this machine's CPU: %d torch threads each (--threads sets another number)",
                     local_processes, torch.get_num_threads())
    record("threads", threads=torch.get_num_threads(), local_processes=local_processes)
    return torch.get_num_threads()


def use_local_gpu(accelerator: str) -> None:
    """On GPUs, make this process's own GPU torch's current device before any model is built, so that
    `cuda` means it: without this every process of a node would first load its copy onto GPU 0. `local_rank`
    says which; a process no launcher started keeps torch's default."""
    if accelerator == "gpu" and ("LOCAL_RANK" in os.environ or "SLURM_LOCALID" in os.environ):
        import torch

        torch.cuda.set_device(local_rank())


def start_process(devices: int, accelerator: str) -> tuple[int, int]:
    """What a training stage does first in each of its processes: its threads (`set_process_threads`) and GPU
    (`use_local_gpu`). Returns (global rank, torch threads)."""
    threads = set_process_threads(local_process_count(devices))
    use_local_gpu(accelerator)
    return global_rank(devices), threads


@contextlib.contextmanager
def on_rank_zero(rank: int, folder: Callable[[], AbstractContextManager[Path]]) -> Iterator[Path | None]:
    """The output folder context `folder()` (e.g. `output_directory(out, ...)`) on rank 0; None elsewhere.

    Only rank 0 builds (and atomically moves into place) the output folder: the other ranks create no temporary
    folder and write nothing; they get None and end when training ends.
    """
    if rank != 0:
        yield None
        return
    with folder() as tmp:
        yield tmp


def run_facts(batch_size: int, devices: int, num_nodes: int, accumulate_grad_batches: int,
              threads: int) -> dict[str, int]:
    """What a stage's metrics.json records about its processes: `processes`, `effective_batch_size` (samples per
    optimiser step: batch size x processes x accumulation) and `torch_threads` (of each process)."""
    processes = process_count(devices, num_nodes)
    return {"processes": processes, "effective_batch_size": batch_size * processes * accumulate_grad_batches,
            "torch_threads": threads}


# ------------------------------------------------------------------------------------------ data shards
def rank_and_world(trainer: Any) -> tuple[int, int]:
    """(global rank, processes) of a running trainer, or (0, 1) without one (a data module used on its own)."""
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)


def positions_of(loader: Any) -> tuple[list[int] | None, int]:
    """(the positions of its dataset a sharded eval loader yields, in order, or None for all; dataset size)."""
    return getattr(getattr(loader, "sampler", None), "indices", None), len(loader.dataset)


def shard_batches(n: int, batch_size: int, rank: int, world: int) -> list[int]:
    """The sample positions (of 0..n-1) rank `rank` of `world` evaluates: whole batches of `batch_size` of the
    one-process order, batch k going to rank k mod `world`; every sample exactly once, in no rank twice.

    A rank's batches are then the very batches one process makes (the same padding), so the gathered results
    equal a one-process run's.
    """
    return [i for start in range(rank * batch_size, n, world * batch_size)
            for i in range(start, min(start + batch_size, n))]


def check_valid_shards(n_valid: int, max_valid: int | None, batch_size: int, devices: int, num_nodes: int) -> None:
    """`check_shards` of a stage's validation, before any slow work: `n_valid` valid samples, of which
    `max_valid` (None: all) are ranked in batches of `batch_size` by `devices` x `num_nodes` processes."""
    n = n_valid if max_valid is None else min(n_valid, max_valid)
    check_shards(n, batch_size, process_count(devices, num_nodes), "validation",
                 "lower --eval-batch-size, rank more valid samples, or use fewer processes")


def check_shards(n: int, batch_size: int, world: int, what: str, hint: str) -> None:
    """One-line ConfigError when `n` samples in batches of `batch_size` leave a rank of `world` without a batch
    (a rank with nothing to evaluate would skip the round, and the others would wait for it)."""
    batches = -(-n // batch_size)
    if world > 1 and batches < world:
        raise ConfigError(f"{what}: {n} samples make {batches} batch(es) of {batch_size}, fewer than the {world} "
                          f"processes; {hint}")


def shard_sampler(n: int, batch_size: int, rank: int, world: int) -> Any:
    """A `torch.utils.data.Sampler` of rank `rank`'s positions (`shard_batches`); its `indices` say which."""
    from torch.utils.data import Sampler

    class ShardSampler(Sampler[int]):
        def __init__(self) -> None:
            self.indices = shard_batches(n, batch_size, rank, world)

        def __len__(self) -> int:
            return len(self.indices)

        def __iter__(self) -> Iterator[int]:
            return iter(self.indices)

    return ShardSampler()


def train_sampler(dataset: Any, rank: int, world: int, seed: int) -> Any:
    """The training sampler of rank `rank` of `world`: torch's `DistributedSampler`, shuffled with `seed` (the
    same on every rank: one permutation of all samples per epoch, split between the ranks), padded by repeating
    samples to the same length on every rank; Lightning calls its `set_epoch` at each epoch start."""
    from torch.utils.data import DistributedSampler

    return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)


def gather_in_order(pl_module: Any, values: Any, indices: Any, total: int) -> Any:
    """[total, ...] rows of every rank put in sample order: `values[j]` of a rank is sample `indices[j]`.

    Uses Lightning's `all_gather` (the strategy's collective; every rank must call this at the same point) and
    returns the same tensor on every rank; each sample must come from exactly one rank. One process: the rows
    put in order, no collective.
    """
    import torch

    values, indices = torch.as_tensor(values), torch.as_tensor(indices, dtype=torch.long)
    world = int(pl_module.trainer.world_size) if pl_module._trainer is not None else 1
    if world > 1:
        sizes = pl_module.all_gather(torch.tensor([len(indices)], dtype=torch.long)).reshape(-1)
        width = int(sizes.max())
        padded = torch.zeros((width, *values.shape[1:]), dtype=values.dtype)
        padded[:len(values)] = values
        where = torch.full((width,), -1, dtype=torch.long)
        where[:len(indices)] = indices
        all_values = pl_module.all_gather(padded).reshape(-1, *values.shape[1:]).cpu()
        all_indices = pl_module.all_gather(where).reshape(-1).cpu()
        keep = all_indices >= 0
        values, indices = all_values[keep], all_indices[keep]
    if len(indices) != total or not torch.equal(torch.sort(indices).values, torch.arange(total)):
        raise RuntimeError(f"gathered {len(indices)} rows for {total} samples: the shards do not cover each sample "
                           f"exactly once")
    out = torch.empty((total, *values.shape[1:]), dtype=values.dtype)
    out[indices] = values
    return out


def gather_objects(trainer: Any, value: Any) -> list[Any]:
    """`value` (JSON-serialisable: RNG and module states of a resume state) of every rank, by rank.

    Sent as UTF-8 JSON text in uint8 tensors through the strategy's tensor `all_gather` (the lengths first, then
    the texts padded to the longest), never pickled: `torch.distributed.all_gather_object` would unpickle what the
    other processes send. The tensors go through this process's device (NCCL gathers GPU tensors only). Every
    rank must call it at the same point; one process: `[value]`. Arrays travel exactly as `array_to_json`.
    """
    world = int(trainer.world_size)
    if world == 1:
        return [value]
    import torch

    device = trainer.strategy.root_device
    data = torch.frombuffer(bytearray(json.dumps(value).encode("utf-8")), dtype=torch.uint8)
    sizes = trainer.strategy.all_gather(torch.tensor([len(data)], dtype=torch.long, device=device)).reshape(-1).cpu()
    padded = torch.zeros(int(sizes.max()), dtype=torch.uint8, device=device)
    padded[:len(data)] = data.to(device)
    gathered = trainer.strategy.all_gather(padded).reshape(world, -1).cpu()
    return [json.loads(gathered[r, :int(sizes[r])].numpy().tobytes().decode("utf-8")) for r in range(world)]


def array_to_json(array: Any) -> dict[str, Any]:
    """A numpy array as a JSON value that `array_from_json` turns back into the same array bit for bit: its dtype
    (with byte order), shape and raw bytes in base64 (decimal text could lose a float's bits or its NaN payload).
    Arrays of Python objects are refused (their bytes are pointers)."""
    import numpy as np

    array = np.asarray(array)
    if array.dtype.hasobject:
        raise TypeError(f"array_to_json: an array of Python objects ({array.dtype}) has no bytes to send")
    return {"dtype": array.dtype.str, "shape": list(array.shape),
            "bytes": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")}


def array_from_json(value: dict[str, Any]) -> Any:
    """The numpy array `array_to_json` described (a writable copy)."""
    import numpy as np

    data = base64.b64decode(value["bytes"].encode("ascii"), validate=True)
    return np.frombuffer(data, dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()


def record(event: str, **values: Any) -> None:
    """With LLMREC_RANK_RECORD=<folder> in the environment, append `{"event", "rank", **values}` as a JSON line to
    `<folder>/rank-<rank>.jsonl` (what this rank decided; tests compare the ranks). Off otherwise."""
    folder = os.environ.get("LLMREC_RANK_RECORD")
    if not folder:
        return
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    rank = int(getattr(rank_zero_only, "rank", 0) or 0)
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / f"rank-{rank}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": event, "rank": rank, **values}) + "\n")
