"""Item-side fairness (llmrec.fairness): groups, GH/GP/GU/MGU/DGU, reweighting and re-ranking against values
computed by hand, and the processed-data plumbing of the groups (training interactions only)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from data_fixtures import GENRES, write_grouplens_100k, write_lastfm

from llmrec.data.dataset import ProcessedDataset
from llmrec.data.prepare import PrepareConfig, prepare
from llmrec.base.errors import ConfigError, DataError
from llmrec.evaluation.groups import (
    ItemGroups,
    genre_groups,
    item_groups,
    popularity_groups,
)
from llmrec.evaluation.fairness_metrics import (
    dgu,
    fairness_metrics,
    group_share_of_history,
    group_share_of_recommendations,
    group_unfairness,
    mgu,
    rank_candidates,
)
from llmrec.fairness.rerank import (
    choose_alpha,
    group_adjustment,
    item_adjustment,
    rerank_scores,
)
from llmrec.evaluation.fairness_weights import group_weights, sample_weights
from llmrec.preference.losses import weighted_mean


# --------------------------------------------------------------------------------------------- the toy catalog
# Three genres A, B, C and five items: 1 -> A, 2 -> B, 3 -> C, 4 -> A, 5 -> B and C (the multi-group item).
def toy_groups(split_multi: bool = False) -> ItemGroups:
    items = pd.DataFrame({"item_id": [1, 2, 3, 4, 5],
                          "genres": [["A"], ["B"], ["C"], ["A"], ["B", "C"]]})
    return genre_groups(items, n_items=5, split_multi=split_multi)


HISTORIES = [[1, 2, 5], [4, 1, 3]]
RANKED = np.array([[5, 1, 3, 2],
                   [2, 5, 4, 3]])


def test_genre_membership_multi_hot_and_split():
    g = toy_groups()
    assert g.names == ["A", "B", "C"]
    assert g.membership.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]]
    assert toy_groups(split_multi=True).membership[5].tolist() == [0, 0.5, 0.5]


def test_group_shares_by_hand_multi_hot():
    g = toy_groups()
    # History masses: h1 = {1: A, 2: B, 5: B+C} -> A 1, B 2, C 1; h2 = {4: A, 1: A, 3: C} -> A 2, C 1.
    # Totals A 3, B 2, C 2 out of 7 (item 5 counts once in each of its genres).
    gh = group_share_of_history(HISTORIES, g)
    np.testing.assert_allclose(gh, [3 / 7, 2 / 7, 2 / 7])
    # Top-1 slots: item 5 (B, C) and item 2 (B) -> A 0, B 2, C 1 out of 3.
    gp1 = group_share_of_recommendations(RANKED, g, k=1)
    np.testing.assert_allclose(gp1, [0, 2 / 3, 1 / 3])
    # Top-2 slots: {5, 1} -> A 1, B 1, C 1; {2, 5} -> B 2, C 1; total A 1, B 3, C 2 out of 6.
    np.testing.assert_allclose(group_share_of_recommendations(RANKED, g, k=2), [1 / 6, 3 / 6, 2 / 6])

    gu1 = group_unfairness(gp1, gh)
    np.testing.assert_allclose(gu1, [-9 / 21, 8 / 21, 1 / 21])  # 2/3 - 2/7 = 8/21; 1/3 - 2/7 = 1/21
    assert mgu(gu1) == pytest.approx((9 / 21 + 8 / 21 + 1 / 21) / 3)  # = 2/7
    assert dgu(gu1) == pytest.approx(8 / 21 + 9 / 21)  # = 17/21


def test_group_shares_by_hand_split_multi():
    g = toy_groups(split_multi=True)
    # Item 5 now counts 1/2 in B and 1/2 in C: histories A 3, B 1.5, C 1.5 out of 6.
    np.testing.assert_allclose(group_share_of_history(HISTORIES, g), [1 / 2, 1 / 4, 1 / 4])
    # Top-1: item 5 (B 0.5, C 0.5) and item 2 (B 1) -> A 0, B 1.5, C 0.5 out of 2 slots.
    np.testing.assert_allclose(group_share_of_recommendations(RANKED, g, k=1), [0, 3 / 4, 1 / 4])


def test_fairness_metrics_keys_and_values():
    out = fairness_metrics(RANKED, HISTORIES, toy_groups(), ks=(1, 2))
    assert out["mgu@1"] == pytest.approx(2 / 7)
    assert out["dgu@1"] == pytest.approx(17 / 21)
    assert out["gu@1/A"] == pytest.approx(-3 / 7)
    assert out["gu@1/B"] == pytest.approx(8 / 21)
    assert out["gu@1/C"] == pytest.approx(1 / 21)
    # K = 2: GP = (1/6, 1/2, 1/3), GH = (3/7, 2/7, 2/7) -> GU = (-11/42, 9/42, 2/42).
    assert out["gu@2/A"] == pytest.approx(-11 / 42)
    assert out["mgu@2"] == pytest.approx((11 + 9 + 2) / 42 / 3)
    assert out["dgu@2"] == pytest.approx(20 / 42)
    assert set(out) == {f"{m}@{k}" for m in ("mgu", "dgu") for k in (1, 2)} | {
        f"gu@{k}/{n}" for k in (1, 2) for n in "ABC"}


def test_padding_and_ungrouped_items_count_for_nothing():
    items = pd.DataFrame({"item_id": [1, 2, 3], "genres": [["A"], ["B"], []]})
    g = genre_groups(items, n_items=3)
    # History [0 (padding), 1, 3 (no genre), 2, 1]: A 2, B 1 out of 3.
    np.testing.assert_allclose(group_share_of_history([[0, 1, 3, 2, 1]], g), [2 / 3, 1 / 3])


def test_rank_candidates_best_first_and_stable_ties():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [-np.inf, 2.0, 2.0, 1.0]])
    cands = np.array([[11, 12, 13, 14], [21, 22, 23, 24]])
    assert rank_candidates(scores, cands).tolist() == [[12, 14, 13, 11], [22, 23, 24, 21]]


# ------------------------------------------------------------------------------------------------ popularity
def test_popularity_groups_by_hand():
    # counts: item 1 -> 1, 2 -> 2, 3 -> 3, 4 -> 1, 5 -> 0, 6 -> 0 (never seen in training)
    g = popularity_groups([np.array([1, 2, 3]), np.array([2, 3]), np.array([3, 4])], n_items=6, n_groups=3)
    assert g.names == ["pop0", "pop1", "pop2"]  # pop0 = least popular
    groups_of = {i: int(np.argmax(g.membership[i])) for i in range(1, 7)}
    assert groups_of == {5: 0, 6: 0, 1: 1, 4: 1, 2: 2, 3: 2}
    assert g.edges == [(0, 0), (1, 1), (2, 3)]
    assert g.membership[0].tolist() == [0, 0, 0] and g.membership.sum() == 6
    assert g.to_dict() == {"kind": "popularity", "names": ["pop0", "pop1", "pop2"], "n_items": 6,
                           "sizes": [2, 2, 2], "edges": [[0, 0], [1, 1], [2, 3]], "split_multi": False}


def test_popularity_ties_broken_by_item_id_whatever_the_input_order():
    # All three items are seen once: ties are ordered by item id, so 1 and 2 are pop0 and 3 is pop1.
    for seqs in ([[3, 1, 2]], [[2], [1, 3]], [[1, 2, 3]]):
        g = popularity_groups([np.array(s) for s in seqs], n_items=3, n_groups=2)
        assert g.membership[1:].tolist() == [[1, 0], [1, 0], [0, 1]]
        assert g.edges == [(1, 1), (1, 1)]


@pytest.fixture(scope="module")
def ml_dataset(tmp_path_factory) -> ProcessedDataset:
    raw = write_grouplens_100k(tmp_path_factory.mktemp("raw"))
    return prepare(PrepareConfig(dataset="ml-100k", raw=raw, out=tmp_path_factory.mktemp("p") / "ml",
                                 download=False))


def _with_interactions(ds: ProcessedDataset, user: int, items: list[int]) -> ProcessedDataset:
    """A copy of `ds` where `user` also interacted with `items` (after everything else)."""
    extra = pd.DataFrame({"user_id": user, "item_id": items, "timestamp": 10**10 + np.arange(len(items))})
    inter = pd.concat([ds.interactions, extra], ignore_index=True)
    inter = inter.iloc[np.argsort(inter["user_id"].to_numpy(), kind="stable")].reset_index(drop=True)
    return dataclasses.replace(ds, interactions=inter, _sequences=None)


def test_popularity_groups_use_training_interactions_only(ml_dataset):
    ds = ml_dataset
    g = item_groups(ds, "popularity")
    # By hand: count the items of train users only.
    train_users = set(ds.users.loc[ds.users["split"] == "train", "user_id"])
    counts = ds.interactions[ds.interactions["user_id"].isin(train_users)]["item_id"].value_counts()
    counts = np.array([0] + [int(counts.get(i, 0)) for i in range(1, ds.n_items + 1)])
    order = sorted(range(1, ds.n_items + 1), key=lambda i: (counts[i], i))
    sizes = [len(c) for c in np.array_split(np.arange(ds.n_items), 5)]
    expected, start = {}, 0
    for grp, size in enumerate(sizes):
        expected.update({i: grp for i in order[start:start + size]})
        start += size
    assert {i: int(np.argmax(g.membership[i])) for i in range(1, ds.n_items + 1)} == expected

    # Many more interactions of a test user with the least popular item do not move anything ...
    test_user = int(ds.users.loc[ds.users["split"] == "test", "user_id"].iloc[0])
    least = order[0]
    moved = item_groups(_with_interactions(ds, test_user, [least] * 50), "popularity")
    np.testing.assert_array_equal(moved.membership, g.membership)
    assert moved.edges == g.edges
    # ... while the same interactions of a train user would (so the check above can fail).
    train_user = int(ds.users.loc[ds.users["split"] == "train", "user_id"].iloc[0])
    leaked = item_groups(_with_interactions(ds, train_user, [least] * 50), "popularity")
    assert leaked.membership[least].tolist() != g.membership[least].tolist()


def test_genre_groups_from_processed_items(ml_dataset):
    ds = ml_dataset
    g = item_groups(ds, "genre")
    assert g.names == ["Comedy", "Drama", "Romance"]
    for item_id, raw_id in zip(ds.items["item_id"], ds.items["raw_id"]):
        want = [1, 0, 0] if int(raw_id) % 2 else [0, 1, 1]  # fixture: odd raw ids Comedy, even Drama+Romance
        assert GENRES[int(raw_id)] == (["Comedy"] if int(raw_id) % 2 else ["Drama", "Romance"])
        assert g.membership[int(item_id)].tolist() == want
    split = item_groups(ds, "genre", split_multi=True)
    even = int(ds.items.loc[ds.items["raw_id"].astype(int) % 2 == 0, "item_id"].iloc[0])
    assert split.membership[even].tolist() == [0, 0.5, 0.5]


# --------------------------------------------------------------------------------------------------- weights
def test_group_weights_and_sample_weights_by_hand():
    g = toy_groups()
    targets = [3, 5, 1, 2, 3]
    # History shares (as above): A 3/7, B 2/7, C 2/7. Target masses: A {1} 1, B {5, 2} 2, C {3, 5, 3} 3 of 6.
    w = group_weights(HISTORIES, targets, g)
    np.testing.assert_allclose(w, [(3 / 7) / (1 / 6), (2 / 7) / (2 / 6), (2 / 7) / (3 / 6)])  # 18/7, 6/7, 4/7
    # Per sample: 3 -> C 4/7; 5 -> mean(B, C) = 5/7; 1 -> A 18/7; 2 -> B 6/7; 3 -> 4/7. Mean 37/35.
    raw = sample_weights(targets, w, g, normalise=False)
    np.testing.assert_allclose(raw, [4 / 7, 5 / 7, 18 / 7, 6 / 7, 4 / 7])
    norm = sample_weights(targets, w, g)
    np.testing.assert_allclose(norm, [20 / 37, 25 / 37, 90 / 37, 30 / 37, 20 / 37])
    assert norm.mean() == pytest.approx(1.0)


def test_group_without_training_targets_gets_neutral_weight():
    g = toy_groups()
    # Targets only in A: W_A = (3/7) / 1; B and C have no target -> 1.0.
    np.testing.assert_allclose(group_weights(HISTORIES, [1, 4], g), [3 / 7, 1.0, 1.0])
    # A target without any group keeps weight 1.
    items = pd.DataFrame({"item_id": [1, 2], "genres": [["A"], []]})
    g2 = genre_groups(items, n_items=2)
    np.testing.assert_allclose(sample_weights([1, 2], np.array([3.0]), g2, normalise=False), [3.0, 1.0])


def test_weights_apply_per_sample_not_per_batch():
    losses = torch.tensor([1.0, 3.0], requires_grad=True)
    weights = torch.tensor([0.5, 1.5])
    per_sample = weighted_mean(losses, weights)
    assert per_sample.item() == pytest.approx((0.5 * 1 + 1.5 * 3) / 2)  # 2.5
    per_sample.backward()
    assert losses.grad.tolist() == pytest.approx([0.25, 0.75])

    # The authors' released code: mean(weights * mean(losses of the micro-batch)) = mean(w) * mean(L).
    losses2 = torch.tensor([1.0, 3.0], requires_grad=True)
    batch_mean = torch.mean(weights * torch.mean(losses2))
    assert batch_mean.item() == pytest.approx(2.0)  # != 2.5
    batch_mean.backward()
    assert losses2.grad.tolist() == pytest.approx([0.5, 0.5])  # both samples weighted alike: the reweighting is lost


# -------------------------------------------------------------------------------------------------- re-ranking
def test_group_and_item_adjustment_by_hand():
    gu = {1: np.array([0.2, -0.1, -0.1]), 5: np.array([0.1, 0.0, -0.1]), 10: np.array([0.05, 0.05, -0.1])}
    # sum_K K * GU / 16 = (1.2, 0.4, -1.6) / 16; divided by max |U| = 1.6 / 16 -> (0.75, 0.25, -1).
    u = group_adjustment(gu)
    np.testing.assert_allclose(u, [0.75, 0.25, -1.0])
    adj = item_adjustment(u, toy_groups())
    # items 0 (padding), 1 A, 2 B, 3 C, 4 A, 5 mean(B, C) = -0.375
    np.testing.assert_allclose(adj, [0.0, 0.75, 0.25, -1.0, 0.75, -0.375])
    np.testing.assert_allclose(group_adjustment({1: np.zeros(3)}), [0, 0, 0])


def test_rerank_scores_by_hand():
    adj = np.array([0.0, 0.75, 0.25, -1.0, 0.75, -0.375])
    scores = np.array([[3.0, 1.0, 2.0]])
    cands = np.array([[1, 3, 5]])
    z = np.sqrt(1.5)  # (3 - 2) / sqrt(2/3)
    np.testing.assert_allclose(rerank_scores(scores, cands, adj, alpha=1.0), [[z - 0.75, -z + 1.0, 0 + 0.375]])
    np.testing.assert_allclose(rerank_scores(scores, cands, adj, alpha=1.0, standardise=False),
                               [[3 - 0.75, 1 + 1.0, 2 + 0.375]])
    # the adjustment reorders: item 5 (0.375) now beats item 3 (-0.22) and falls behind item 1 (0.47)
    assert rank_candidates(rerank_scores(scores, cands, adj, alpha=1.0), cands).tolist() == [[1, 5, 3]]


def test_alpha_zero_leaves_every_ranking_unchanged():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 20)) * 30 - 200  # summed log-probs: large and negative
    scores[0, :5] = scores[0, 5]  # ties
    scores[1, 3] = -np.inf
    cands = np.stack([rng.permutation(np.arange(1, 41))[:20] for _ in range(50)])
    adj = rng.uniform(-1, 1, size=41)
    out = rerank_scores(scores, cands, adj, alpha=0.0)
    np.testing.assert_array_equal(out, scores)
    np.testing.assert_array_equal(rank_candidates(out, cands), rank_candidates(scores, cands))
    # standardising alone (no adjustment) keeps every ranking too
    np.testing.assert_array_equal(rank_candidates(rerank_scores(scores, cands, np.zeros(41), alpha=1.0), cands),
                                  rank_candidates(scores, cands))


def _two_group_case(second_target: int):
    # Items 1, 2 in group A; 3, 4 in B. Both users consumed only B, the model ranks an A item first for both.
    g = ItemGroups(names=["A", "B"], membership=np.array([[0, 0], [1, 0], [1, 0], [0, 1], [0, 1]], float),
                   kind="genre")
    scores = np.array([[2.0, 1.0], [5.0, 4.0]])  # z-scores (1, -1) in both rows
    cands = np.array([[1, 3], [2, 4]])
    targets = np.array([1, second_target])
    return scores, cands, targets, [[3, 4], [3, 4]], g


def test_choose_alpha_picks_the_fairest_alpha_within_the_hr_budget():
    # GH = (0, 1), GP@1 = (1, 0) -> U = (1, -1); final A item = 1 - alpha, B item = -1 + alpha.
    # alpha 0.5: unchanged (hr@1 1/2, MGU 1); alpha 1: ties, counted against the model (hr@1 0, not eligible);
    # alpha 2 and 3: B first in both rows -> sample 1 missed, sample 2 (target 4) hit: hr@1 1/2, MGU 0.
    scores, cands, targets, hist, g = _two_group_case(second_target=4)
    choice = choose_alpha(scores, cands, targets, hist, g, grid=[0.5, 1.0, 2.0, 3.0], ks=(1,), objective_ks=(1,))
    np.testing.assert_allclose(choice.group_adjustment, [1.0, -1.0])
    rows = {r["alpha"]: r for r in choice.table}
    assert [r["alpha"] for r in choice.table] == [0.0, 0.5, 1.0, 2.0, 3.0]
    assert [rows[a]["hr@1"] for a in (0.0, 0.5, 1.0, 2.0, 3.0)] == [0.5, 0.5, 0.0, 0.5, 0.5]
    assert [rows[a]["mgu@1"] for a in (0.0, 0.5, 1.0, 2.0, 3.0)] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert [rows[a]["eligible"] for a in (0.0, 0.5, 1.0, 2.0, 3.0)] == [True, True, False, True, True]
    assert choice.alpha == 2.0  # the fairest; 3.0 ties and the smaller alpha wins


def test_choose_alpha_keeps_zero_when_fairness_costs_accuracy():
    # Target of sample 2 is now item 2 (group A): swapping costs both hits (hr@1 1 -> 0).
    scores, cands, targets, hist, g = _two_group_case(second_target=2)
    choice = choose_alpha(scores, cands, targets, hist, g, grid=[2.0], ks=(1,), objective_ks=(1,))
    assert [(r["alpha"], r["hr@1"], r["eligible"]) for r in choice.table] == [(0.0, 1.0, True), (2.0, 0.0, False)]
    assert choice.alpha == 0.0


# ------------------------------------------------------------------------------------------------ bad inputs
def test_unknown_grouping_is_a_one_line_error(ml_dataset):
    with pytest.raises(ConfigError, match=r"^unknown item grouping 'brand'; expected one of popularity, genre$"):
        item_groups(ml_dataset, "brand")


def test_genre_grouping_without_genres_is_a_one_line_error(tmp_path):
    ds = prepare(PrepareConfig(dataset="lastfm", raw=write_lastfm(tmp_path / "raw"), out=tmp_path / "lastfm"))
    with pytest.raises(ConfigError, match=r"^genre grouping needs genres in items\.parquet; lastfm has none") as e:
        item_groups(ds, "genre")
    assert "\n" not in str(e.value)
    assert item_groups(ds, "popularity").n_groups == 5  # popularity works without genres


def test_k_larger_than_the_ranked_list_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"^K=20 exceeds the 4 ranked items per sample") as e:
        fairness_metrics(RANKED, HISTORIES, toy_groups(), ks=(1, 20))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="K=5 exceeds"):
        group_share_of_recommendations(RANKED, toy_groups(), k=5)


def test_negative_alpha_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"^re-ranking alpha must be >= 0, got -0\.1$"):
        rerank_scores(np.zeros((1, 2)), np.array([[1, 2]]), np.zeros(3), alpha=-0.1)
    scores, cands, targets, hist, g = _two_group_case(second_target=4)
    with pytest.raises(ConfigError, match="alpha must be >= 0"):
        choose_alpha(scores, cands, targets, hist, g, grid=[-1.0], ks=(1,), objective_ks=(1,))


def test_item_ids_outside_the_grouped_catalog_are_a_data_error():
    with pytest.raises(DataError, match="history item id 9 is outside the grouped catalog 1..5"):
        group_share_of_history([[1, 9]], toy_groups())
    with pytest.raises(ConfigError, match="n_groups=7"):
        popularity_groups([np.array([1, 2])], n_items=3, n_groups=7)
