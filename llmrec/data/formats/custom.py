"""Your own logs: an interactions table and an items table as CSV, TSV or parquet (chosen by extension).

    interactions   columns user, item, time (names configurable; extra columns are ignored)
    items          columns item, title, optional genres (a list, or text split on --genres-separator)
Times are numbers (any unit; order is what matters) or date/time text (ISO 8601 and the like, converted to
unix seconds). Ids are read as text, so "007" and "7" are different users. Every error names the file, the line
(CSV/TSV: line numbers count the header as line 1) or row (parquet), and the column.

Damage is reported, never read into a silently wrong table:
- CSV/TSV are parsed with Python's `csv` module with strict quoting (not `pandas.read_csv`), so each row knows
  the line it starts on. A stray double quote, which would swallow the following lines into one field, is an
  error naming the line it opens on; so is a row with more or fewer fields than the header (a field containing
  the separator must be quoted; pandas would shift columns or fill NaN). Line breaks inside quoted fields are
  accepted (and logged) only in columns that are not read; in an id, time, title or genres column they are an
  error.
- Text is decoded in `--encoding` (UTF-8 by default; a bad byte is an error naming its line). With another
  encoding, a file whose lines are partly valid UTF-8 and partly not is decoded line by line (the UTF-8 lines as
  UTF-8, the others in `--encoding`), and this is logged.
- A missing id or time (an empty field, a parquet null, NaN) is an error, and so is a text id that spells a
  missing value ("NULL", "None", "NaN", "<NA>", ...: a null written out as text, which would otherwise become a
  user of that name). Ids that parquet stores as floating-point numbers (1.0, typical of a pandas column that
  once held NaN) are read as the integers they are ("1", so they match "1" in the other file); this is logged.
- A parquet file that cannot be read is reported as damaged, never as a pyarrow traceback.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.data.raw import TIME_LIMIT, RawData, RawFile, decode, make_raw, no_data_rows
from llmrec.base.errors import DataError

log = logging.getLogger(__name__)

EXTENSIONS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".parquet": None, ".pq": None}
SEPARATOR_NAMES = {",": "','", "\t": "tab"}
# text that stands for a missing value when found in an id column (compared lower-cased)
NULL_TEXTS = frozenset({"null", "none", "nan", "<na>", "nat", "n/a", "#n/a"})


@dataclass(frozen=True)
class CustomColumns:
    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"
    title: str = "title"
    genres: str | None = None
    genres_separator: str = "|"


@dataclass
class _Table:
    """A read table: the columns it was asked for, the header, and where each row is (for messages)."""

    path: Path
    header: list[str]
    df: pd.DataFrame
    locs: np.ndarray  # (rows,) line (CSV/TSV) or row (parquet) number of each row, as the user counts
    unit: str  # "line" or "row"

    def where(self, i: int) -> str:
        return f"{self.path} {self.unit} {int(self.locs[i])}"


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


# ---------------------------------------------------------------------------------------------- reading
def _read_table(path: Path, encoding: str, used: list[str]) -> _Table:
    """The table's `used` columns (those present; `_column` reports a missing one) and each row's location."""
    if not path.is_file():
        raise DataError(f"custom: file {path} not found")
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise DataError(f"{path}: unknown extension {path.suffix!r}; expected one of "
                        f"{', '.join(EXTENSIONS)} (the format is chosen by extension)")
    sep = EXTENSIONS[ext]
    if sep is None:
        return _read_parquet(path)
    return _read_text_table(path, sep, encoding, used)


def _read_parquet(path: Path) -> _Table:
    import pyarrow as pa

    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError, TypeError, NotImplementedError, pa.ArrowException) as e:
        reason = " ".join(str(e).split())[:200]
        raise DataError(f"{path} is damaged or not a parquet file (pyarrow: {reason}); expected a complete parquet "
                        f"file: write it again with the tool that made it (e.g. pandas' DataFrame.to_parquet)") \
            from None
    if len(df) == 0:
        raise no_data_rows(str(path), "one row per interaction or item", f"0 rows; columns "
                           f"{', '.join(map(str, df.columns))}")
    df.columns = [str(c) for c in df.columns]
    return _Table(path, list(df.columns), df.reset_index(drop=True), np.arange(1, len(df) + 1), "row")


def _decode_text(data: bytes, path: Path, encoding: str) -> str:
    """The file's text in `encoding`; line by line when a non-UTF-8 file also holds UTF-8 lines (module doc)."""
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"{path}: unknown text encoding {encoding!r} (--encoding)") from None
    ascii_compatible = "ab\n,\t".encode(codec.name, errors="replace") == b"ab\n,\t"
    if codec.name.startswith("utf-8") or not ascii_compatible or data.isascii():
        return decode(data, str(path), encoding)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:  # some lines are not UTF-8: those are in --encoding, any UTF-8 ones stay UTF-8
        return decode(data, str(path), "utf-8", fallback=encoding)
    log.warning("%s is valid UTF-8 throughout but is read as %s (--encoding); if its titles look wrong "
                "(e.g. 'Ã©' instead of 'é'), leave out --encoding", path, encoding)
    return decode(data, str(path), encoding)


