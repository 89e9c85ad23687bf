"""Clear messages for two dead ends (issue 9, class 10): a raw file without data rows says so, by name; a user
who has seen (almost) the whole catalog is named by raw id, and the advice given works when followed."""

from __future__ import annotations

import gzip
import re

import pandas as pd
import pytest
from data_fixtures import (
    CUSTOM_COLUMNS,
    T0,
    prepare_offline,
    toy_rows,
    write_custom,
    write_grouplens_100k,
    write_lastfm,
    write_ml1m,
    write_recbole_100k,
    write_steam,
)

from llmrec.commands.cli import main
from llmrec.data.dataset import ProcessedDataset
from llmrec.base.errors import DataError


# ------------------------------------------------------------------------------------------ empty raw files
def _header_only(path):
    path.write_text(path.read_text(encoding="utf-8").split("\n")[0] + "\n", encoding="utf-8")


def _empty(path):
    path.write_bytes(b"")


def _empty_gzip(path):
    with gzip.open(path, "wb"):
        pass


def _parquet_no_rows(path):
    df = pd.read_parquet(path)
    df.iloc[:0].to_parquet(path, index=False)


@pytest.mark.parametrize("dataset,writer,file,empty,detail", [
    ("ml-100k", write_grouplens_100k, "u.data", _empty, ""),
    ("ml-100k", write_grouplens_100k, "u.item", _empty, ""),
    ("ml-100k", write_recbole_100k, "ml-100k.inter", _header_only, " \\(only a header line\\)"),
    ("ml-100k", write_recbole_100k, "ml-100k.item", _empty, " \\(the file is empty\\)"),
    ("ml-1m", write_ml1m, "ratings.dat", _empty, ""),
    ("ml-1m", write_ml1m, "movies.dat", _empty, ""),
    ("steam", write_steam, "steam_reviews.json.gz", _empty_gzip, " \\(the file holds no review\\)"),
    ("steam", write_steam, "steam_games.json.gz", _empty_gzip, " \\(the file holds no game\\)"),
    ("lastfm", write_lastfm, "user_taggedartists-timestamps.dat", _header_only, " \\(only a header line\\)"),
    ("lastfm", write_lastfm, "artists.dat", _empty, " \\(the file is empty\\)"),
    ("custom", lambda d: write_custom(d, "csv"), "interactions.csv", _header_only, " \\(only a header line\\)"),
    ("custom", lambda d: write_custom(d, "tsv"), "items.tsv", _empty, " \\(the file is empty\\)"),
    ("custom", lambda d: write_custom(d, "parquet"), "interactions.parquet", _parquet_no_rows, " \\(0 rows; "),
])
def test_raw_file_without_data_rows_says_so_by_name(tmp_path, dataset, writer, file, empty, detail):
    writer(tmp_path / "raw")
    empty(tmp_path / "raw" / file)
    extra = CUSTOM_COLUMNS if dataset == "custom" else {}
    with pytest.raises(DataError, match=rf"raw/{re.escape(file)} has no data rows{detail}.*; expected ") as e:
        prepare_offline(dataset, tmp_path / "raw", tmp_path / "out", **extra)
    assert "after filtering" not in str(e.value)


def test_steam_file_whose_reviews_all_lack_a_field_says_so(tmp_path):
    d = write_steam(tmp_path / "raw")
    with gzip.open(d / "steam_reviews.json.gz", "wt", encoding="utf-8") as f:
        f.write(repr({"username": "x", "product_id": "10001"}) + "\n")
    with pytest.raises(DataError, match=r"steam_reviews.json.gz has no data rows \(all 1 review\(s\) lack one of "
                                        r"them; first: .*line 1 has no 'date'\)"):
        prepare_offline("steam", d, tmp_path / "out")


# ------------------------------------------------------------------------------------------ (almost) all seen
def _with_heavy_user(tmp_path):
    """The toy log plus user u099 ("alice" of the issue), who has seen all 40 items, oldest first."""
    rows = toy_rows() + [(99, i, 1, T0 + i) for i in range(1, 41)]
    write_custom(tmp_path / "raw", "csv", rows=rows)


