"""The contract every sequential encoder honours, and the padding convention.

Padding convention (stated once, tested): sequences are LEFT-padded with item id 0. Row b of `item_seq`
holds its `lengths[b]` items oldest -> newest in the LAST `lengths[b]` columns, so the most recent item is
always in the last column, whatever the length. Histories longer than the encoder's `max_length` are cut to
their most recent items (`pad_left` does both).
"""

from __future__ import annotations

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
