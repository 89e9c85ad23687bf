"""Training losses for next-item prediction, as pure functions (shapes in the docstrings)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def full_softmax_loss(seq_out: torch.Tensor, item_emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the target against every real item (softmax over the whole catalog).

    Args:
        seq_out: [N, H] states that predict the next item.
        item_emb: [n_items + 1, H] output item embeddings; row 0 (padding) is never a candidate.
        targets: [N] item ids in 1..n_items.
    Returns:
        scalar mean loss.
    """
    logits = seq_out @ item_emb.T  # [N, n_items + 1]
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits, targets)


def sampled_bce_loss(seq_out: torch.Tensor, item_emb: torch.Tensor, targets: torch.Tensor,
                     negatives: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the target (label 1) against sampled negatives (label 0), as in SASRec's paper.

    Args:
        seq_out: [N, H]; item_emb: [n_items + 1, H]; targets: [N]; negatives: [N, M] item ids in 1..n_items.
    Returns:
        scalar: mean over samples of -log s(pos) - sum_j log(1 - s(neg_j)), where s is the sigmoid.
    """
    pos = (seq_out * item_emb[targets]).sum(-1)  # [N]
    neg = torch.einsum("nh,nmh->nm", seq_out, item_emb[negatives])  # [N, M]
    return (F.softplus(-pos) + F.softplus(neg).sum(-1)).mean()


def sample_negatives(targets: torch.Tensor, n_items: int, num_negatives: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """[N] targets -> [N, M] ids drawn uniformly from 1..n_items, redrawn once where one equals the target.

    A negative may still be an item the user saw elsewhere in the sequence (cheap sampling, as in the paper's
    code, which only avoids the sequence's items approximately).
    """
    shape = (targets.numel(), num_negatives)
    neg = torch.randint(1, n_items + 1, shape, generator=generator, device=targets.device)
    clash = neg == targets.view(-1, 1)
    if clash.any():
        neg[clash] = torch.randint(1, n_items + 1, (int(clash.sum()),), generator=generator,
                                   device=targets.device)
    return neg
