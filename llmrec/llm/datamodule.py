"""Prompt datasets and the Lightning data module of the LLM stage.

Training samples carry the answer (target title + terminator) with labels on it only; valid/test samples carry
the prompt alone, plus candidates and target for ranking. Prompts are assembled once per sample (token ids are
cheap to keep: ~300 ints per sample) so every epoch sees the same template for the same sample.
"""

from __future__ import annotations

from functools import partial

import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from llmrec.llm.hybrid import PromptBatch, collate_prompts
from llmrec.llm.prompts import Prompt, PromptBuilder
from llmrec.training.distributed import check_shards, rank_and_world, shard_sampler, train_sampler


class PromptDataset(Dataset):
    """Samples of one split rendered as prompts by `builder` (answers attached when `with_answer`).

    Every prompt is built up front with one batched `build_many` (tokenizing whole prompt texts is the cost)."""

    def __init__(self, samples: pd.DataFrame, builder: PromptBuilder, with_answer: bool):
        self.builder, self.with_answer = builder, with_answer
        self.rows = list(zip(samples["user_id"].tolist(), samples["position"].tolist(),
                             samples["history"].tolist(), samples["target"].tolist(), samples["candidates"].tolist()))
        # per-sample loss weights (fairness reweighting), when the samples carry them
        self.weights = samples["weight"].astype(float).tolist() if "weight" in samples.columns else None
        self.prompts: list[Prompt] = builder.build_many([list(r[2]) for r in self.rows], [list(r[4]) for r in self.rows],
                                                        [r[0] for r in self.rows], [r[1] for r in self.rows])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        user, position, history, target, candidates = self.rows[i]
        weight = self.weights[i] if self.weights is not None else None
        return self.prompts[i], list(map(int, history)), int(target), list(map(int, candidates)), user, position, weight


def collate(items, builder: PromptBuilder, with_answer: bool, summary_max_length: int = 50) -> PromptBatch:
    prompts, histories, targets, candidates, users, positions, weights = map(list, zip(*items))
    answers = [builder.answer_ids[t] for t in targets] if with_answer else None
    batch = collate_prompts(prompts, int(builder.tokenizer.pad_token_id), targets, candidates, users, positions,
                            answers=answers, summary_histories=histories if builder.summary else None,
                            summary_max_length=summary_max_length)
    if weights[0] is not None:
        batch.weights = torch.tensor(weights, dtype=torch.float32)
    return batch


def prompt_loader(samples: pd.DataFrame, builder: PromptBuilder, batch_size: int, with_answer: bool,
                  shuffle: bool = False, summary_max_length: int = 50, seed: int = 0,
                  shard: tuple[int, int] = (0, 1)) -> DataLoader:
    """Batches of `samples` as prompts. `shard` = (rank, processes) of a multi-process run: a shuffled loader
    then draws this rank's share with a seeded `DistributedSampler`, an ordered one yields this rank's whole
    batches of the one-process order (`llmrec.training.distributed`); (0, 1): every sample, as one process."""
    rank, world = shard
    dataset = PromptDataset(samples, builder, with_answer)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    sampler = None
    if world > 1:
        sampler = (train_sampler(dataset, rank, world, seed) if shuffle
                   else shard_sampler(len(dataset), batch_size, rank, world))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      generator=generator, num_workers=0,
                      collate_fn=partial(collate, builder=builder, with_answer=with_answer,
                                         summary_max_length=summary_max_length))


class LLMDataModule(pl.LightningDataModule):
    """Train loader (with answers, shuffled, seeded) and valid loader (prompts only); in a multi-process run each
    rank's share of them (`prompt_loader`'s `shard`)."""

    def __init__(self, train: pd.DataFrame, valid: pd.DataFrame, builder: PromptBuilder, batch_size: int,
                 eval_batch_size: int, summary_max_length: int = 50, seed: int = 0):
        super().__init__()
        self.train_samples, self.valid_samples, self.builder = train, valid, builder
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.summary_max_length, self.seed = summary_max_length, seed

    def train_dataloader(self) -> DataLoader:
        return prompt_loader(self.train_samples, self.builder, self.batch_size, True, shuffle=True,
                             summary_max_length=self.summary_max_length, seed=self.seed,
                             shard=rank_and_world(self.trainer))

    def val_dataloader(self) -> DataLoader:
        shard = rank_and_world(self.trainer)
        check_shards(len(self.valid_samples), self.eval_batch_size, shard[1], "validation",
                     "lower --eval-batch-size or raise --max-valid-samples, or use fewer processes")
        return prompt_loader(self.valid_samples, self.builder, self.eval_batch_size, False,
                             summary_max_length=self.summary_max_length, shard=shard)