def _read_text_table(path: Path, sep: str, encoding: str, used: list[str]) -> _Table:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    text = _decode_text(data, path, encoding)
    sep_name = SEPARATOR_NAMES.get(sep, repr(sep))
    expected_rows = f"a header line with column names, then one {sep_name}-separated line per row"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    header: list[str] | None = None
    index: dict[str, int] = {}
    rows: list[list[str]] = []
    locs: list[int] = []
    spanning: list[tuple[int, int]] = []  # (first, last line) of rows with quoted line breaks in unread columns
    end = 0  # last line of the previous row
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not any(row):  # a blank line, or only separators: no data
                continue
            if header is None:
                header = row
                index = _header_index(header, used, path, start)
                continue
            if len(row) != len(header):
                shown = sep.join(row)
                shown = shown if len(shown) <= 120 else shown[:117] + "..."
                hint = f"; a field that contains {sep_name} must be quoted" if len(row) > len(header) else ""
                raise DataError(f"{path} line {start}: expected {len(header)} {sep_name}-separated fields "
                                f"({', '.join(header)}), found {len(row)}{hint}: {shown!r}")
            if end > start:
                broken = [c for c, i in index.items() if "\n" in row[i] or "\r" in row[i]]
                if broken:
                    raise DataError(f"{path} line {start}: column {broken[0]!r} runs over lines {start}-{end} (a "
                                    f"quoted field with line breaks); expected one line per row: probably an "
                                    f"unbalanced '\"' on line {start}")
                spanning.append((start, end))
            rows.append(row)
            locs.append(start)
    except csv.Error as e:
        raise _quote_error(e, path, end + 1, reader.line_num, sep_name, ext=path.suffix[1:].upper()) from None
    if header is None:
        raise no_data_rows(str(path), expected_rows, "the file is empty")
    if not rows:
        raise no_data_rows(str(path), expected_rows, "only a header line")
    if spanning:
        log.warning("%s: %d row(s) span several lines (line breaks inside quoted fields of columns that are not "
                    "read; first: lines %d-%d); each was read as one row", path, len(spanning), *spanning[0])
    df = pd.DataFrame({c: pd.Series([r[i] for r in rows], dtype=object) for c, i in index.items()})
    return _Table(path, header, df, np.asarray(locs, dtype=np.int64), "line")


def _header_index(header: list[str], used: list[str], path: Path, line: int) -> dict[str, int]:
    """Column name -> position for the `used` columns present; a used name given twice is an error."""
    index = {}
    for name in used:
        at = [i for i, h in enumerate(header) if h == name]
        if len(at) > 1:
            raise DataError(f"{path} line {line}: column {name!r} appears {len(at)} times in the header; expected "
                            f"distinct column names")
        if at:
            index[name] = at[0]
    return index


def _quote_error(e: csv.Error, path: Path, start: int, last: int, sep_name: str, ext: str) -> DataError:
    """A one-line message for what Python's strict csv parser refused (a quote problem, almost always)."""
    msg = str(e)
    swallowed = f" (it runs to line {last})" if last > start else ""
    if "unexpected end of data" in msg:
        return DataError(f"{path} line {start}: a double quote opens a quoted field that is never closed (it "
                         f"swallows the rest of the file); expected balanced quotes: quote the whole field and "
                         f"double any '\"' inside it")
    if "expected after" in msg:
        return DataError(f"{path} line {start}: a quoted field{swallowed} is followed by more text before the next "
                         f"{sep_name}; expected a field that starts with '\"' to end with '\"' right before a "
                         f"{sep_name} or the line end: probably an unbalanced '\"' on line {start} (quote the "
                         f"whole field and double any '\"' inside it)")
    if "field larger than field limit" in msg:
        return DataError(f"{path} line {start}: a field longer than {csv.field_size_limit()} characters: probably "
                         f"an unbalanced '\"' on line {start} swallows the lines after it")
    return DataError(f"{path} line {start}: malformed {ext} ({msg})")


def _column(table: _Table, name: str, option: str) -> pd.Series:
    if name not in table.df.columns:
        raise DataError(f"{table.path}: no column {name!r} (set it with --{option}); the file has columns "
                        f"{', '.join(map(str, table.header))}")
    return table.df[name]


