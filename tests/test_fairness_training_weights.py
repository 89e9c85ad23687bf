"""Fairness reweighting wired into training: `--fairness-weights` gives every training sample its own weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_llm_support import MeanEncoder, tiny_config

from llmrec.evaluation.groups import item_groups
from llmrec.evaluation.fairness_weights import group_weights, sample_weights, training_sample_weights
from llmrec.llm.datamodule import LLMDataModule
from llmrec.llm.hybrid import answer_token_losses
from llmrec.llm.train import build_recommender


def test_weights_cover_the_whole_training_split_with_mean_one(small_data):
    w = training_sample_weights(small_data, "popularity")
    train = small_data.split("train")
    assert w.shape == (len(train),) and w.mean() == pytest.approx(1.0) and w.std() > 0
    groups = item_groups(small_data, "popularity")
    by_hand = sample_weights(train["target"].to_numpy(),
                             group_weights(train["history"].tolist(), train["target"].to_numpy(), groups), groups)
    np.testing.assert_allclose(w, by_hand)


def test_sft_batches_carry_each_samples_own_weight_and_the_loss_uses_it(small_data, tmp_path):
    lm, _ = build_recommender(tiny_config(tmp_path), small_data, MeanEncoder(small_data.n_items))
    w = training_sample_weights(small_data, "popularity")
    train = small_data.split("train").assign(weight=w)
    weight_of = {(u, p): x for u, p, x in zip(train["user_id"], train["position"], w)}
    dm = LLMDataModule(train, small_data.split("valid"), lm.builder, 8, 4, seed=0)
    batch = next(iter(dm.train_dataloader()))  # shuffled: weights must follow their samples
    expected = [weight_of[(int(u), int(p))] for u, p in zip(batch.user_id, batch.position)]
    torch.testing.assert_close(batch.weights, torch.tensor(expected, dtype=torch.float32))
    lm.eval()
    with torch.no_grad():
        weighted, plain = lm.loss(batch, weights=batch.weights), lm.loss(batch)
        sums, counts = answer_token_losses(*lm.answer_logits(batch))
    torch.testing.assert_close(weighted, (batch.weights * sums).sum() / counts.sum())  # per sample
    assert not torch.isclose(weighted, plain)
    no_weights = next(iter(LLMDataModule(small_data.split("train"), small_data.split("valid"), lm.builder, 8, 4)
                           .train_dataloader()))
    assert no_weights.weights is None
