"""Ranking metrics against values computed by hand (llmrec.evaluation.metrics)."""

import math

import numpy as np
import pytest
import torch

from llmrec.evaluation.metrics import (
    candidate_metrics,
    hit_ratio_at_k,
    mask_seen_items,
    ndcg_at_k,
    target_ranks,
)


def test_ndcg_on_a_five_item_ranking():
    # Scores of 5 items; the target (column 3) is the 3rd best -> rank 2 -> DCG = 1 / log2(2 + 2) = 0.5.
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.5, 0.2]])
    ranks = target_ranks(scores, torch.tensor([3]))
    assert ranks.tolist() == [2]
    assert ndcg_at_k(ranks, 5) == pytest.approx(0.5)
    assert ndcg_at_k(ranks, 2) == 0.0  # outside the top 2
    assert hit_ratio_at_k(ranks, 3) == 1.0 and hit_ratio_at_k(ranks, 2) == 0.0


def test_ndcg_and_hr_averaged_over_samples():
    ranks = torch.tensor([0, 1, 4, 9])  # 1, 1/log2(3), 1/log2(6), outside @5
    expected = (1 + 1 / math.log2(3) + 1 / math.log2(6) + 0) / 4
    assert ndcg_at_k(ranks, 5) == pytest.approx(expected)
    assert hit_ratio_at_k(ranks, 5) == pytest.approx(0.75)
    assert hit_ratio_at_k(ranks, 1) == pytest.approx(0.25)
    assert ndcg_at_k(np.array([0, 0]), 1) == 1.0


def test_ties_count_against_the_target():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 1.0, 0.0]])
    ranks = target_ranks(scores, torch.tensor([0, 2]))
    assert ranks.tolist() == [3, 2]  # all-equal scores: the target is placed last among the ties
    assert hit_ratio_at_k(ranks, 1) == 0.0


def test_mask_seen_items_excludes_history_and_padding_but_keeps_the_target():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    masked = mask_seen_items(scores.clone(), [[1, 2], [1, 3]], targets=torch.tensor([3, 3]))
    assert torch.isinf(masked[:, 0]).all()
    assert torch.isinf(masked[0, 1]) and torch.isinf(masked[0, 2])
    assert masked[1, 3] == 2.0  # a re-consumed target stays ranked
    ranks = target_ranks(masked, torch.tensor([3, 3]))
    assert ranks.tolist() == [0, 1]  # row 1: item 2 (score 3) still beats the target


def test_candidate_metrics_keys_and_values():
    out = candidate_metrics(torch.tensor([0, 2, 19]), prefix="candidates/", ks=(1, 5))
    assert out["candidates/hr@1"] == pytest.approx(1 / 3)
    assert out["candidates/hr@5"] == pytest.approx(2 / 3)
    assert out["candidates/ndcg@5"] == pytest.approx((1 + 0.5) / 3)
    assert math.isnan(hit_ratio_at_k(torch.tensor([]), 1))


def test_nan_target_score_is_ranked_last_not_first() -> None:
    import torch

    from llmrec.evaluation.metrics import target_ranks

    scores = torch.tensor([[0.1, float("nan"), 0.3], [0.5, 0.2, 0.1]])
    assert target_ranks(scores, torch.tensor([1, 0])).tolist() == [2, 0]
