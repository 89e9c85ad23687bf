"""Protocols, splits, candidate sets and titles: the science of `llmrec prepare`, on the toy log."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from data_fixtures import N_USERS, expected_sequences, write_grouplens_100k

from llmrec.data.candidates import sample_candidates
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.prepare import PrepareConfig, prepare
from llmrec.data.protocols import llara_positions, loo_positions, split_users
from llmrec.data.titles import move_article, normalize_title, unique_titles
from llmrec.base.errors import DataError


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    return write_grouplens_100k(tmp_path_factory.mktemp("raw"))


def _prep(raw_dir, out, **kw) -> ProcessedDataset:
    return prepare(PrepareConfig(dataset="ml-100k", raw=raw_dir, out=out, download=False, **kw))


# ------------------------------------------------------------------------------------------------ protocols
def test_llara_counts_and_user_split(raw_dir, tmp_path):
    ds = _prep(raw_dir, tmp_path / "llara")
    # 10 users x 8 items: 8 train users x (8 - 3) positions; valid/test users 1 each (final position)
    assert ds.meta["n_samples"] == {"train": 40, "valid": 1, "test": 1}
    assert ds.users["split"].value_counts().to_dict() == {"train": 8, "valid": 1, "test": 1}
    for split in ("valid", "test"):
        s = ds.split(split)
        assert s["position"].tolist() == [7]
        assert ds.users.set_index("user_id").loc[int(s["user_id"].iloc[0]), "split"] == split
    tr = ds.split("train")
    assert set(tr["user_id"]) == set(ds.users.loc[ds.users["split"] == "train", "user_id"])
    assert tr.groupby("user_id")["position"].apply(list).map(lambda p: p == [3, 4, 5, 6, 7]).all()
    assert ds.meta["max_history"] == 10 and ds.meta["domain"] == "movies"


def test_llara_all_positions(raw_dir, tmp_path):
    ds = _prep(raw_dir, tmp_path / "all", eval_positions="all")
    assert ds.meta["n_samples"] == {"train": 40, "valid": 5, "test": 5}
    assert ds.split("test")["position"].tolist() == [3, 4, 5, 6, 7]


def test_loo_counts_and_history(raw_dir, tmp_path):
    ds = _prep(raw_dir, tmp_path / "loo", protocol="loo", max_history=3)
    assert ds.meta["n_samples"] == {"train": 10 * 5, "valid": 10, "test": 10}
    assert (ds.users["split"] == "all").all()
    assert (ds.split("test")["position"] == 7).all() and (ds.split("valid")["position"] == 6).all()
    assert sorted(set(ds.split("train")["position"])) == [1, 2, 3, 4, 5]
    seq = expected_sequences()[1]
    row = ds.split("test").set_index("user_id").loc[1]
    assert row["history"].tolist() == seq[4:7] and row["target"] == seq[7]  # last 3 items before the target
    first = ds.split("train").query("user_id == 1 and position == 1").iloc[0]
    assert first["history"].tolist() == seq[:1]


def test_history_never_contains_target_and_ends_before_it(raw_dir, tmp_path):
    ds = _prep(raw_dir, tmp_path / "h", protocol="loo")
    for split in ("train", "valid", "test"):
        for r in ds.split(split).itertuples():
            seq = ds.user_sequence(r.user_id)
            assert seq[r.position] == r.target
            assert r.history.tolist() == seq[:r.position][-200:].tolist()


def test_pure_protocol_functions():
    assert llara_positions(3, "train", "last").tolist() == []
    assert llara_positions(6, "train", "last").tolist() == [3, 4, 5]
    assert llara_positions(6, "test", "last").tolist() == [5]
    assert llara_positions(6, "valid", "all").tolist() == [3, 4, 5]
    assert {k: v.tolist() for k, v in loo_positions(5).items()} == {"train": [1, 2], "valid": [3], "test": [4]}
    split = split_users(np.arange(1, 944), seed=42)
    assert pd.Series(split).value_counts().to_dict() == {"train": 754, "valid": 94, "test": 95}
    assert (split_users(np.arange(1, 944), 42) == split).all()
    assert (split_users(np.arange(1, 944), 43) != split).any()


# ------------------------------------------------------------------------------------------------ candidates
def test_candidates_unique_contain_target_and_are_unseen(raw_dir, tmp_path):
    ds = _prep(raw_dir, tmp_path / "c", protocol="loo", candidates=20)
    for split in ("train", "valid", "test"):
        for r in ds.split(split).itertuples():
            c = r.candidates.tolist()
            assert len(c) == 20 and len(set(c)) == 20 and r.target in c
            assert all(1 <= x <= ds.n_items for x in c)
            seen = set(ds.user_sequence(r.user_id)[:r.position].tolist())
            assert not seen & set(c)


def test_candidates_seeded(raw_dir, tmp_path):
    a = _prep(raw_dir, tmp_path / "a")
    b = _prep(raw_dir, tmp_path / "b")
    c = _prep(raw_dir, tmp_path / "c", seed=7)
    for split in ("train", "valid", "test"):
        assert np.array_equal(np.stack(a.split(split)["candidates"]), np.stack(b.split(split)["candidates"]))
    assert not np.array_equal(np.stack(a.split("train")["candidates"]), np.stack(c.split("train")["candidates"]))
    # the target is not always in the same slot (the set is shuffled)
    slots = [r.candidates.tolist().index(r.target) for r in a.split("train").itertuples()]
    assert len(set(slots)) > 5


def test_last_samples_are_the_final_position_subset_of_all(raw_dir, tmp_path):
    last = _prep(raw_dir, tmp_path / "last")
    full = _prep(raw_dir, tmp_path / "full", eval_positions="all")
    for split in ("valid", "test"):
        f = full.split(split)
        final = f[f["position"] == f["user_id"].map(lambda u: len(full.user_sequence(u)) - 1)]
        got = last.split(split)
        assert final["user_id"].tolist() == got["user_id"].tolist()
        assert np.array_equal(np.stack(final["candidates"]), np.stack(got["candidates"]))
        assert final["target"].tolist() == got["target"].tolist()
    # train samples are identical too
    assert np.array_equal(np.stack(last.split("train")["candidates"]), np.stack(full.split("train")["candidates"]))


def test_candidates_fallback_when_user_saw_most_items():
    """A user who has seen most of the catalog takes the exact path; still unique, unseen and seeded."""
    n_items = 30
    seq = np.arange(1, 26)  # 25 of 30 items
    uid = np.ones(len(seq), dtype=np.int64)
    positions = np.array([20, 24])
    c = sample_candidates(uid, seq, np.array([1, 1]), positions, n_items, 5, seed=1)
    for row, p in zip(c, positions):
        assert seq[p] in row and len(set(row.tolist())) == 5
        assert not set(seq[:p].tolist()) & set(row.tolist())
    assert np.array_equal(c, sample_candidates(uid, seq, np.array([1, 1]), positions, n_items, 5, seed=1))
    with pytest.raises(DataError, match="only 5 items are not in the user's history"):
        sample_candidates(uid, seq, np.array([1]), np.array([24]), n_items, 7, seed=1)


def test_candidates_roughly_uniform():
    """Negatives of a fresh user are spread evenly over the catalog (chi-square-ish bound)."""
    n_items, n = 50, 4000
    uid = np.repeat(np.arange(1, n + 1), 2)
    iid = np.tile(np.array([1, 2]), n)
    c = sample_candidates(uid, iid, np.arange(1, n + 1), np.ones(n, dtype=np.int64), n_items, 11, seed=3)
    counts = np.bincount(c[:, :].ravel(), minlength=n_items + 1)
    assert counts[1] == 0 and counts[2] == n  # seen item never drawn; target (item 2) in every row
    neg = counts[3:]
    assert abs(neg.mean() - n * 10 / 48) < 1e-9 and neg.min() > 0.8 * neg.mean() and neg.max() < 1.2 * neg.mean()


# ------------------------------------------------------------------------------------------------ titles
@pytest.mark.parametrize("raw,want", [
    ("Matrix, The (1999)", "The Matrix (1999)"),
    ("Fish Called Wanda, A (1988)", "A Fish Called Wanda (1988)"),
    ("American in Paris, An (1951)", "An American in Paris (1951)"),
    ("Misérables, Les (1995)", "Les Misérables (1995)"),
    ("Promesse, La (1996)", "La Promesse (1996)"),
    ("Postino, Il (1994)", "Il Postino (1994)"),
    ("Boot, Das (1981)", "Das Boot (1981)"),
    ("Blechtrommel, Die (1979)", "Die Blechtrommel (1979)"),
    ("Mariachi, El (1992)", "El Mariachi (1992)"),
    ("Appartement, L' (1996)", "L'Appartement (1996)"),
    ("City of Lost Children, The (Cité des enfants perdus, La) (1995)",
     "The City of Lost Children (La Cité des enfants perdus) (1995)"),
    ("Good, the Bad and the Ugly, The (1966)", "The Good, the Bad and the Ugly (1966)"),
    ("  Seven   (Se7en)  (1995) ", "Seven (Se7en) (1995)"),
    ("Toy Story (1995)", "Toy Story (1995)"),
    ("(500) Days of Summer (2009)", "(500) Days of Summer (2009)"),
    ("Beatles, The", "The Beatles"),
    ("Convent, The (Convento, O) (1995)", "The Convent (O Convento) (1995)"),
    ("Yo, la peor de todas (1990)", "Yo, la peor de todas (1990)"),
])
def test_normalize_title(raw, want):
    assert normalize_title(raw) == want


def test_move_article_leaves_other_commas():
    assert move_article("Crouching Tiger, Hidden Dragon") == "Crouching Tiger, Hidden Dragon"
    assert move_article("Thelma") == "Thelma"


def test_unique_titles_deterministic():
    assert unique_titles(["A", "B", "A", "A [2]", "A"]) == ["A", "B", "A [3]", "A [2]", "A [4]"]
    assert unique_titles(["x", "y"]) == ["x", "y"]


def test_catalog_titles_unique_and_first_id_keeps_title(raw_dir, tmp_path):
    ds = _prep(raw_dir, tmp_path / "t")
    titles = ds.titles()
    assert len(set(titles[1:])) == ds.n_items
    assert titles[3] == "Chasing Amy (1997)" and titles[4] == "Chasing Amy (1997) [2]"
    assert titles[2] == "The Matrix (1999)" and titles[5] == "Les Misérables (1995)"
    assert ds.meta["titles"]["deduplicated_titles"] == 1


def test_empty_title_gets_fallback(tmp_path):
    from data_fixtures import TITLES
    titles = dict(TITLES)
    titles[7] = "   "
    raw = write_grouplens_100k(tmp_path / "raw", titles=titles)
    ds = _prep(raw, tmp_path / "out")
    assert ds.titles()[7] == "item 7" and ds.meta["titles"]["fallback_titles"] == 1


def test_ids_contiguous_from_one(raw_dir, tmp_path):
    ds = _prep(raw_dir, tmp_path / "ids")
    assert ds.items["item_id"].tolist() == list(range(1, ds.n_items + 1))
    assert ds.users["user_id"].tolist() == list(range(1, N_USERS + 1))
    assert ds.interactions["item_id"].min() >= 1
    assert ds.interactions.groupby("user_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing).all()
