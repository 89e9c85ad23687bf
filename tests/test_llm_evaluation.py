"""Ranking a split with an LLM: `last` decided on the full split, progress lines, metrics from the ranked rows."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from test_llm_support import MeanEncoder, tiny_config, tiny_dataset
from tiny import SMALL_DATA

from llmrec.data.sampling import final_position_mask, ranked_subset
from llmrec.evaluation.ranked_metrics import split_metrics
from llmrec.evaluation.scores import INVALID
from llmrec.llm.ranker import evaluate_split
from llmrec.llm.train import build_recommender
from llmrec.base.progress import progress_line, track


def test_last_is_the_users_final_sample_in_the_full_split_not_in_the_subset():
    split = pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 3], "position": [3, 4, 5, 3, 4, 3]})
    assert final_position_mask(split).tolist() == [False, False, True, False, True, True]
    sub = ranked_subset(split, 4, seed=0)
    full = {(u, p) for u, p in zip(split["user_id"], split["position"])}
    assert len(sub) == 4 and {(u, p) for u, p in zip(sub["user_id"], sub["position"])} <= full
    truly_final = {(1, 5), (2, 4), (3, 3)}
    assert sub["is_last"].tolist() == [(u, p) in truly_final for u, p in zip(sub["user_id"], sub["position"])]


def test_hr1_last_of_a_ranked_subset_counts_only_truly_final_samples(tmp_path):
    data = tiny_dataset(**SMALL_DATA)  # 4 test positions per test user
    lm, _ = build_recommender(tiny_config(tmp_path), data, MeanEncoder(data.n_items))
    test = data.split("test")
    final = set(zip(test["user_id"], test["position"])) & {
        (u, p) for u, p, last in zip(test["user_id"], test["position"], final_position_mask(test)) if last}
    metrics, ranked = evaluate_split(lm.eval(), data, "test", max_samples=5, seed=3)
    sampled = set(zip(ranked["user_id"], ranked["position"]))
    assert metrics["n_users_last"] == len(sampled & final)
    # the old rule (latest sampled row per user) would call more rows "last" here
    latest_sampled = ranked.groupby("user_id")["position"].transform("max") == ranked["position"]
    assert int(latest_sampled.sum()) > metrics["n_users_last"]
    hits = ranked["chosen"].to_numpy() == ranked["target"].to_numpy()
    assert metrics["hr@1_last"] == pytest.approx(hits[ranked["is_last"].to_numpy()].mean())


def test_metrics_from_ranked_rows_by_hand():
    ranked = pd.DataFrame({"user_id": [1, 2, 3, 4], "position": [3, 3, 3, 3], "target": [5, 6, 7, 8],
                           "candidates": [[5, 1, 2], [1, 6, 2], [1, 2, 7], [8, 1, 2]],
                           "scores": [[0.0, -1.0, -2.0], [0.0, -1.0, -2.0], [0.0, -1.0, -2.0], [-3.0, -1.0, -2.0]],
                           "chosen": [5, 1, 1, 1], "is_last": [True] * 4, "text": [""] * 4})
    m = split_metrics(ranked, "score")
    # target ranks 0, 1, 2, 2 -> hr@1 1/4, ndcg@5 (1 + 1/log2(3) + 2/log2(4)) / 4
    assert m["hr@1"] == 0.25 and m["candidates/ndcg@5"] == pytest.approx((1 + 1 / np.log2(3) + 1.0) / 4)
    assert "hr@1_last" not in m  # one sample per user, all final: the `last` set is the whole set
    generated = ranked.assign(chosen=[5, INVALID, 7, 1])
    g = split_metrics(generated, "generate")
    assert (g["hr@1"], g["valid_ratio"], g["hr@1_valid"]) == (0.5, 0.75, pytest.approx(2 / 3))


def test_long_loops_report_rate_and_time_left_as_plain_lines_off_a_terminal(caplog):
    assert progress_line("ranking test", 120, 1200, 10.0, "samples") == \
        "ranking test: 120/1,200 samples (10%), 12.0 samples/s, 1m30s left"
    with caplog.at_level(logging.INFO, logger="llmrec.progress"):
        assert list(track(range(5), "ranking", total=10, unit="samples", size=lambda i: 2, every=0.0, bar=False)) \
            == list(range(5))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6 and lines[0].startswith("ranking: 2/10 samples (20%)") and lines[-1].endswith("(done)")
    assert all("\r" not in line and "\x1b" not in line for line in lines)  # no terminal control characters


# ------------------------------------------------------------------------------------- score normalisation


def test_normalise_scores_by_hand_and_the_mean_can_flip_the_ranking():
    import torch

    from llmrec.llm.ranking import normalise_scores

    # candidate 0: a 4-token answer, log-probs -1, -2, -1, -2 (sum -6); candidate 1: 2 tokens, -2, -2 (sum -4)
    summed = torch.tensor([[-6.0, -4.0], [-3.0, -9.0]])
    lengths = torch.tensor([[4, 2], [3, 3]])
    assert normalise_scores(summed, lengths, "sum") is summed  # the default rule leaves the sums untouched
    mean = normalise_scores(summed, lengths, "mean")
    assert mean.tolist() == [[-1.5, -2.0], [-1.0, -3.0]]
    assert summed.argmax(1).tolist() == [1, 0] and mean.argmax(1).tolist() == [0, 0]  # the long title wins
    with pytest.raises(ValueError, match="unknown score normalisation 'max'"):
        normalise_scores(summed, lengths, "max")  # type: ignore[arg-type]


def test_mean_scoring_divides_each_candidates_summed_logprob_by_its_answer_length(tmp_path):
    import torch

    from llmrec.llm.datamodule import prompt_loader
    from llmrec.llm.logprobs import sequence_logprobs
    from llmrec.llm.ranking import rank, score_candidates

    data = tiny_dataset(**SMALL_DATA,
                        titles=[" ".join(["Long"] * (1 + i % 4)) + f" Title {i}" for i in range(24)])
    lm, facts = build_recommender(tiny_config(tmp_path, score_norm="mean"), data, MeanEncoder(data.n_items))
    assert lm.score_norm == "mean" and facts.score_norm == "mean"
    lm.eval()
    batch = next(iter(prompt_loader(data.split("test"), lm.builder, 3, with_answer=False)))
    lengths = torch.tensor([[len(lm.builder.answer_ids[c]) for c in row] for row in batch.candidates.tolist()])
    assert len(set(lengths.flatten().tolist())) > 1  # answers of different lengths: the rule matters
    with torch.no_grad():
        summed = sequence_logprobs(lm, batch, batch.candidates)
    mean = score_candidates(lm, batch)
    torch.testing.assert_close(mean, summed / lengths, rtol=1e-4, atol=1e-5)
    ranking = rank(lm, batch, "score")  # what evaluation, validation and serving call
    torch.testing.assert_close(ranking.scores, mean)
    assert ranking.chosen == [int(batch.candidates[b, mean[b].argmax()]) for b in range(3)]
    lm.score_norm = "sum"
    torch.testing.assert_close(score_candidates(lm, batch), summed, rtol=1e-4, atol=1e-4)
