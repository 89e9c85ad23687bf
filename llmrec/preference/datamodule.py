"""Data of the preference stage: prompts with their chosen item, fixed negatives and stored reference log-probs.

A training batch carries the prompts WITHOUT answers (the policy scores the 1 + N answers behind one prompt
pass), the items [B, 1+N] whose answers are scored (chosen first), their reference log-probs [B, 1+N]
(`llmrec.preference.reference`) and, when the run uses them, per-sample loss weights [B] (fairness
reweighting, docs/design.md §7) in `prompts.weights`. Prompts are built by the SFT model's own `PromptBuilder`, so a
sample gets the same template (seeded per sample) as in SFT and as when its reference log-probs were computed.
Validation ranks valid candidates exactly as in SFT (`llmrec.llm.datamodule.prompt_loader`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from llmrec.llm.datamodule import PromptDataset, collate, prompt_loader
from llmrec.llm.hybrid import PromptBatch
from llmrec.llm.prompts import PromptBuilder
from llmrec.training.distributed import check_shards, rank_and_world, train_sampler


@dataclass
class PreferenceBatch:
    """A collated training batch of the preference stage."""

    prompts: PromptBatch      # left-padded prompts without answers; `prompts.weights` [B] or None
    items: torch.Tensor       # [B, 1+N] long: the chosen item, then the N negatives
    reference: torch.Tensor   # [B, 1+N] float32 reference log-probs of those answers
    index: torch.Tensor       # [B] long: each sample's row in the full train split (the reference file's key)

    def to(self, device: torch.device | str) -> PreferenceBatch:
        return PreferenceBatch(self.prompts.to(device), self.items.to(device), self.reference.to(device),
                               self.index.to(device))

    @property
    def weights(self) -> torch.Tensor | None:
        return self.prompts.weights


class PreferenceDataset(Dataset):
    """Training samples with their scored items, reference log-probs and optional per-sample weights.

    Args:
        samples: M rows of the train split.
        builder: the SFT model's prompt builder.
        items: [M, 1+N] item ids per sample, chosen first.
        reference: [M, 1+N] reference log-probs of those items' answers.
        index: [M] each sample's key (its row in the full train split).
        weights: [M] per-sample loss weights, or None (every sample weighs 1).
    """

    def __init__(self, samples: pd.DataFrame, builder: PromptBuilder, items: np.ndarray | torch.Tensor,
                 reference: torch.Tensor, index: np.ndarray | torch.Tensor, weights: np.ndarray | None = None):
        self.prompts = PromptDataset(samples, builder, with_answer=False)
        # copies: the dataset owns its tensors (pandas hands out read-only arrays)
        self.items = torch.tensor(np.asarray(items), dtype=torch.long)
        self.reference = torch.as_tensor(reference, dtype=torch.float32).clone()
        self.index = torch.tensor(np.asarray(index), dtype=torch.long)
        self.weights = torch.tensor(np.asarray(weights), dtype=torch.float32) if weights is not None else None
        M = len(self.prompts)
        if self.items.dim() != 2 or self.items.shape[0] != M or self.items.shape[1] < 2:
            raise ValueError(f"items must be [{M}, 1+N] with N >= 1, got {tuple(self.items.shape)}")
        if self.reference.shape != self.items.shape:
            raise ValueError(f"reference must have the shape of items {tuple(self.items.shape)}, "
                             f"got {tuple(self.reference.shape)}")
        if self.index.shape != (M,) or (self.weights is not None and self.weights.shape != (M,)):
            raise ValueError(f"index and weights must have shape ({M},)")
        if not torch.equal(self.items[:, 0], torch.tensor(samples["target"].to_numpy(dtype=np.int64))):
            raise ValueError("the first item of every sample must be its target (the chosen answer)")

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int):
        weight = self.weights[i] if self.weights is not None else None
        return self.prompts[i], self.items[i], self.reference[i], self.index[i], weight


def collate_preference(rows, builder: PromptBuilder, summary_max_length: int = 50) -> PreferenceBatch:
    prompt_rows, items, reference, index, weights = map(list, zip(*rows))
    prompts = collate(prompt_rows, builder, with_answer=False, summary_max_length=summary_max_length)
    if weights[0] is not None:
        prompts.weights = torch.stack(weights)
    return PreferenceBatch(prompts, torch.stack(items), torch.stack(reference), torch.stack(index))


def preference_loader(dataset: PreferenceDataset, batch_size: int, shuffle: bool = True, seed: int = 0,
                      summary_max_length: int = 50, shard: tuple[int, int] = (0, 1)) -> DataLoader:
    """Training batches of `dataset`; `shard` = (rank, processes): a multi-process run's shuffled loader draws
    this rank's share with a seeded `DistributedSampler` (`llmrec.training.distributed.train_sampler`)."""
    rank, world = shard
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    sampler = train_sampler(dataset, rank, world, seed) if shuffle and world > 1 else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      generator=generator, num_workers=0,
                      collate_fn=partial(collate_preference, builder=dataset.prompts.builder,
                                         summary_max_length=summary_max_length))


class PreferenceDataModule(pl.LightningDataModule):
    """Train loader (preference batches, shuffled, seeded) and valid loader (prompts only, as in SFT); in a
    multi-process run each rank's share of them, as in SFT."""

    def __init__(self, train: PreferenceDataset, valid: pd.DataFrame, batch_size: int, eval_batch_size: int,
                 summary_max_length: int = 50, seed: int = 0):
        super().__init__()
        self.train_set, self.valid_samples = train, valid
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.summary_max_length, self.seed = summary_max_length, seed

    def train_dataloader(self) -> DataLoader:
        return preference_loader(self.train_set, self.batch_size, shuffle=True, seed=self.seed,
                                 summary_max_length=self.summary_max_length, shard=rank_and_world(self.trainer))

    def val_dataloader(self) -> DataLoader:
        shard = rank_and_world(self.trainer)
        check_shards(len(self.valid_samples), self.eval_batch_size, shard[1], "validation",
                     "lower --eval-batch-size or raise --max-valid-samples, or use fewer processes")
        return prompt_loader(self.valid_samples, self.train_set.prompts.builder, self.eval_batch_size, False,
                             summary_max_length=self.summary_max_length, shard=shard)
