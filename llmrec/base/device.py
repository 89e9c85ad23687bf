"""Where and how a command runs: the `--device` option of the training and ranking commands (checked once,
turned into a Lightning accelerator or a torch device here and nowhere else), and the `--threads` option every
command takes.

torch is imported inside the functions, so the command line can use this module without paying for torch
(`llmrec --help`, `llmrec prepare`).
"""

from __future__ import annotations

import logging

from llmrec.base.errors import ConfigError

log = logging.getLogger(__name__)

GPU_DEVICES: tuple[str, ...] = ("gpu", "cuda")
_requested_threads: int | None = None  # what `--threads` asked for in this process (None: not given)


def check_device(device: str) -> None:
    """Refuse `--device gpu|cuda` on a machine where torch sees no CUDA GPU (one line, before any work)."""
    if device in GPU_DEVICES:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"option --device {device}: no CUDA GPU is available on this machine "
                              f"(torch.cuda.is_available() is false); use --device cpu, or --device auto to use "
                              f"a GPU only when there is one")


def lightning_accelerator(device: str) -> str:
    """`auto` -> `gpu` when CUDA is available else `cpu`; `gpu`/`cuda` -> `gpu` (refused without a GPU);
    anything else -> `cpu`."""
    import torch

    if device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    check_device(device)
    return "gpu" if device in GPU_DEVICES else "cpu"


def torch_device(device: str) -> str:
    """`--device` as a torch device string: `cuda` where `lightning_accelerator` picks the GPU, else `cpu`
    (`auto` -> `cuda` when CUDA is available; `gpu`/`cuda` refused without a GPU)."""
    return "cuda" if lightning_accelerator(device) == "gpu" else "cpu"


def set_threads(threads: int | None) -> None:
    """Let torch use `threads` CPU threads for its operators (and as many for inter-op work, when that can
    still be set); `None` keeps torch's default (one per core).

    Why it matters: on a machine whose cores are busy with other work, torch's default of one thread per core
    makes every operator wait for the slowest thread; decoding was measured 15-50x slower than with one thread.
    """
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"option --threads: got {threads}, expected an integer >= 1")
    import torch

    global _requested_threads
    _requested_threads = threads

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only settable once, before any inter-op parallel work has started in this process
        log.debug("torch inter-op threads already fixed at %d", torch.get_num_interop_threads())


def requested_threads() -> int | None:
    """The thread count `set_threads` was given in this process (the `--threads` flag), None when none was: a
    command running several processes on one machine then picks a share of the cores for each
    (`llmrec.training.distributed.threads_per_process`) instead of torch's one thread per core."""
    return _requested_threads
