"""Reference log-probabilities of the preference stage, computed ONCE with the frozen SFT model and stored.

DPO-family losses need log pi_ref(y | x) of the chosen answer and of every negative. pi_ref is the SFT model
the policy starts from, and it never changes, so its log-probs are computed once before training (eval mode,
no gradients, the same packed one-prompt-pass layout as the policy: `llmrec.llm.logprobs.sequence_logprobs`)
with the freshly loaded SFT model, which then becomes the policy: only one model is ever resident.

The values are stored as `reference_logprobs.safetensors` in the output folder, keyed by sample index:
    sample_index [M] int64   the sample's row in the dataset's full `train` split
    items        [M, 1+N]    int64, chosen first, then the negatives (`llmrec.preference.negatives`)
    logprobs     [M, 1+N]    float32 summed answer log-probs under the reference model
and string metadata (format marker, the SFT folder, negatives, seed). Nothing is unpickled when reading it.

Several processes (DDP): `compute_reference_sharded` has each rank compute whole batches of the one-process
order (the same batches, so the same values) and gathers them once, so every rank holds all of them; it runs
inside the fit (`llmrec.preference.train.PreferenceStart`), where the processes exist.

What differs from the authors' code: S-DPO's trainer (built on TRL's DPOTrainer) keeps a second, frozen copy
of the model in memory and runs it on every batch (precompute_ref_log_probs off).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmrec.base.atomic import atomic_write
from llmrec.base.errors import CheckpointError
from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.hybrid import HybridLM
from llmrec.llm.logprobs import sequence_logprobs
from llmrec.base.progress import track
from llmrec.training.distributed import check_shards, gather_in_order, rank_and_world, shard_batches

REFERENCE_FILE = "reference_logprobs.safetensors"
REFERENCE_FORMAT = "llmrec-reference-logprobs"


@dataclass(frozen=True)
class Reference:
    """Stored reference log-probs (see the module docstring for shapes)."""

    sample_index: torch.Tensor  # [M] int64
    items: torch.Tensor         # [M, 1+N] int64, chosen first
    logprobs: torch.Tensor      # [M, 1+N] float32
    metadata: dict[str, str]


@torch.no_grad()
def compute_reference(lm: HybridLM, samples: pd.DataFrame, items: np.ndarray | torch.Tensor, batch_size: int = 8,
                      hybrid: bool = True) -> torch.Tensor:
    """[M, 1+N] float32 (CPU) summed log-probs of each sample's `items` answers under `lm`, in eval mode.

    Args:
        lm: the SFT model (used as is; put back in its previous train/eval mode afterwards).
        samples: M samples (rows of a split) whose prompts are built by `lm.builder`.
        items: [M, 1+N] item ids per sample (chosen first).
        batch_size: prompts per forward pass.
        hybrid: fill the behavioural slots (as the policy does during training).
    """
    items = torch.as_tensor(np.asarray(items), dtype=torch.long)
    if items.shape[0] != len(samples):
        raise ValueError(f"{items.shape[0]} rows of items for {len(samples)} samples")
    device = next(lm.parameters()).device
    was_training = lm.training
    lm.eval()
    loader = prompt_loader(samples, lm.builder, batch_size, with_answer=False,
                           summary_max_length=getattr(lm.encoder, "max_length", 50))
    out = torch.empty(items.shape, dtype=torch.float32)
    start = 0
    try:
        for batch in track(loader, "reference log-probs", total=len(samples), unit="samples",
                           size=lambda b: b.input_ids.shape[0]):
            n = batch.input_ids.shape[0]
            chunk = items[start:start + n].to(device)
            out[start:start + n] = sequence_logprobs(lm, batch.to(device), chunk, hybrid).float().cpu()
            start += n
    finally:
        lm.train(was_training)
    return out


def compute_reference_sharded(pl_module: Any, lm: HybridLM, samples: pd.DataFrame, items: np.ndarray | torch.Tensor,
                              batch_size: int = 8, hybrid: bool = True) -> torch.Tensor:
    """`compute_reference` over every rank of `pl_module`'s trainer: each rank computes its whole batches
    (`llmrec.training.distributed.shard_batches`), then the [M, 1+N] values are gathered in sample order on every
    rank (a collective: every rank calls it). One process: `compute_reference` itself."""
    rank, world = rank_and_world(pl_module._trainer)
    if world == 1:
        return compute_reference(lm, samples, items, batch_size, hybrid)
    check_shards(len(samples), batch_size, world, "reference log-probs",
                 "lower --eval-batch-size or raise --max-train-samples, or use fewer processes")
    positions = shard_batches(len(samples), batch_size, rank, world)
    items = np.asarray(items)
    local = compute_reference(lm, samples.iloc[positions], items[positions], batch_size, hybrid)
    return gather_in_order(pl_module, local, torch.tensor(positions, dtype=torch.long), len(samples))


def save_reference(path: Path, sample_index: np.ndarray | torch.Tensor, items: np.ndarray | torch.Tensor,
                   logprobs: torch.Tensor, metadata: dict[str, str] | None = None) -> Path:
    """Write the reference log-probs atomically as safetensors (see the module docstring)."""
    tensors = {"sample_index": torch.tensor(np.asarray(sample_index), dtype=torch.long).contiguous(),
               "items": torch.as_tensor(np.asarray(items), dtype=torch.long).contiguous(),
               "logprobs": logprobs.detach().to("cpu", torch.float32).contiguous()}
    meta = {"format": REFERENCE_FORMAT, **{str(k): str(v) for k, v in (metadata or {}).items()}}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_reference(path: Path) -> Reference:
    """Read a file written by `save_reference`; one-line `CheckpointError` if it is missing or damaged."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: no stored reference log-probs")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: damaged or not a safetensors file ({e})") from None
    if metadata.get("format") != REFERENCE_FORMAT or set(tensors) != {"sample_index", "items", "logprobs"}:
        raise CheckpointError(f"{path}: not a reference log-probs file written by `llmrec train-sdpo`")
    return Reference(tensors["sample_index"], tensors["items"], tensors["logprobs"], metadata)
