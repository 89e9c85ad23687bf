"""Bad input gets a clear `DataError` (file, line, field, what was expected) and loses nothing silently."""

from __future__ import annotations

import gzip
import json

import pytest
from data_fixtures import (
    CUSTOM_COLUMNS,
    TITLES,
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
from llmrec.base.errors import ConfigError, DataError


def test_unknown_dataset_name_in_python_api(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset 'movielens'; expected one of ml-100k, ml-1m"):
        prepare_offline("movielens", tmp_path, tmp_path / "out")


def test_unknown_dataset_name_on_the_command_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["prepare", "--dataset", "movielens"])
    assert e.value.code == 2 and "invalid choice: 'movielens'" in capsys.readouterr().err


@pytest.mark.parametrize("dataset,missing", [
    ("ml-1m", "ratings.dat"), ("steam", "steam_reviews.json.gz"), ("lastfm", "user_taggedartists-timestamps.dat"),
    ("custom", "interactions")])
def test_missing_raw_file_says_which_and_where(tmp_path, dataset, missing):
    with pytest.raises(DataError) as e:
        prepare_offline(dataset, tmp_path / "empty", tmp_path / "out")
    msg = str(e.value)
    assert missing in msg and str(tmp_path / "empty") in msg
    if dataset != "custom":
        assert "Download" in msg


def test_missing_second_file(tmp_path):
    d = write_ml1m(tmp_path / "raw")
    (d / "movies.dat").unlink()
    with pytest.raises(DataError, match=r"movies.dat not found \(looked for .*raw/movies.dat"):
        prepare_offline("ml-1m", d, tmp_path / "out")


def test_malformed_line_u_data(tmp_path):
    d = write_grouplens_100k(tmp_path / "raw")
    lines = (d / "u.data").read_text().splitlines()
    lines[4] = "5\t12\t3"  # a field missing on line 5
    (d / "u.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"u.data line 5: expected 4 tab-separated fields .* found 3"):
        prepare_offline("ml-100k", d, tmp_path / "out")


def test_malformed_field_ml1m(tmp_path):
    d = write_ml1m(tmp_path / "raw")
    lines = (d / "ratings.dat").read_text().splitlines()
    lines[2] = "1::x12::3::100"
    (d / "ratings.dat").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ratings.dat line 3: field 'item' is 'x12', expected an integer"):
        prepare_offline("ml-1m", d, tmp_path / "out")


def test_malformed_recbole_header(tmp_path):
    d = write_recbole_100k(tmp_path / "raw")
    text = (d / "ml-100k.inter").read_text().replace("user_id:token\titem_id:token", "user\titem", 1)
    (d / "ml-100k.inter").write_text(text)
    with pytest.raises(DataError, match=r"ml-100k.inter line 1: expected a RecBole header"):
        prepare_offline("ml-100k", d, tmp_path / "out")


def test_malformed_lastfm_timestamp(tmp_path):
    d = write_lastfm(tmp_path / "raw")
    lines = (d / "user_taggedartists-timestamps.dat").read_text().splitlines()
    lines[3] = "2\t5\t7\tyesterday"
    (d / "user_taggedartists-timestamps.dat").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"timestamps.dat line 4: field 'timestamp' is 'yesterday', expected a num"):
        prepare_offline("lastfm", d, tmp_path / "out")


def test_malformed_steam_line_and_not_gzip(tmp_path):
    d = write_steam(tmp_path / "raw")
    with gzip.open(d / "steam_reviews.json.gz", "at", encoding="utf-8") as f:
        f.write("{'username': 'x', 'product_id': \n")
    with pytest.raises(DataError, match=r"steam_reviews.json.gz line 84: not a Python-literal dict"):
        prepare_offline("steam", d, tmp_path / "out")
    (d / "steam_reviews.json.gz").write_bytes(b"plain text, not gzip\n")
    with pytest.raises(DataError, match=r"steam_reviews.json.gz: not a readable gzip file"):
        prepare_offline("steam", d, tmp_path / "out")


def test_steam_review_without_a_field_is_counted_and_a_bad_date_is_an_error(tmp_path, caplog):
    d = write_steam(tmp_path / "raw")
    with gzip.open(d / "steam_reviews.json.gz", "at", encoding="utf-8") as f:
        f.write(repr({"username": "x", "product_id": "10001"}) + "\n")
    ds = prepare_offline("steam", d, tmp_path / "out")
    assert ds.meta["dropped"]["reviews_missing_fields"] == 1
    assert "steam_reviews.json.gz line 84 has no 'date'" in caplog.text
    with gzip.open(d / "steam_reviews.json.gz", "at", encoding="utf-8") as f:
        f.write(repr({"username": "x", "product_id": "10001", "date": "17 Dec 2017"}) + "\n")
    with pytest.raises(DataError, match=r"line 85: field 'date' is '17 Dec 2017', expected YYYY-MM-DD"):
        prepare_offline("steam", d, tmp_path / "out")


def test_wrong_encoding_utf8_file(tmp_path):
    d = write_recbole_100k(tmp_path / "raw")
    data = (d / "ml-100k.item").read_text(encoding="utf-8").encode("latin-1")  # "é" as one latin-1 byte
    (d / "ml-100k.item").write_bytes(data)
    with pytest.raises(DataError, match=r"ml-100k.item line 6: byte 0xe9 is not valid utf-8 text"):
        prepare_offline("ml-100k", d, tmp_path / "out")


def test_wrong_encoding_custom_csv(tmp_path):
    _, items = write_custom(tmp_path / "raw", "csv")
    items.write_bytes(items.read_text(encoding="utf-8").encode("latin-1"))
    with pytest.raises(DataError, match=r"items.csv line 6: byte 0xe9 is not valid utf-8 text"):
        prepare_offline("custom", tmp_path / "raw", tmp_path / "out", **CUSTOM_COLUMNS)
    # with the right --encoding it reads
    ds = prepare_offline("custom", tmp_path / "raw", tmp_path / "out", encoding="latin-1", **CUSTOM_COLUMNS)
    assert "Les Misérables (1995)" in ds.titles()


def test_latin1_movielens_files_read_in_either_encoding(tmp_path):
    d = write_grouplens_100k(tmp_path / "raw")
    (d / "u.item").write_text((d / "u.item").read_text(encoding="latin-1"), encoding="utf-8")  # re-saved as UTF-8
    ds = prepare_offline("ml-100k", d, tmp_path / "out")
    assert "Les Misérables (1995)" in ds.titles()


def test_duplicate_item_ids(tmp_path):
    d = write_grouplens_100k(tmp_path / "raw")
    lines = (d / "u.item").read_bytes().decode("latin-1").splitlines()
    lines.append(lines[1].replace("Matrix, The", "Matrix Reloaded, The"))  # id 2 again, other title
    (d / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(DataError, match=r"duplicate item id '2' with different data: .*u.item line 2 and "
                                        r".*u.item line 41"):
        prepare_offline("ml-100k", d, tmp_path / "out")


def test_identical_duplicate_item_rows_are_collapsed_and_counted(tmp_path):
    d = write_grouplens_100k(tmp_path / "raw")
    lines = (d / "u.item").read_bytes().decode("latin-1").splitlines()
    (d / "u.item").write_bytes(("\n".join(lines + [lines[1]]) + "\n").encode("latin-1"))
    ds = prepare_offline("ml-100k", d, tmp_path / "out")
    assert ds.meta["dropped"]["duplicate_items"] == 1 and ds.n_items == 40


def test_interactions_with_unknown_items_dropped_and_counted_or_error(tmp_path, caplog):
    rows = toy_rows() + [(3, 99, 4, 5), (4, 99, 4, 6)]
    d = write_grouplens_100k(tmp_path / "raw", rows=rows)
    ds = prepare_offline("ml-100k", d, tmp_path / "out")
    assert ds.meta["dropped"]["unknown_item_interactions"] == 2
    assert "2 interaction(s) refer to 1 item id(s) missing from the items file" in caplog.text
    assert ds.meta["n_interactions"] == 80
    with pytest.raises(DataError, match=r"2 interaction\(s\) refer to 1 item id\(s\) missing .* \(e.g. '99'\)"):
        prepare_offline("ml-100k", d, tmp_path / "out2", unknown_items="error")


def test_empty_after_filtering(tmp_path):
    d = write_grouplens_100k(tmp_path / "raw")
    with pytest.raises(DataError, match=r"no interactions left after filtering \(min_interactions=50"):
        prepare_offline("ml-100k", d, tmp_path / "out", min_interactions=50)
    assert not (tmp_path / "out").exists()


def test_existing_out_that_is_not_ours_is_never_touched(tmp_path):
    d = write_grouplens_100k(tmp_path / "raw")
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("precious")
    with pytest.raises(DataError, match="is not a previous `llmrec prepare` output; refusing to overwrite"):
        prepare_offline("ml-100k", d, out)
    assert [p.name for p in out.iterdir()] == ["chapter1.tex"] and (out / "chapter1.tex").read_text() == "precious"
    # a previous prepare output is replaced
    prepare_offline("ml-100k", d, tmp_path / "ours")
    ds = prepare_offline("ml-100k", d, tmp_path / "ours", protocol="loo")
    assert json.loads((tmp_path / "ours" / "meta.json").read_text())["protocol"] == "loo" == ds.protocol


def test_candidates_larger_than_unseen_pool(tmp_path):
    """More in test_data_empty_and_full.py (raw user ids, dropped samples, advice that works)."""
    d = write_grouplens_100k(tmp_path / "raw")
    with pytest.raises(DataError, match=r"--candidates 40 needs 39 unseen items per sample .* had seen 4 of the 40 "
                                        r"items by position 3, leaving 36 unseen .*; pass --candidates 33"):
        prepare_offline("ml-100k", d, tmp_path / "out", candidates=40)


def test_bad_option_combinations(tmp_path):
    with pytest.raises(ConfigError, match="--eval-positions applies to --protocol llara only"):
        prepare_offline("ml-100k", tmp_path, tmp_path / "out", protocol="loo", eval_positions="all")
    with pytest.raises(ConfigError, match="--min-interactions"):
        prepare_offline("ml-100k", tmp_path, tmp_path / "out", min_interactions=0)


def test_custom_missing_column_lists_the_columns(tmp_path):
    write_custom(tmp_path / "raw", "tsv")
    cols = dict(CUSTOM_COLUMNS, time_column="ts")
    with pytest.raises(DataError, match=r"interactions.tsv: no column 'ts' \(set it with --time-column\); the "
                                        r"file has columns uid, iid, when"):
        prepare_offline("custom", tmp_path / "raw", tmp_path / "out", **cols)


def test_cli_prints_one_line_error_exit_2(tmp_path, capsys):
    code = main(["prepare", "--dataset", "ml-1m", "--raw", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("llmrec prepare: error: ml-1m: raw file ratings.dat not found")
    assert "Traceback" not in err


def test_titles_fixture_sanity():
    assert TITLES[2] == "Matrix, The (1999)"
