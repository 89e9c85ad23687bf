"""Property-based tests of the custom CSV/TSV/parquet loader: well-formed tables round-trip their counts;
malformed ones give a clear DataError, never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmrec.data.build import BuildOptions, build
from llmrec.data.formats.custom import NULL_TEXTS, CustomColumns, load_custom
from llmrec.base.errors import DataError

# ids that spell a missing value ("null", "nan", ...) are refused by design (see test_data_raw_damage.py)
IDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6).filter(
    lambda s: s not in NULL_TEXTS)
TITLE = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=20)
FORMATS = st.sampled_from(["csv", "tsv", "parquet"])
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def tables(draw):
    """(interactions, items) DataFrames with consistent ids."""
    item_ids = draw(st.lists(IDS, min_size=1, max_size=15, unique=True))
    titles = draw(st.lists(TITLE, min_size=len(item_ids), max_size=len(item_ids)))
    users = draw(st.lists(IDS, min_size=1, max_size=6, unique=True))
    n = draw(st.integers(1, 40))
    rows = draw(st.lists(st.tuples(st.sampled_from(users), st.sampled_from(item_ids),
                                   st.integers(0, 2_000_000_000)), min_size=n, max_size=n))
    inter = pd.DataFrame(rows, columns=["user", "item", "ts"])
    items = pd.DataFrame({"item": item_ids, "title": titles})
    if draw(st.booleans()):  # times as ISO date/time text instead of numbers
        inter["ts"] = pd.to_datetime(inter["ts"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return inter, items


def _write(df: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)


COLUMNS = CustomColumns(user="user", item="item", time="ts", title="title")


@SETTINGS
@given(data=tables(), fmt=FORMATS)
def test_well_formed_tables_round_trip(data, fmt):
    inter, items = data
    with tempfile.TemporaryDirectory() as tmp:
        pi, pt = Path(tmp) / f"interactions.{fmt}", Path(tmp) / f"items.{fmt}"
        _write(inter, pi)
        _write(items, pt)
        raw = load_custom(pi, pt, COLUMNS)
    assert len(raw.interactions) == len(inter) and len(raw.items) == len(items)
    assert raw.interactions["user"].tolist() == inter["user"].tolist()
    want = inter["ts"] if inter["ts"].dtype.kind == "i" else \
        pd.to_datetime(inter["ts"], utc=True).astype("datetime64[s, UTC]").astype("int64")
    assert raw.interactions["timestamp"].tolist() == want.tolist()
    try:
        ds, stats = build(raw, BuildOptions(protocol="loo", min_interactions=1, candidates=2))
    except DataError as e:  # tiny catalogs may leave a user no unseen item for its candidate set
        assert "candidates" in str(e)
        return
    pairs = inter.drop_duplicates(["user", "item"])
    assert ds.meta["n_interactions"] == len(pairs)
    assert ds.meta["n_users"] == inter["user"].nunique()
    assert ds.meta["n_items"] == pairs["item"].nunique()
    assert stats["dropped"].get("repeated_interactions", 0) == len(inter) - len(pairs)
    assert len(set(ds.items["title"])) == len(ds.items)  # titles unique, never empty
    assert all(ds.items["title"].str.len() > 0)


@st.composite
def broken(draw):
    """A well-formed table pair, then one corruption."""
    inter, items = draw(tables())
    kind = draw(st.sampled_from(["truncate", "garbage", "drop_column", "bad_time", "empty_id", "empty_file",
                                 "nan_time"]))
    return inter, items, kind, draw(st.integers(0, 10_000)), draw(st.binary(min_size=1, max_size=8))


@SETTINGS
@given(case=broken(), fmt=FORMATS, target=st.sampled_from(["interactions", "items"]))
def test_malformed_tables_give_data_error(case, fmt, target):
    inter, items, kind, where, junk = case
    with tempfile.TemporaryDirectory() as tmp:
        pi, pt = Path(tmp) / f"interactions.{fmt}", Path(tmp) / f"items.{fmt}"
        df = inter.copy() if target == "interactions" else items.copy()
        dropped, blank_row = None, False
        if kind == "drop_column":
            dropped = df.columns[where % len(df.columns)]
            df = df.drop(columns=dropped)
        elif kind == "bad_time" and target == "interactions":
            df["ts"] = df["ts"].astype(str)  # numbers or date text, one replaced by junk
            df.loc[df.index[where % len(df)], "ts"] = "not a time"
        elif kind == "nan_time" and target == "interactions":  # a missing time (NaN/null/empty field)
            df["ts"] = df["ts"].astype(object)
            df.loc[df.index[where % len(df)], "ts"] = None
        elif kind == "empty_id":
            col = "user" if target == "interactions" else "item"
            df[col] = df[col].astype(str)
            df.loc[df.index[where % len(df)], col] = ""
            # a row left with no value at all reads as a blank line (skipped, its items counted as unknown)
            blank_row = (df.loc[df.index[where % len(df)]].astype(str) == "").all()
        _write(inter if target == "items" else df, pi)
        _write(items if target == "interactions" else df, pt)
        path = pi if target == "interactions" else pt
        data = path.read_bytes()
        if kind == "truncate":
            path.write_bytes(data[: where % max(len(data), 1)])
        elif kind == "garbage":
            at = where % max(len(data), 1)
            path.write_bytes(data[:at] + junk + data[at:])
        elif kind == "empty_file":
            path.write_bytes(b"")
        required = {"interactions": {"user", "item", "ts"}, "items": {"item", "title"}}[target]
        must_fail = (kind == "empty_file" or (kind == "empty_id" and not blank_row)
                     or (kind in ("bad_time", "nan_time") and target == "interactions")
                     or (kind == "drop_column" and dropped in required))
        try:
            raw = load_custom(pi, pt, COLUMNS)
            build(raw, BuildOptions(protocol="loo", min_interactions=1, candidates=2))
        except DataError as e:
            assert str(e)  # a message, naming a file or what is wrong
        else:
            # only corruptions that can leave a readable table (junk inside a title, a cut at a row
            # boundary, an optional column dropped) may succeed; losing a required field never may
            assert not must_fail, f"{kind} in {target} was accepted silently"