# ---------------------------------------------------------------------------------------------- values
def _is_null(value: object) -> bool:
    """None, NaN, pandas' NA / NaT (a list or array is a value, not a null)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and bool(np.isnan(value))


def _text(value: object) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _ids(col: pd.Series, table: _Table, name: str) -> list[str]:
    nulls = col.isna().to_numpy()
    if nulls.any():
        raise DataError(f"{table.where(int(np.flatnonzero(nulls)[0]))}: column {name!r} is empty (null), expected "
                        f"an id")
    if col.dtype.kind == "f":
        numbers = col.to_numpy(np.float64)
        if np.isfinite(numbers).all() and (numbers == np.floor(numbers)).all():
            log.info("%s: column %r holds integers stored as floating-point numbers (e.g. %r); read them as "
                     "integers (%d)", table.path, name, float(numbers[0]), int(numbers[0]))
            return [str(int(x)) for x in numbers]
    raw = col.tolist()
    nested = [i for i, v in enumerate(raw) if isinstance(v, (list, tuple, dict, set, np.ndarray))]
    if nested:
        raise DataError(f"{table.where(nested[0])}: column {name!r} holds a {type(raw[nested[0]]).__name__} "
                        f"({_text(raw[nested[0]])[:40]}), expected an id (text or an integer)")
    values = [v.strip() if isinstance(v, str) else _text(v).strip() for v in raw]
    for i, v in enumerate(values):
        if v == "":
            raise DataError(f"{table.where(i)}: column {name!r} is empty, expected an id")
        if v.lower() in NULL_TEXTS:
            raise DataError(f"{table.where(i)}: column {name!r} is {v!r}, which stands for a missing value; "
                            f"expected an id (remove the row, or rename the id if it is real)")
    return values


def _times(col: pd.Series, table: _Table, name: str) -> np.ndarray:
    """Numbers as they are (NaN/inf/out of range rejected), else date/time text as unix seconds."""
    missing = col.isna().to_numpy() | np.array([isinstance(v, str) and not v.strip() for v in col.tolist()],
                                               dtype=bool)
    if missing.any():
        raise DataError(f"{table.where(int(np.flatnonzero(missing)[0]))}: column {name!r} is empty (null), "
                        f"expected a number or a date/time")
    if col.dtype.kind == "b":
        raise DataError(f"{table.path}: column {name!r} holds true/false values, expected numbers or dates/times")
    if pd.api.types.is_datetime64_any_dtype(col):
        parsed = pd.to_datetime(col, utc=True)
        numbers = np.zeros(len(col), dtype=bool)
    else:
        numeric = pd.to_numeric(col, errors="coerce")
        numbers = numeric.notna().to_numpy()
        if numbers.all():
            as_float = numeric.to_numpy(np.float64)
            bad = ~np.isfinite(as_float) | (np.abs(as_float) >= TIME_LIMIT)
            if not bad.any():
                return numeric.to_numpy(np.int64) if numeric.dtype.kind in "iu" else as_float
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{table.where(i)}: column {name!r} is {col.iloc[i]!r}, expected a finite time such "
                            f"as unix seconds or milliseconds (at most 18 digits)")
        if 2 * numbers.sum() >= len(col):  # mostly numbers: the other values are the errors
            i = int(np.flatnonzero(~numbers)[0])
            raise DataError(f"{table.where(i)}: column {name!r} is {col.iloc[i]!r}, expected a number like the "
                            f"other rows")
        parsed = pd.to_datetime(col.astype(str), errors="coerce", utc=True, format="mixed")
    bad = parsed.isna().to_numpy() | numbers  # mostly dates/times: a bare number among them is an error too
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{table.where(i)}: column {name!r} is {col.iloc[i]!r}, expected a date/time like the "
                        f"other rows (or a number in every row)")
    # whole seconds since the epoch, whatever resolution pandas chose (no overflow for far dates)
    return parsed.dt.tz_convert(None).to_numpy().astype("datetime64[s]").astype(np.int64)


def _title(value: object) -> str:
    return "" if _is_null(value) else _text(value)


def _genres(value: object, sep: str) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_text(x) for x in value if not _is_null(x)]
    if _is_null(value):
        return []
    return [g.strip() for g in _text(value).split(sep) if g.strip()]


def load_custom(interactions: Path, items: Path, columns: CustomColumns = CustomColumns(),
                encoding: str = "utf-8") -> RawData:
    interactions, items = Path(interactions), Path(items)
    table = _read_table(interactions, encoding, [columns.user, columns.item, columns.time])
    users = _ids(_column(table, columns.user, "user-column"), table, columns.user)
    item_ids = _ids(_column(table, columns.item, "item-column"), table, columns.item)
    times = _times(_column(table, columns.time, "time-column"), table, columns.time)

    cat = _read_table(items, encoding, [c for c in (columns.item, columns.title, columns.genres) if c])
    ids = _ids(_column(cat, columns.item, "item-column"), cat, columns.item)
    titles = [_title(v) for v in _column(cat, columns.title, "title-column").tolist()]
    genres = ([_genres(v, columns.genres_separator) for v in _column(cat, columns.genres, "genres-column").tolist()]
              if columns.genres else [[] for _ in ids])
    where = [cat.where(i) for i in range(len(ids))]
    return make_raw(users, item_ids, list(times), ids, titles, genres, where,
                    files=[RawFile.from_path(interactions), RawFile.from_path(items)])
