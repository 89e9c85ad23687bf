"""Several processes, one run: the checks and pure rules behind `--devices`, `--num-nodes` and `--strategy`.

llmrec writes no distributed code of its own: Lightning's strategies launch the processes (its own launcher for
`--devices N` on one machine, `torchrun` and SLURM environments detected by Lightning) and run
`torch.distributed` underneath (gloo on CPUs, NCCL on GPUs). What is left to us is decided here, once:

- which strategy names run where (`check_strategy`): FSDP and DeepSpeed need GPUs (and DeepSpeed its package);
  `auto` with more than one process is DDP;
- how many torch threads each process gets (`threads_per_process`), so that N processes on one machine do not
  ask for N x cores threads between them.

Everything else a rank does (rank 0 writes the output folder, evaluation sharded and gathered, the same
curriculum coin on every rank) is wired by the stage that needs it, through Lightning's trainer and strategy.
"""

from __future__ import annotations

import importlib.util
import os

from llmrec.base.errors import ConfigError

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
