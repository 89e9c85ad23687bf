"""Your own logs: an interactions table and an items table as CSV, TSV or parquet (chosen by extension).

    interactions   columns user, item, time (names configurable; extra columns are ignored)
    items          columns item, title, optional genres (a list, or text split on --genres-separator)
Times are numbers (any unit; order is what matters) or date/time text (ISO 8601 and the like, converted to
unix seconds). Ids are read as text, so "007" and "7" are different users. Every error names the file, the line
(CSV/TSV: line numbers count the header as line 1) or row (parquet), and the column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.data.raw import RawData, RawFile, make_raw
from llmrec.errors import DataError

EXTENSIONS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".parquet": None, ".pq": None}


@dataclass(frozen=True)
class CustomColumns:
    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"
    title: str = "title"
    genres: str | None = None
    genres_separator: str = "|"


def find_custom_file(raw_dir: Path, stem: str) -> Path:
    """The single `<stem>.csv|.tsv|.tab|.parquet|.pq` in `raw_dir`."""
    found = [raw_dir / f"{stem}{ext}" for ext in EXTENSIONS if (raw_dir / f"{stem}{ext}").is_file()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"custom: no {stem} file found in {raw_dir} (looked for {stem}.csv, {stem}.tsv, "
                        f"{stem}.parquet); pass --{stem} FILE or put one there")
    raise DataError(f"custom: several {stem} files in {raw_dir} ({', '.join(p.name for p in found)}); "
                    f"pass --{stem} FILE to choose one")


def _read_table(path: Path, encoding: str) -> tuple[pd.DataFrame, int]:
    """The table as text columns, and the offset from row index to what the user sees (line or row number)."""
    if not path.is_file():
        raise DataError(f"custom: file {path} not found")
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise DataError(f"{path}: unknown extension {path.suffix!r}; expected one of "
                        f"{', '.join(EXTENSIONS)} (the format is chosen by extension)")
    sep = EXTENSIONS[ext]
    try:
        if sep is None:
            df = pd.read_parquet(path)
            return df, 1
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_filter=False,
                         skip_blank_lines=False, encoding=encoding, engine="c")
        # blank lines hold no data: drop them but keep the index, so line numbers stay exact
        blank = (df.astype(str) == "").all(axis=1) if len(df.columns) else pd.Series(False, index=df.index)
        return df[~blank], 2
    except UnicodeDecodeError as e:
        data = path.read_bytes()
        # pandas reads in chunks; find the first bad byte ourselves for an exact line
        try:
            data.decode(encoding)
            line = "?"
        except UnicodeDecodeError as e2:
            line = str(data.count(b"\n", 0, e2.start) + 1)
        raise DataError(f"{path} line {line}: not valid {encoding} text ({e.reason}); re-save it as {encoding} "
                        f"or pass --encoding") from None
    except LookupError:
        raise DataError(f"{path}: unknown text encoding {encoding!r}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty; expected a header line with column names and data lines") from None
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: malformed {ext[1:].upper()} ({str(e).strip()})") from None
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: cannot read as {ext[1:]} ({e})") from None


def _column(df: pd.DataFrame, name: str, path: Path, option: str) -> pd.Series:
    if name not in df.columns:
        raise DataError(f"{path}: no column {name!r} (set it with --{option}); the file has columns "
                        f"{', '.join(map(str, df.columns))}")
    return df[name]


def _where(path: Path, offset: int, row: int) -> str:
    return f"{path} {'row' if offset == 1 else 'line'} {row + offset}"


def _ids(col: pd.Series, path: Path, offset: int, name: str) -> list[str]:
    values = [("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()) for v in col]
    for row, v in zip(col.index, values):
        if v == "":
            raise DataError(f"{_where(path, offset, int(row))}: column {name!r} is empty, expected an id")
    return values


def _times(col: pd.Series, path: Path, offset: int, name: str) -> np.ndarray:
    """Numbers as they are (NaN/inf rejected), else date/time text as unix seconds."""
    if pd.api.types.is_datetime64_any_dtype(col):
        parsed = pd.to_datetime(col, utc=True)
    else:
        numeric = pd.to_numeric(col, errors="coerce")
        if numeric.notna().all() and np.isfinite(numeric.to_numpy(np.float64)).all():
            return numeric.to_numpy()
        if numeric.notna().any():  # a numeric column: the other values are errors, not dates
            i = int(np.flatnonzero(~np.isfinite(numeric.to_numpy(np.float64, na_value=np.nan)))[0])
            raise DataError(f"{_where(path, offset, int(col.index[i]))}: column {name!r} is {col.iloc[i]!r}, "
                            f"expected a number like the other rows")
        parsed = pd.to_datetime(col.astype(str), errors="coerce", utc=True, format="mixed")
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{_where(path, offset, int(col.index[i]))}: column {name!r} is {col.iloc[i]!r}, "
                        f"expected a number or a date/time")
    # whole seconds since the epoch, whatever resolution pandas chose (no overflow for far dates)
    return parsed.dt.tz_convert(None).to_numpy().astype("datetime64[s]").astype(np.int64)


def _genres(value: object, sep: str) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(x) for x in value]
    return [g.strip() for g in str(value).split(sep) if g.strip()]


def load_custom(interactions: Path, items: Path, columns: CustomColumns = CustomColumns(),
                encoding: str = "utf-8") -> RawData:
    interactions, items = Path(interactions), Path(items)
    df, off = _read_table(interactions, encoding)
    users = _ids(_column(df, columns.user, interactions, "user-column"), interactions, off, columns.user)
    item_ids = _ids(_column(df, columns.item, interactions, "item-column"), interactions, off, columns.item)
    times = _times(_column(df, columns.time, interactions, "time-column"), interactions, off, columns.time)

    cat, coff = _read_table(items, encoding)
    ids = _ids(_column(cat, columns.item, items, "item-column"), items, coff, columns.item)
    titles = [("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
              for v in _column(cat, columns.title, items, "title-column")]
    genres = ([_genres(v, columns.genres_separator) for v in _column(cat, columns.genres, items, "genres-column")]
              if columns.genres else [[] for _ in ids])
    where = [_where(items, coff, int(i)) for i in cat.index]
    return make_raw(users, item_ids, list(times), ids, titles, genres, where,
                    files=[RawFile.from_path(interactions), RawFile.from_path(items)])
