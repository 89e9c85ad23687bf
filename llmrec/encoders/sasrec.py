"""SASRec: self-attentive sequential recommendation.

Reference: Wang-Cheng Kang and Julian McAuley. "Self-Attentive Sequential Recommendation." ICDM 2018.
https://arxiv.org/abs/1808.09781

What differs from the paper:
- Trained with full-softmax cross-entropy over all items by default (the paper uses binary cross-entropy
  with one sampled negative per position); `llmrec.encoders.losses` offers both.
- Pre-LayerNorm blocks (`x + Dropout(Attn(LN(x)))`, `x + Dropout(FFN(LN(x)))`) with a GELU feed-forward of
  width `ffn_size` (default 4 * hidden) and a final LayerNorm; the paper's block normalises the query only and
  uses a ReLU feed-forward of width `hidden`. Item embeddings are not scaled by sqrt(hidden).
- Dropout on the attention probabilities is a separate knob (`attn_dropout`, default 0: on CPU it costs about
  as much as the attention itself; values above 0 have not been tuned).
- Learned positions are counted from the most recent item (column L-1 of a left-padded batch always gets
  position `max_length - 1`), which is what the paper's fixed-length left padding amounts to and makes the
  output independent of how much left padding a batch carries.
- Input and output item embeddings are shared (as in the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmrec.encoders.base import SequentialEncoder, keep_most_recent


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position j sees positions <= j that are not padding."""

    def __init__(self, hidden_size: int, num_heads: int, attn_dropout: float):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.dropout = attn_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x: [B, L, H]; mask: [B, 1, L, L] bool, True where attention is allowed.

        Returns [B, L, H], or [B, 1, H] for the last position only when `last_only` (inference).
        """
        B, L, H = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, H // self.num_heads).permute(2, 0, 3, 1, 4)
        if last_only:
            q, mask = q[:, :, -1:], mask[:, :, -1:]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # [B, nh, Lq, hd]
        return self.out(y.transpose(1, 2).reshape(B, q.size(2), H))


class Block(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, ffn_size: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden_size)
        self.attn = CausalSelfAttention(hidden_size, num_heads, attn_dropout)
        self.ln2 = nn.LayerNorm(hidden_size)
        self.ffn = nn.Sequential(nn.Linear(hidden_size, ffn_size), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_size, hidden_size))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """[B, L, H] -> [B, L, H] (or [B, 1, H], the last position, when `last_only`)."""
        x = (x[:, -1:] if last_only else x) + self.drop(self.attn(self.ln1(x), mask, last_only))
        return x + self.drop(self.ffn(self.ln2(x)))


class SASRec(SequentialEncoder):
    """Causal Transformer over the item sequence; the last position's state represents the history."""

    def __init__(self, n_items: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 1,
                 dropout: float = 0.2, max_length: int = 200, ffn_size: int | None = None,
                 attn_dropout: float = 0.0):
        super().__init__()
        self.n_items, self.hidden_size, self.max_length = n_items, hidden_size, max_length
        self.item_emb = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)
        self.pos_emb = nn.Embedding(max_length, hidden_size)
        self.emb_ln = nn.LayerNorm(hidden_size)
        self.emb_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden_size, num_heads, ffn_size or 4 * hidden_size, dropout,
                                          attn_dropout) for _ in range(num_layers))
        self.final_ln = nn.LayerNorm(hidden_size)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    def forward_all(self, item_seq: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """[B, L] left-padded (L <= max_length) -> [B, L, H] state after each position.

        `last_only`: the last block computes the most recent position only ([B, 1, H]); same values, less work.
        """
        L = item_seq.size(1)
        if L > self.max_length:
            raise ValueError(f"sequence width {L} exceeds max_length {self.max_length}")
        positions = torch.arange(self.max_length - L, self.max_length, device=item_seq.device)  # [L]
        x = self.emb_drop(self.emb_ln(self.item_emb(item_seq) + self.pos_emb(positions)))  # [B, L, H]
        real = item_seq > 0  # [B, L]
        causal = torch.ones(L, L, dtype=torch.bool, device=item_seq.device).tril()  # [L, L]
        # A query may attend to real keys at or before it; every query may attend to itself, so padded rows
        # are never fully masked (their outputs are ignored, and real rows never attend to them).
        eye = torch.eye(L, dtype=torch.bool, device=item_seq.device)
        mask = ((causal & real[:, None, :]) | eye)[:, None]  # [B, 1, L, L]
        for i, block in enumerate(self.blocks):
            x = block(x, mask, last_only=last_only and i == len(self.blocks) - 1)
        return self.final_ln(x)

    def forward(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        item_seq, lengths = keep_most_recent(item_seq, lengths, self.max_length)
        # left padding: the last column is the most recent item
        return self.forward_all(item_seq, last_only=True)[:, -1]

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight


__all__ = ["SASRec"]
