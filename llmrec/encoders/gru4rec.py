"""GRU4Rec: session-based recommendation with recurrent neural networks.

Reference: Balázs Hidasi, Alexandros Karatzoglou, Linas Baltrunas and Domonkos Tikk. "Session-based
Recommendations with Recurrent Neural Networks." ICLR 2016. https://arxiv.org/abs/1511.06939

What differs from the paper:
- Item ids go through an embedding layer (the paper feeds one-hot vectors), followed by dropout; a linear
  layer maps the GRU state back to the item-embedding space and items are scored by inner product with the
  (shared) input item embeddings, as in RecBole's GRU4Rec.
- Trained on whole user histories with full-softmax cross-entropy at every position (default), not with
  session-parallel mini-batches and the paper's TOP1/BPR ranking losses over in-batch negatives.
- Left-padded batches are packed (`pack_padded_sequence`), so padding never enters the recurrence: the
  output does not depend on how much left padding a batch carries.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from llmrec.encoders.base import SequentialEncoder, keep_most_recent


def _left_to_right(item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Roll each left-padded row so its items start at column 0 (and back again with `-lengths`)."""
    L = item_seq.size(1)
    cols = (torch.arange(L, device=item_seq.device)[None, :] + (L - lengths)[:, None]) % L  # [B, L]
    index = cols if item_seq.dim() == 2 else cols[..., None].expand_as(item_seq)
    return item_seq.gather(1, index)


def _right_to_left(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    L = x.size(1)
    cols = (torch.arange(L, device=x.device)[None, :] - (L - lengths)[:, None]) % L  # [B, L]
    index = cols if x.dim() == 2 else cols[..., None].expand_as(x)
    return x.gather(1, index)


class GRU4Rec(SequentialEncoder):
    """Embedding -> dropout -> GRU -> linear; the final GRU state represents the history."""

    def __init__(self, n_items: int, hidden_size: int = 64, num_layers: int = 1, dropout: float = 0.3,
                 max_length: int = 200, gru_size: int | None = None):
        super().__init__()
        self.n_items, self.hidden_size, self.max_length = n_items, hidden_size, max_length
        gru_size = gru_size or 2 * hidden_size
        self.item_emb = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)
        self.emb_drop = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden_size, gru_size, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.out_drop = nn.Dropout(dropout)
        self.dense = nn.Linear(gru_size, hidden_size)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def _run(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed GRU over left-padded input -> (per-position states [B, L, G] right-padded, final [B, G])."""
        right = _left_to_right(item_seq, lengths)  # [B, L], items first
        x = self.emb_drop(self.item_emb(right))  # [B, L, H]
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, h_n = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=item_seq.size(1))  # [B, L, G]
        return out, h_n[-1]  # h_n: [layers, B, G]

    def forward_all(self, item_seq: torch.Tensor) -> torch.Tensor:
        lengths = (item_seq > 0).sum(dim=1)
        out, _ = self._run(item_seq, lengths)
        return self.dense(self.out_drop(_right_to_left(out, lengths)))  # [B, L, H]

    def forward(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        item_seq, lengths = keep_most_recent(item_seq, lengths, self.max_length)
        _, last = self._run(item_seq, lengths)
        return self.dense(self.out_drop(last))  # [B, H]

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight


__all__ = ["GRU4Rec"]
