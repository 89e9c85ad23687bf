"""The projector: maps encoder behavioural embeddings into the LLM's input-embedding space (LLaRA, Liao et al.
2024, "LLaRA: Large Language-Recommendation Assistant", SIGIR; docs/design.md §5).

A two-layer MLP `H_enc -> H_llm -> H_llm` with GELU, trained jointly with the LoRA adapter while the encoder
stays frozen. Its output replaces the embedding of each behavioural slot token (`llmrec.llm.hybrid`).
"""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    """`[..., H_enc] -> [..., H_llm]`: Linear, GELU, Linear."""

    def __init__(self, encoder_hidden: int, llm_hidden: int):
        super().__init__()
        self.encoder_hidden, self.llm_hidden = encoder_hidden, llm_hidden
        self.net = nn.Sequential(nn.Linear(encoder_hidden, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
