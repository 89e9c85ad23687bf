"""Training windows and evaluation batches for encoder training (the data side of `EncoderModule`).

Training: each training sequence (`ProcessedDataset.train_sequences()`, which never holds a valid/test
target) is cut, from its most recent end, into consecutive windows of `train_length + 1` items that overlap by
one item; a window's first `train_length` items are the input and every next item is a target, so every
position of every training sequence is predicted exactly once per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from llmrec.data.dataset import ProcessedDataset
from llmrec.encoders.evaluate import (
    EvalSet,
    HistorySource,
    build_eval_set,
    length_order,
)
from llmrec.base.errors import DataError
from llmrec.training.distributed import check_shards, rank_and_world, shard_sampler


def sequence_windows(sequences: Sequence[np.ndarray], train_length: int) -> list[np.ndarray]:
    """Cut sequences into windows of <= train_length + 1 items, newest first; each target appears once."""
    windows = []
    for seq in sequences:
        end = len(seq)
        while end > 1:
            start = max(0, end - train_length - 1)
            windows.append(np.asarray(seq[start:end], dtype=np.int64))
            end = start + 1
    return windows


def collate_windows(windows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows -> (inputs [B, L], targets [B, L]), both left-padded with 0; target 0 means no loss."""
    width = max(len(w) for w in windows) - 1
    inputs = np.zeros((len(windows), width), dtype=np.int64)
    targets = np.zeros((len(windows), width), dtype=np.int64)
    for i, w in enumerate(windows):
        n = len(w) - 1
        inputs[i, width - n:] = w[:-1]
        targets[i, width - n:] = w[1:]
    return torch.from_numpy(inputs), torch.from_numpy(targets)


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of windows of similar length, in a new seeded random order every epoch.

    Each epoch: shuffle all windows, sort each run of `batch_size * bucket_batches` of them by length, cut the
    runs into batches and shuffle the batches. Padding (and so wasted compute) drops a lot, since most
    training sequences are shorter than `train_length`, while batches stay random.

    Several processes (`rank` of `world`): every rank draws the same batches (same seed, same epoch) and takes
    every `world`-th of them from its `rank`-th on; the last ones are repeated from the start so that every
    rank has the same number of batches (as `DistributedSampler` pads), i.e. the same number of DDP steps.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, bucket_batches: int = 50,
                 rank: int = 0, world: int = 1):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.bucket = batch_size, seed, batch_size * bucket_batches
        self.rank, self.world = rank, world
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.lengths) / self.batch_size) / self.world)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(len(self.lengths))
        batches = []
        for s in range(0, len(order), self.bucket):
            run = order[s:s + self.bucket]
            run = run[np.argsort(self.lengths[run], kind="stable")]
            batches += [run[i:i + self.batch_size].tolist() for i in range(0, len(run), self.batch_size)]
        order = rng.permutation(len(batches))
        if self.world > 1:  # this rank's share, padded from the start to the same length on every rank
            order = np.resize(order, len(self) * self.world)[self.rank::self.world]
        for i in order:
            yield batches[i]


class _Windows(Dataset):
    def __init__(self, windows: list[np.ndarray]):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.windows[i]


class _Rows(Dataset):
    def __init__(self, order: np.ndarray):
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> int:
        return int(self.order[i])


def _collate_rows(rows: list[int]) -> torch.Tensor:
    return torch.as_tensor(rows, dtype=torch.long)


class EncoderDataModule(pl.LightningDataModule):
    """Train windows from the training sequences; validation batches are row indices into `valid_set`."""

    def __init__(self, data: ProcessedDataset, max_length: int, train_length: int, batch_size: int = 128,
                 eval_batch_size: int = 1024, seed: int = 0, history: HistorySource = "auto",
                 exclude_seen: bool = True):
        super().__init__()
        self.data, self.batch_size, self.eval_batch_size, self.seed = data, batch_size, eval_batch_size, seed
        self.windows = sequence_windows(data.train_sequences(), train_length)
        if not self.windows:
            raise DataError(f"{data.root or 'dataset'}: no training sequence has two or more items")
        self.n_train_targets = int(sum(len(w) - 1 for w in self.windows))
        self._sampler: LengthBucketSampler | None = None
        self.valid_set: EvalSet = build_eval_set(data, "valid", max_length, history, exclude_seen)

    def train_dataloader(self) -> DataLoader:
        if self._sampler is None:  # one sampler for the whole fit, so each epoch gets a new order
            rank, world = rank_and_world(self.trainer)
            self._sampler = LengthBucketSampler([len(w) for w in self.windows], self.batch_size, self.seed,
                                                rank=rank, world=world)
        return DataLoader(_Windows(self.windows), batch_sampler=self._sampler, collate_fn=collate_windows,
                          num_workers=0)

    def val_dataloader(self) -> DataLoader:
        rank, world = rank_and_world(self.trainer)
        rows = _Rows(length_order(self.valid_set))
        if world == 1:
            return DataLoader(rows, batch_size=self.eval_batch_size, shuffle=False, collate_fn=_collate_rows,
                              num_workers=0)
        # several processes: each rank ranks whole batches of the one-process order (the module gathers them)
        check_shards(len(rows), self.eval_batch_size, world, "validation",
                     "lower --eval-batch-size, or use fewer processes")
        return DataLoader(rows, batch_size=self.eval_batch_size, sampler=shard_sampler(
            len(rows), self.eval_batch_size, rank, world), collate_fn=_collate_rows, num_workers=0)