def test_samples_of_a_user_who_has_seen_the_catalog_are_dropped_named_and_counted(tmp_path, caplog):
    _with_heavy_user(tmp_path)
    ds = prepare_offline("custom", tmp_path / "raw", tmp_path / "out", protocol="loo", **CUSTOM_COLUMNS)
    # u099 has 40 items: loo train positions 1..37, valid 38, test 39; 19 negatives need 40 - p - 1 >= 19,
    # so p <= 20 is kept and p = 21..39 dropped: 17 train, 1 valid, 1 test
    assert ds.meta["dropped"]["samples_too_few_unseen_items"] == 19
    assert ds.meta["n_samples"] == {"train": 10 * 5 + 20, "valid": 10, "test": 10}
    heavy = int(ds.users.loc[ds.users["raw_id"] == "u099", "user_id"].iloc[0])
    train = ds.split("train")
    assert sorted(train.loc[train["user_id"] == heavy, "position"]) == list(range(1, 21))
    assert ("dropped 19 sample(s) (train 17, valid 1, test 1) whose user had seen so much of the catalog that "
            "fewer than the 19 unseen items --candidates 20 needs were left: user(s) 'u099' (e.g. user 'u099' had "
            "seen 40 of the 40 items by position 39, leaving 0 unseen); no --candidates value keeps them all")\
        in caplog.text
    seqs = ds.user_sequences()
    for r in train.itertuples():  # every kept candidate set is valid: target + 19 distinct unseen items
        seen = set(seqs[r.user_id][: r.position + 1].tolist())
        negatives = set(r.candidates.tolist()) - {r.target}
        assert len(set(r.candidates.tolist())) == 20 and r.target in r.candidates and not negatives & seen


def _advice(message: str) -> int:
    return int(re.search(r"pass --candidates (\d+)", message).group(1))


def test_too_many_candidates_names_a_raw_user_and_the_suggested_value_works(tmp_path, capsys):
    d = write_grouplens_100k(tmp_path / "raw")
    with pytest.raises(DataError) as e:
        prepare_offline("ml-100k", d, tmp_path / "out", candidates=40)
    message = str(e.value)
    # users have 8 items of 40: the last sample (position 7) leaves 32 unseen, so 33 keeps every sample
    assert re.fullmatch(r"--candidates 40 needs 39 unseen items per sample for the negatives, but no train sample "
                        r"has that many: user '\d+' had seen 4 of the 40 items by position 3, leaving 36 unseen "
                        r"\(the most of any train sample\); pass --candidates 33 \(it keeps every sample\)", message)
    assert not (tmp_path / "out").exists()
    code = main(["prepare", "--dataset", "ml-100k", "--raw", str(d), "--out", str(tmp_path / "out"),
                 "--no-download", "--candidates", str(_advice(message))])
    assert code == 0, capsys.readouterr().err
    ds = ProcessedDataset.load(tmp_path / "out")
    assert "samples_too_few_unseen_items" not in ds.meta["dropped"]
    assert all(len(c) == 33 for s in ("train", "valid", "test") for c in ds.split(s)["candidates"])


def test_when_no_value_keeps_every_sample_the_advice_keeps_some_of_every_split(tmp_path, caplog):
    _with_heavy_user(tmp_path)
    kw = dict(protocol="loo", **CUSTOM_COLUMNS)
    with pytest.raises(DataError) as e:
        prepare_offline("custom", tmp_path / "raw", tmp_path / "out", candidates=34, **kw)
    message = str(e.value)
    # test samples: toy users at position 7 leave 32 unseen, u099 at position 39 none: none has 33
    assert ("no test sample has that many: user 'u001' had seen 8 of the 40 items by position 7, leaving 32 unseen "
            "(the most of any test sample); pass --candidates 33 (it keeps some samples of every split") in message
    ds = prepare_offline("custom", tmp_path / "raw", tmp_path / "out", candidates=_advice(message), **kw)
    # 32 negatives need p <= 7: u099 keeps train positions 1..7 and loses 8..37, valid and test (32 samples)
    assert ds.meta["dropped"]["samples_too_few_unseen_items"] == 32
    assert ds.meta["n_samples"] == {"train": 10 * 5 + 7, "valid": 10, "test": 10}
    assert "user(s) 'u099'" in caplog.text


def test_when_every_sample_of_a_split_saw_everything_the_message_says_no_value_helps(tmp_path):
    rows = [(u, i, 1, T0 + i) for u in (1, 2, 3) for i in range(1, 7)]  # 3 users, each saw all 6 items
    write_custom(tmp_path / "raw", "csv", rows=rows, titles={i: f"Film {i}" for i in range(1, 7)})
    with pytest.raises(DataError, match=r"--candidates 2 needs 1 unseen items per sample for the negatives, but no "
                                        r"test sample has that many: user 'u001' had seen 6 of the 6 items by "
                                        r"position 5, leaving 0 unseen .*; no --candidates value helps: every test "
                                        r"sample's user had seen the whole catalog"):
        prepare_offline("custom", tmp_path / "raw", tmp_path / "out", protocol="loo", candidates=2, **CUSTOM_COLUMNS)
