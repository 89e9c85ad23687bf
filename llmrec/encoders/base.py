"""The contract every sequential encoder honours, and the padding convention.

Padding convention (stated once, tested): sequences are LEFT-padded with item id 0. Row b of `item_seq`
holds its `lengths[b]` items oldest -> newest in the LAST `lengths[b]` columns, so the most recent item is
always in the last column, whatever the length. Histories longer than the encoder's `max_length` are cut to
their most recent items (`pad_left` does both).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


class SequentialEncoder(nn.Module, ABC):
    """`forward(item_seq[B,L], lengths[B]) -> seq_repr[B,H]`; items scored by inner product."""

    n_items: int
    hidden_size: int
    max_length: int
    # Set by `llmrec.encoders.build_encoder` (and so by `load_encoder`): how to rebuild this encoder.
    model_name: str
    hparams: dict

    @abstractmethod
    def forward(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Encode left-padded histories.

        Args:
            item_seq: [B, L] long, left-padded with 0, L <= max_length.
            lengths: [B] long, number of real items per row (>= 1).
        Returns:
            [B, H] representation of each whole history (the state after its most recent item).
        """

    @abstractmethod
    def item_embeddings(self) -> torch.Tensor:
        """[n_items + 1, H] output item embeddings; row 0 is padding."""

    def score_all(self, seq_repr: torch.Tensor) -> torch.Tensor:
        """[B, H] -> [B, n_items + 1] inner-product score of every item (column 0 is padding)."""
        return seq_repr @ self.item_embeddings().T

    def forward_all(self, item_seq: torch.Tensor) -> torch.Tensor:
        """[B, L] left-padded -> [B, L, H]: the state after each position (for training every position).

        Column j's output depends only on items in columns <= j; padded columns' outputs are meaningless.
        Encoders that are not trained by gradient (MostPop) do not implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} has no per-position output")

    @torch.no_grad()
    def encode(self, histories: Sequence[Sequence[int] | np.ndarray]) -> torch.Tensor:
        """Inference helper: raw histories (oldest -> newest) -> [B, H] in eval mode, without gradients.

        Histories longer than `max_length` keep their most recent `max_length` items; an empty history
        raises ValueError (see `pad_left`); an item id outside 1..n_items raises ValueError.
        """
        for i, h in enumerate(histories):
            ids = np.asarray(h, dtype=np.int64)
            if ids.size and (ids.min() < 1 or ids.max() > self.n_items):
                raise ValueError(f"history {i}: item ids must be in 1..{self.n_items} (0 is padding); "
                                 f"got ids from {ids.min()} to {ids.max()}")
        tensor = next(itertools.chain(self.parameters(), self.buffers()), None)
        item_seq, lengths = pad_left(histories, self.max_length,
                                     device=tensor.device if tensor is not None else None)
        was_training = self.training
        self.eval()
        try:
            return self(item_seq, lengths)
        finally:
            self.train(was_training)


def pad_left(histories: Sequence[Sequence[int] | np.ndarray], max_length: int,
             device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad histories into `[B, L]` (L = min(max_length, longest)), keeping the most recent items.

    Raises ValueError on an empty history: an encoder cannot represent a user with no items.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    lengths = [min(len(h), max_length) for h in histories]
    if any(n == 0 for n in lengths):
        bad = next(i for i, n in enumerate(lengths) if n == 0)
        raise ValueError(f"history {bad} is empty; at least one item is needed to encode a user")
    width = max(lengths) if lengths else 1
    out = np.zeros((len(histories), width), dtype=np.int64)
    for i, (h, n) in enumerate(zip(histories, lengths)):
        out[i, width - n:] = np.asarray(h[len(h) - n:], dtype=np.int64)
    return torch.as_tensor(out, device=device), torch.as_tensor(lengths, dtype=torch.long, device=device)


def keep_most_recent(item_seq: torch.Tensor, lengths: torch.Tensor, max_length: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a left-padded batch wider than `max_length` to its last `max_length` columns (most recent items).

    This is how every encoder treats an over-long history: only the most recent `max_length` items count.
    """
    if item_seq.size(1) > max_length:
        item_seq = item_seq[:, -max_length:]
    return item_seq, lengths.clamp(max=item_seq.size(1))
