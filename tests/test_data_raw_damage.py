"""Raw data is never read wrongly without a word (issue 9, class 8): mixed encodings, separators inside a field,
unbalanced quotes, null ids and bad times are read correctly (and the repair is logged) or refused with one line
naming the file, the line or row, and what was expected. Every fixture is written in the format's real layout."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from data_fixtures import (
    CUSTOM_COLUMNS,
    T0,
    TITLES,
    prepare_offline,
    write_custom,
    write_grouplens_100k,
    write_lastfm,
    write_ml1m,
    write_recbole_100k,
)

from llmrec.base.errors import DataError

LES_MIS = "Les Misérables (1995)"
CITY = "The City of Lost Children (La Cité des enfants perdus) (1995)"


def _custom(tmp_path, **kw):
    return prepare_offline("custom", tmp_path / "raw", tmp_path / "out", **CUSTOM_COLUMNS, **kw)


# ------------------------------------------------------------------------------------------ mixed encodings
def test_u_item_with_one_utf8_line_among_latin1_lines_reads_every_title(tmp_path, caplog):
    d = write_grouplens_100k(tmp_path / "raw")  # latin-1: "é" of items 5 and 6 is the single byte 0xe9
    lines = (d / "u.item").read_bytes().split(b"\n")
    lines[5] = lines[5].decode("latin-1").encode("utf-8")  # line 6 (item 6) pasted in as UTF-8
    (d / "u.item").write_bytes(b"\n".join(lines))
    ds = prepare_offline("ml-100k", d, tmp_path / "out")
    titles = ds.titles()
    assert LES_MIS in titles and CITY in titles
    assert not [t for t in titles if "Ã" in t]  # no mojibake
    assert ("u.item mixes text encodings: 1 line(s) are not valid utf-8 and were read as latin-1 (first: line 5), "
            "1 line(s) are utf-8 text (first: line 6); decoded each line in its own encoding") in caplog.text


def test_movies_dat_with_one_latin1_line_among_utf8_lines_reads_every_title(tmp_path, caplog):
    d = write_ml1m(tmp_path / "raw")
    lines = (d / "movies.dat").read_bytes().decode("latin-1").split("\n")
    data = [line.encode("latin-1" if number == 6 else "utf-8") for number, line in enumerate(lines, 1)]
    (d / "movies.dat").write_bytes(b"\n".join(data))  # UTF-8, except line 6 (item 6) in latin-1
    titles = prepare_offline("ml-1m", d, tmp_path / "out").titles()
    assert LES_MIS in titles and CITY in titles and not [t for t in titles if "Ã" in t]
    assert "1 line(s) are not valid utf-8 and were read as latin-1 (first: line 6)" in caplog.text


def test_custom_latin1_file_with_utf8_lines_is_decoded_line_by_line(tmp_path, caplog):
    _, items = write_custom(tmp_path / "raw", "csv")
    lines = items.read_text(encoding="utf-8").split("\n")
    # --encoding latin-1, but line 6 (item 5) stayed UTF-8: read as latin-1 it would become "MisÃ©rables"
    items.write_bytes(b"\n".join(line.encode("utf-8" if n == 6 else "latin-1") for n, line in enumerate(lines, 1)))
    titles = _custom(tmp_path, encoding="latin-1").titles()
    assert LES_MIS in titles and CITY in titles
    assert "items.csv mixes text encodings" in caplog.text and "(first: line 6)" in caplog.text


def test_a_byte_in_neither_encoding_names_its_line(tmp_path):
    _, items = write_custom(tmp_path / "raw", "csv")
    data = items.read_bytes().split(b"\n")
    data[8] += b" \x81"  # line 9: not UTF-8, and undefined in cp1252
    items.write_bytes(b"\n".join(data))
    with pytest.raises(DataError, match=r"items.csv line 9: byte 0x81 is neither utf-8 nor cp1252 text"):
        _custom(tmp_path, encoding="cp1252")


# ------------------------------------------------------------------------------------------ separators in a field
def test_lastfm_artist_name_with_a_tab_is_read_whole(tmp_path, caplog):
    d = write_lastfm(tmp_path / "raw")
    text = (d / "artists.dat").read_text(encoding="utf-8")
    (d / "artists.dat").write_text(text.replace("2\tMatrix, The (1999)\t", "2\tMatrix, The\t(1999)\t"),
                                   encoding="utf-8")
    ds = prepare_offline("lastfm", d, tmp_path / "out")
    assert "The Matrix (1999)" in ds.titles()  # not "The Matrix" cut at the tab
    assert ("artists.dat: 1 artist name(s) contain a tab, the field separator (first: line 3, 'Matrix, The "
            "(1999)')") in caplog.text


def test_lastfm_artist_line_that_cannot_be_split_is_an_error(tmp_path):
    d = write_lastfm(tmp_path / "raw")
    lines = (d / "artists.dat").read_text(encoding="utf-8").split("\n")
    lines[2] = "2\tMatrix, The\t(1999)\thttp://www.last.fm/music/2"  # a tab in the name and a column missing
    (d / "artists.dat").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=r"artists.dat line 3: expected 4 tab-separated fields \(id, name, then 2 "
                                        r"URL field\(s\)\), found 4 whose URL fields are not URLs"):
        prepare_offline("lastfm", d, tmp_path / "out")


def test_u_item_title_with_a_pipe_is_read_whole_and_a_stray_field_is_an_error(tmp_path, caplog):
    d = write_grouplens_100k(tmp_path / "raw", titles={**TITLES, 1: "Face|Off (1997)"})
    assert "Face|Off (1997)" in prepare_offline("ml-100k", d, tmp_path / "out").titles()
    assert "u.item: 1 title(s) contain '|', the field separator (first: line 1, 'Face|Off (1997)')" in caplog.text
    lines = (d / "u.item").read_bytes().split(b"\n")
    lines[1] += b"|0"  # line 2: a 20th genre flag, not part of the title
    (d / "u.item").write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"u.item line 2: expected 24 '\|'-separated fields .* found 25"):
        prepare_offline("ml-100k", d, tmp_path / "out")


def test_movies_dat_title_with_the_separator_is_read_whole(tmp_path, caplog):
    d = write_ml1m(tmp_path / "raw", titles={**TITLES, 1: "Star Wars::Episode IV (1977)"})
    assert "Star Wars::Episode IV (1977)" in prepare_offline("ml-1m", d, tmp_path / "out").titles()
    assert "movies.dat: 1 title(s) contain '::'" in caplog.text
    lines = (d / "movies.dat").read_bytes().split(b"\n")
    lines[1] = b"2::Matrix, The::1999::Drama"  # no "(year)" before the genres: cannot tell the fields apart
    (d / "movies.dat").write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"movies.dat line 2: expected 3 '::'-separated fields \(id, title, "
                                        r"genres\), found 4"):
        prepare_offline("ml-1m", d, tmp_path / "out")


# ------------------------------------------------------------------------------------------ quotes in CSV
def _edit_lines(path, edits: dict[int, str]) -> None:
    """Replace whole lines (numbered from 1) of a UTF-8 text file."""
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, text in edits.items():
        lines[number - 1] = text
    path.write_text("\n".join(lines), encoding="utf-8")


@pytest.mark.parametrize("edits,message", [
    # an opening quote never closed: it would swallow every later line into one title
    ({8: '7,"Movie 7 (2000),Comedy'},
     r"items.csv line 8: a double quote opens a quoted field that is never closed"),
    # closed by the next quoted field, one line further: the lines in between would be one title
    ({2: '1,"Toy Story (1995),Comedy'},
     r"items.csv line 2: a quoted field \(it runs to line 3\) is followed by more text before the next ','"),
    # two stray quotes that pair up: a title running over three lines
    ({8: '7,"Movie 7 (2000),Comedy', 10: '9,Movie 9 (2000)",Comedy'},
     (r"items.csv line 8: column 'name' runs over lines 8-10 \(a quoted field with line breaks\); expected one "
      r"line per row: probably an unbalanced '\"' on line 8")),
    # the separator inside an unquoted title
    ({8: "7,Movie 7, The (2000),Comedy"},
     (r"items.csv line 8: expected 3 ','-separated fields \(iid, name, tags\), found 4; a field that contains "
      r"',' must be quoted")),
])
def test_csv_quote_damage_is_an_error_naming_the_line(tmp_path, edits, message):
    _, items = write_custom(tmp_path / "raw", "csv")
    _edit_lines(items, edits)
    with pytest.raises(DataError, match=message):
        _custom(tmp_path)


def test_quoted_line_breaks_in_a_column_not_read_are_accepted_and_lines_stay_exact(tmp_path, caplog):
    _, items = write_custom(tmp_path / "raw", "csv")
    df = pd.read_csv(items, dtype=str, keep_default_na=False)
    df["note"] = ""
    df.loc[2, "note"] = "a note\nover two lines"  # item 3, lines 4-5 of the file
    df.to_csv(items, index=False)
    ds = _custom(tmp_path)
    assert ds.n_items == 40 and "The Matrix (1999)" in ds.titles()
    assert "items.csv: 1 row(s) span several lines" in caplog.text and "first: lines 4-5)" in caplog.text
    df.loc[9, "iid"] = ""  # item 10: line 12 of the file, one more than its row number + 1
    df.to_csv(items, index=False)
    with pytest.raises(DataError, match=r"items.csv line 12: column 'iid' is empty, expected an id"):
        _custom(tmp_path)


# ------------------------------------------------------------------------------------------ nulls in parquet
@pytest.mark.parametrize("kind", ["string-na", "object-none", "int64-na", "float-nan"])
def test_null_user_id_in_parquet_is_an_error_not_a_user_named_na(tmp_path, kind):
    inter, _ = write_custom(tmp_path / "raw", "parquet")
    df = pd.read_parquet(inter)
    if kind == "string-na":
        df["uid"] = df["uid"].astype("string")
        df.loc[3, "uid"] = pd.NA
    elif kind == "object-none":
        df["uid"] = df["uid"].astype(object)
        df.loc[3, "uid"] = None
    elif kind == "int64-na":
        df["uid"] = pd.array([int(u[1:]) for u in df["uid"]], dtype="Int64")
        df.loc[3, "uid"] = pd.NA
    else:
        df["uid"] = [float(u[1:]) for u in df["uid"]]
        df.loc[3, "uid"] = np.nan
    df.to_parquet(inter, index=False)
    with pytest.raises(DataError, match=r"interactions.parquet row 4: column 'uid' is empty \(null\), expected an "
                                        r"id"):
        _custom(tmp_path)


def test_null_item_id_and_null_time_in_parquet_are_errors(tmp_path):
    inter, items = write_custom(tmp_path / "raw", "parquet")
    cat = pd.read_parquet(items)
    cat["iid"] = cat["iid"].astype("string")
    cat.loc[6, "iid"] = pd.NA
    cat.to_parquet(items, index=False)
    with pytest.raises(DataError, match=r"items.parquet row 7: column 'iid' is empty \(null\), expected an id"):
        _custom(tmp_path)
    write_custom(tmp_path / "raw", "parquet")
    df = pd.read_parquet(inter)
    df["when"] = pd.array(pd.to_datetime(df["when"]).astype("int64") // 10**9, dtype="Int64")
    df.loc[9, "when"] = pd.NA
    df.to_parquet(inter, index=False)
    with pytest.raises(DataError, match=r"interactions.parquet row 10: column 'when' is empty \(null\), expected a "
                                        r"number or a date/time"):
        _custom(tmp_path)


def test_null_title_in_parquet_gets_the_fallback_title_not_na(tmp_path):
    _, items = write_custom(tmp_path / "raw", "parquet")
    cat = pd.read_parquet(items)
    cat["name"] = cat["name"].astype("string")
    cat.loc[4, "name"] = pd.NA  # item 5
    cat.to_parquet(items, index=False)
    titles = _custom(tmp_path).titles()
    assert "item 5" in titles and not [t for t in titles if "<NA>" in t or t == "nan"]


def test_float_ids_in_parquet_match_integer_ids_of_the_other_file(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    inter, items = write_custom(tmp_path / "raw", "parquet")
    df = pd.read_parquet(inter)
    df["iid"] = df["iid"].astype(float)  # 26.0, as pandas stores an id column that once held NaN
    df.to_parquet(inter, index=False)
    cat = pd.read_parquet(items)
    cat["iid"] = cat["iid"].astype(int)
    cat.to_parquet(items, index=False)
    ds = _custom(tmp_path)
    assert ds.meta["n_interactions"] == 80 and "unknown_item_interactions" not in ds.meta["dropped"]
    assert "column 'iid' holds integers stored as floating-point numbers (e.g. 26.0); read them as integers (26)" \
        in caplog.text


@pytest.mark.parametrize("text", ["NULL", "None", "nan", "<NA>"])
def test_id_that_spells_a_missing_value_is_an_error(tmp_path, text):
    inter, _ = write_custom(tmp_path / "raw", "csv")
    lines = inter.read_text(encoding="utf-8").split("\n")
    lines[4] = text + lines[4][lines[4].index(","):]  # line 5
    inter.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=rf"interactions.csv line 5: column 'uid' is '{text}', which stands for a "
                                        rf"missing value; expected an id"):
        _custom(tmp_path)


# ------------------------------------------------------------------------------------------ times
def _set_last_field(path, number: int, sep: str, value: str) -> None:
    """Set the last field (the time) of line `number` (from 1) of a text file."""
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[number - 1] = lines[number - 1].rsplit(sep, 1)[0] + sep + value
    path.write_text("\n".join(lines), encoding="utf-8")


@pytest.mark.parametrize("dataset,writer,file,sep,line,value,message", [
    ("ml-100k", write_grouplens_100k, "u.data", "\t", 3, "99999999999999999999",
     r"u.data line 3: field 'timestamp' is '99999999999999999999', out of range; expected a time"),
    ("ml-100k", write_recbole_100k, "ml-100k.inter", "\t", 4, "inf",
     r"ml-100k.inter line 4: field 'timestamp' is 'inf', expected a finite number"),
    ("ml-1m", write_ml1m, "ratings.dat", "::", 2, "12:30",
     r"ratings.dat line 2: field 'timestamp' is '12:30', expected an integer"),
    ("lastfm", write_lastfm, "user_taggedartists-timestamps.dat", "\t", 5, "1e400",
     r"timestamps.dat line 5: field 'timestamp' is '1e400', expected a finite number"),
])
def test_bad_timestamps_name_their_line(tmp_path, dataset, writer, file, sep, line, value, message):
    d = writer(tmp_path / "raw")
    _set_last_field(d / file, line, sep, value)
    with pytest.raises(DataError, match=message):
        prepare_offline(dataset, d, tmp_path / "out")


def test_custom_times_out_of_range_or_a_number_among_dates(tmp_path):
    inter, _ = write_custom(tmp_path / "raw", "csv")
    df = pd.read_csv(inter, dtype=str)
    df["when"] = [str(T0 + i) for i in range(len(df))]
    df.loc[2, "when"] = "1e300"  # line 4
    df.to_csv(inter, index=False)
    with pytest.raises(DataError, match=r"interactions.csv line 4: column 'when' is '1e300', expected a finite "
                                        r"time such as unix seconds or milliseconds"):
        _custom(tmp_path)
    write_custom(tmp_path / "raw", "csv")
    df = pd.read_csv(inter, dtype=str)
    df.loc[6, "when"] = "1000000000"  # line 8: unix seconds among ISO dates
    df.to_csv(inter, index=False)
    with pytest.raises(DataError, match=r"interactions.csv line 8: column 'when' is '1000000000', expected a "
                                        r"date/time like the other rows"):
        _custom(tmp_path)
