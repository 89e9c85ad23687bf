"""Caser: convolutional sequence embedding.

Reference: Jiaxi Tang and Ke Wang. "Personalized Top-N Sequential Recommendation via Convolutional Sequence
Embedding." WSDM 2018. https://arxiv.org/abs/1809.07426

What differs from the paper:
- No user embedding P_u: the representation is a function of the history alone, so the encoder also serves
  users it never saw in training (valid/test users of the `llara` protocol, new users at serving time).
- Items are scored by inner product between `dense(z)` and the shared input item embeddings (the paper has
  separate output embeddings W' and biases b' over [z; P_u]).
- Trained on every position with full-softmax cross-entropy by default (the paper: binary cross-entropy with
  sampled negatives on the next T items).
- `max_length` is the paper's window L: only the most recent L items count; shorter histories are filled with
  the (all-zero) padding embedding, so extra left padding never changes the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmrec.encoders.base import SequentialEncoder, keep_most_recent


class Caser(SequentialEncoder):
    """Horizontal (union-level) and vertical (point-level) convolutions over the last `max_length` items."""

    def __init__(self, n_items: int, hidden_size: int = 64, max_length: int = 5, num_horizontal: int = 16,
                 num_vertical: int = 4, dropout: float = 0.5):
        super().__init__()
        self.n_items, self.hidden_size, self.max_length = n_items, hidden_size, max_length
        self.item_emb = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)
        self.vertical = nn.Conv2d(1, num_vertical, (max_length, 1))
        self.horizontal = nn.ModuleList(nn.Conv2d(1, num_horizontal, (h, hidden_size))
                                        for h in range(1, max_length + 1))
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(num_vertical * hidden_size + num_horizontal * max_length, hidden_size)
        nn.init.normal_(self.item_emb.weight, std=1.0 / hidden_size)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def _encode_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """[N, W] item ids (W = max_length) -> [N, H]."""
        e = self.item_emb(windows).unsqueeze(1)  # [N, 1, W, H]
        v = self.vertical(e).flatten(1)  # [N, n_v * H]
        hs = [F.relu(conv(e).squeeze(3)).amax(dim=2) for conv in self.horizontal]  # each [N, n_h]
        z = torch.cat([v, *hs], dim=1)
        return F.relu(self.fc(self.drop(z)))  # [N, H]

    def forward_all(self, item_seq: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, L, H]: position j is encoded from the window of items ending at j."""
        B, L = item_seq.shape
        padded = F.pad(item_seq, (self.max_length - 1, 0))  # [B, L + W - 1]
        windows = padded.unfold(1, self.max_length, 1)  # [B, L, W]
        return self._encode_windows(windows.reshape(B * L, self.max_length)).view(B, L, -1)

    def forward(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        item_seq, lengths = keep_most_recent(item_seq, lengths, self.max_length)
        window = F.pad(item_seq, (self.max_length - item_seq.size(1), 0))  # [B, W]
        return self._encode_windows(window)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight


__all__ = ["Caser"]
