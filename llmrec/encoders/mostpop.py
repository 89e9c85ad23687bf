"""MostPop: rank items by how often they occur in the training sequences, the same for every user.

Not a sequential model; it exists so every table shows how much of a metric popularity alone explains (on
uniformly sampled candidates, a lot of HR@1). It honours the encoder contract so it is evaluated, saved,
loaded and indexed by exactly the same code: `seq_repr` is a constant [B, 1] of ones and the item
"embedding" is a one-column score, so `score_all` returns the popularity score of every item.

Ties are broken by item id (the lower id first), making the ranking strict and deterministic; the score is
`count * (n_items + 1) + (n_items + 1 - item_id)`, exact in float32 for counts below ~16M / n_items.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from llmrec.encoders.base import SequentialEncoder


class MostPop(SequentialEncoder):
    def __init__(self, n_items: int, max_length: int = 1):
        super().__init__()
        self.n_items, self.hidden_size, self.max_length = n_items, 1, max_length
        self.register_buffer("scores", torch.zeros(n_items + 1, 1))

    def fit(self, sequences: Iterable[np.ndarray]) -> MostPop:
        """Count each item's occurrences in `sequences` (the training sequences only)."""
        counts = np.zeros(self.n_items + 1, dtype=np.float64)
        for seq in sequences:
            np.add.at(counts, np.asarray(seq, dtype=np.int64), 1.0)
        ids = np.arange(self.n_items + 1, dtype=np.float64)
        score = counts * (self.n_items + 1) + (self.n_items + 1 - ids)
        score[0] = 0.0
        self.scores.copy_(torch.as_tensor(score, dtype=torch.float32).view(-1, 1))
        return self

    def forward(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.ones(item_seq.size(0), 1, device=self.scores.device)  # [B, 1]

    def item_embeddings(self) -> torch.Tensor:
        return self.scores  # [n_items + 1, 1]


__all__ = ["MostPop"]
