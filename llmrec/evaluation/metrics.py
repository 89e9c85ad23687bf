"""Ranking metrics for next-item recommendation with one relevant item per sample (docs/design.md §8).

Ranks are 0-based: rank 0 means the target was ranked first. Ties count against the model (the target is
placed after every other item with the same score), so a model that scores everything equally gets
HR@1 = 0 rather than 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def target_ranks(scores: torch.Tensor, target_index: torch.Tensor) -> torch.Tensor:
    """0-based rank of each sample's target among its scored items.

    Args:
        scores: [B, C] scores, higher is better; -inf marks items that are not ranked at all.
        target_index: [B] column of the target in `scores`.
    Returns:
        [B] long tensor: number of other items scored >= the target.
    """
    target_scores = scores.gather(1, target_index.view(-1, 1))  # [B, 1]
    ranks = (scores >= target_scores).sum(dim=1) - 1
    # A NaN target score compares false with everything and would look like a hit: rank it last instead,
    # so a diverged model cannot score well.
    return torch.where(torch.isnan(target_scores.squeeze(1)), torch.full_like(ranks, scores.shape[1] - 1), ranks)


def hit_ratio_at_k(ranks: torch.Tensor | np.ndarray, k: int) -> float:
    """HR@k = share of samples whose target is in the top k (Hit Ratio)."""
    ranks = torch.as_tensor(ranks)
    return float((ranks < k).float().mean()) if ranks.numel() else float("nan")


def ndcg_at_k(ranks: torch.Tensor | np.ndarray, k: int) -> float:
    """NDCG@k with a single relevant item: mean of 1 / log2(rank + 2) over samples with rank < k.

    With one relevant item the ideal DCG is 1, so NDCG equals DCG (Järvelin & Kekäläinen, 2002).
    """
    ranks = torch.as_tensor(ranks).double()
    if not ranks.numel():
        return float("nan")
    gains = torch.where(ranks < k, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
    return float(gains.mean())


def mask_seen_items(scores: torch.Tensor, seen: Sequence[Sequence[int] | np.ndarray],
                    targets: torch.Tensor | None = None) -> torch.Tensor:
    """Full ranking: set padding (id 0) and each user's already-seen items to -inf, in place.

    Args:
        scores: [B, n_items + 1] scores over the whole catalog.
        seen: per sample, the item ids interacted with before the target.
        targets: [B] target ids; a target that also appears in `seen` (a re-consumed item) stays ranked.
    """
    scores[:, 0] = float("-inf")
    rows = np.concatenate([np.full(len(s), i) for i, s in enumerate(seen)]) if len(seen) else np.zeros(0, int)
    cols = np.concatenate([np.asarray(s, dtype=np.int64) for s in seen]) if len(seen) else np.zeros(0, int)
    if len(rows):
        keep = scores[torch.as_tensor(np.arange(len(seen))), targets] if targets is not None else None
        scores[torch.as_tensor(rows), torch.as_tensor(cols)] = float("-inf")
        if targets is not None:
            scores[torch.arange(len(seen)), targets] = keep
    return scores


def candidate_metrics(ranks: torch.Tensor, prefix: str = "candidates/", ks: Sequence[int] = (1, 5, 10)
                      ) -> dict[str, float]:
    """`{prefix}hr@k` and `{prefix}ndcg@k` for each k."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"{prefix}hr@{k}"] = hit_ratio_at_k(ranks, k)
        out[f"{prefix}ndcg@{k}"] = ndcg_at_k(ranks, k)
    return out


def choice_metrics(predicted: Sequence[int | None], targets: Sequence[int]) -> dict[str, float]:
    """Metrics of a single choice per sample, as LLaRA reports them for generation.

    `predicted[i]` is the chosen item id, or None when the output named no candidate (invalid).
    hr@1 = correct / N; hr@1_valid = correct / valid; valid_ratio = valid / N.
    """
    n = len(targets)
    if n == 0:
        return {"hr@1": float("nan"), "hr@1_valid": float("nan"), "valid_ratio": float("nan")}
    valid = sum(p is not None for p in predicted)
    correct = sum(p is not None and int(p) == int(t) for p, t in zip(predicted, targets))
    return {"hr@1": correct / n, "hr@1_valid": correct / valid if valid else 0.0, "valid_ratio": valid / n}
