"""Where training runs: the `--device` option shared by every training command."""

from __future__ import annotations

import torch


def lightning_accelerator(device: str) -> str:
    """`auto` -> `gpu` when CUDA is available else `cpu`; `gpu`/`cuda` -> `gpu`; anything else -> `cpu`."""
    if device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return "gpu" if device in ("gpu", "cuda") else "cpu"
