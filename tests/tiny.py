"""The tiny option sets of the tests, each defined once: encoder sizes, the tiny-Llama sizes (as config values, CLI
flags or YAML lines), the tiny `TrainLLMConfig`, the small LLM-test catalog. Plain values and two formatters, no
fixtures (those are in conftest.py), so that a test reads which sizes it runs at by name; and the one-thread
context the tiny models run fastest in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

# `build_encoder` sizes of each trainable encoder: small enough for a test, large enough to have every part.
TINY_ENCODERS: dict[str, dict[str, Any]] = {
    "sasrec": {"hidden_size": 16, "num_layers": 2, "num_heads": 2, "max_length": 12, "dropout": 0.1},
    "gru4rec": {"hidden_size": 16, "num_layers": 2, "max_length": 12, "dropout": 0.1},
    "caser": {"hidden_size": 16, "max_length": 4, "num_horizontal": 3, "num_vertical": 2, "dropout": 0.1},
}

# `TrainEncoderConfig` values of a tiny encoder run (each test adds its epochs, patience or batch sizes).
TINY_ENCODER_TRAINING: dict[str, Any] = {"hidden_size": 16, "max_length": 8, "batch_size": 16, "progress_bar": False}

# The tiny Llama most LLM tests train (`--llm tiny`): 2 layers, 32 wide, 2 heads, prompts of at most 256 tokens.
TINY_LLAMA: dict[str, Any] = {"tiny_layers": 2, "tiny_hidden": 32, "tiny_heads": 2, "max_length": 256}

# The still smaller Llama of the demo and notebook toy runs (1 layer, 16 wide), as their presets write it.
TOY_LLAMA: dict[str, Any] = {"tiny_layers": 1, "tiny_hidden": 16, "tiny_heads": 2, "max_length": 256}

# The rest of the tiny `TrainLLMConfig` (`test_llm_support.tiny_config`): one epoch of batches of 8 on the CPU.
TINY_LLM_TRAINING: dict[str, Any] = {"llm": "tiny", **TINY_LLAMA, "epochs": 1, "batch_size": 8, "eval_batch_size": 4,
                                     "lr": 3e-3, "max_valid_samples": 8, "device": "cpu", "seed": 0}

# One optimiser step and a 4-sample validation on the CPU: a checkpoint that exists, not one that has learnt.
ONE_STEP: dict[str, Any] = {"max_steps": 1, "max_valid_samples": 4, "device": "cpu"}

# `test_llm_support.tiny_dataset` arguments of the small catalog the LLM tests share: 18 users walking 7 of 24
# items, 6 candidates per sample.
SMALL_DATA: dict[str, int] = {"n_users": 18, "n_items": 24, "seq_len": 7, "n_candidates": 6}


def flags(values: dict[str, Any]) -> list[str]:
    """Config values as the command line spells them: `{"tiny_layers": 2, "progress_bar": False}` ->
    `["--tiny-layers", "2", "--no-progress-bar"]` (booleans are the `--x` / `--no-x` switches)."""
    out: list[str] = []
    for key, value in values.items():
        name = key.replace("_", "-")
        if isinstance(value, bool):
            out.append(f"--{name}" if value else f"--no-{name}")
        else:
            out += [f"--{name}", str(value)]
    return out


def yaml_lines(values: dict[str, Any]) -> str:
    """Config values as a user writes them in a `--config` file: `tiny-layers: 2` lines, each ending in a newline."""
    return "".join(f"{key.replace('_', '-')}: {str(value).lower() if isinstance(value, bool) else value}\n"
                   for key, value in values.items())


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside the block: the tiny models are fastest so, and the machine's cores may be busy
    with other work. The thread count is restored afterwards, even on failure."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
