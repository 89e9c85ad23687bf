"""The raw form every loader returns, and the small text-parsing helpers the loaders share.

Every loader (one file per raw format, in `llmrec.data.formats`) turns its files into a `RawData`:
    interactions  user (str), item (str), timestamp (number)   -- in file order, nothing sorted or dropped yet
    items         item (str), title (str), genres (list[str]), where (str: "file line N", for error messages)
Raw ids are kept as strings so that "007" and "7" stay distinct and every format looks the same; the
protocol step maps them to contiguous integers. Everything that drops data happens later, in one place
(`llmrec.data.build`), where it is counted, logged and recorded in `meta.json`.

Parsing is done line by line in Python for the fixed formats (not `pandas.read_csv`) because a bad line must
be reported with its file and line number, and pandas silently fills short lines with NaN and shifts row
numbers over blank lines. Nothing damaged is read silently: a file without data rows is an error naming it
(`no_data_rows`), a file mixing encodings is decoded line by line and logged (`decode`), a time that is not a
finite number within int64 is an error naming its line (`parse_time`); each format's own repairs (a separator
inside a title, say) are described in its module.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from llmrec.base.errors import DataError

log = logging.getLogger(__name__)

RAW_INTERACTION_COLUMNS: tuple[str, ...] = ("user", "item", "timestamp")
RAW_ITEM_COLUMNS: tuple[str, ...] = ("item", "title", "genres", "where")


@dataclass(frozen=True)
class RawFile:
    """A raw input file: on disk (`path`) or already in memory (`data`, e.g. a member of a zip archive).

    `name` is what error messages call it (a path, or `archive.whl!member`).
    """

    name: str
    path: Path | None = None
    data: bytes | None = None

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> RawFile:
        return cls(name=str(path), path=Path(path))

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        try:
            return self.path.read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {self.name}: {e.strerror or e}") from None

    def open_binary(self) -> io.BufferedIOBase:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        try:
            return open(self.path, "rb")
        except OSError as e:
            raise DataError(f"cannot read {self.name}: {e.strerror or e}") from None

    def sha256(self) -> str:
        h = hashlib.sha256()
        if self.data is not None:
            h.update(self.data)
        else:
            with self.open_binary() as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()

    @property
    def basename(self) -> str:
        return self.name.replace("!", "/").rsplit("/", 1)[-1]


@dataclass
class RawData:
    """What every loader returns: interactions and items in the dataset's own ids, plus where they came from."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    files: list[RawFile] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)


def make_raw(users: list[str], items: list[str], timestamps: list[Any],
             item_ids: list[str], titles: list[str], genres: list[list[str]], where: list[str],
             files: list[RawFile], dropped: dict[str, int] | None = None) -> RawData:
    """Assemble a `RawData` from parallel lists (the loaders' common exit)."""
    inter = pd.DataFrame({"user": pd.Series(users, dtype=object), "item": pd.Series(items, dtype=object),
                          "timestamp": pd.Series(timestamps)})
    cat = pd.DataFrame({"item": pd.Series(item_ids, dtype=object), "title": pd.Series(titles, dtype=object),
                        "genres": pd.Series(genres, dtype=object), "where": pd.Series(where, dtype=object)})
    return RawData(interactions=inter, items=cat, files=files, dropped=dict(dropped or {}))


# ---------------------------------------------------------------------------------------------- text helpers
def decode(data: bytes, name: str, encoding: str = "utf-8", fallback: str | None = None) -> str:
    """Decode `data`; a bad byte raises `DataError` with the file and line, unless `fallback` is given.

    The MovieLens files are latin-1, but users often re-save them as UTF-8, or paste a UTF-8 line into a latin-1
    file; such loaders pass `encoding="utf-8", fallback="latin-1"`. Then each line is decoded by itself: as UTF-8
    when it is valid UTF-8, else as latin-1 (valid multi-byte UTF-8 essentially never occurs in latin-1 text, and
    latin-1 decodes any byte), so a mixed file reads correctly instead of turning every accented title into
    mojibake; what was done is logged. A leading UTF-8 byte-order mark is dropped.
    """
    utf8 = encoding.lower().replace("_", "-") in ("utf-8", "utf8")
    if utf8 and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        if fallback is None:
            line = data.count(b"\n", 0, e.start) + 1
            raise DataError(f"{name} line {line}: byte 0x{data[e.start]:02x} is not valid {encoding} text; expected "
                            f"a {encoding} file (re-save it as {encoding}, or give its encoding with --encoding)") \
                from None
    except LookupError:
        raise DataError(f"{name}: unknown text encoding {encoding!r}") from None
    return _decode_per_line(data, name, encoding, fallback)


def _decode_per_line(data: bytes, name: str, encoding: str, fallback: str) -> str:
    """Each line in `encoding` if it is valid there, else in `fallback` (logged; a warning if both occur)."""
    out, in_fallback, non_ascii = [], [], []
    for number, part in enumerate(data.split(b"\n"), 1):
        try:
            text = part.decode(encoding)
            if not part.isascii():
                non_ascii.append(number)
        except UnicodeDecodeError:
            try:
                text = part.decode(fallback)
            except UnicodeDecodeError as e:
                raise DataError(f"{name} line {number}: byte 0x{part[e.start]:02x} is neither {encoding} nor "
                                f"{fallback} text; expected a {encoding} or {fallback} file") from None
            in_fallback.append(number)
        out.append(text)
    if non_ascii:
        log.warning("%s mixes text encodings: %d line(s) are not valid %s and were read as %s (first: line %d), "
                    "%d line(s) are %s text (first: line %d); decoded each line in its own encoding", name,
                    len(in_fallback), encoding, fallback, in_fallback[0], len(non_ascii), encoding, non_ascii[0])
    else:
        log.info("%s is %s text, not %s (first such line: %d); read it as %s", name, fallback, encoding,
                 in_fallback[0], fallback)
    return "\n".join(out)


def lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) for each non-blank line.

    Splits on "\\n" only: `str.splitlines` also splits on U+0085 and friends, which latin-1 titles contain.
    """
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if line.strip():
            yield number, line


def split_fields(line: str, sep: str, expected: int, name: str, number: int, what: str,
                 at_least: bool = False) -> list[str]:
    """Split one line into exactly (or, with `at_least`, at least) `expected` fields or raise `DataError`."""
    fields = line.split(sep)
    if len(fields) != expected and not (at_least and len(fields) > expected):
        shown = line if len(line) <= 120 else line[:117] + "..."
        sep_name = {"\t": "tab", "|": "'|'", "::": "'::'", ",": "','"}.get(sep, repr(sep))
        raise DataError(f"{name} line {number}: expected {'at least ' if at_least else ''}{expected} "
                        f"{sep_name}-separated fields ({what}), found {len(fields)}: {shown!r}")
    return fields


def parse_int(value: str, name: str, number: int, field_name: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise DataError(f"{name} line {number}: field {field_name!r} is {value!r}, expected an integer") from None


def parse_number(value: str, name: str, number: int, field_name: str) -> float | int:
    v = value.strip()
    try:
        return int(v)
    except ValueError:
        pass
    try:
        f = float(v)
    except ValueError:
        raise DataError(f"{name} line {number}: field {field_name!r} is {value!r}, expected a number") from None
    if not math.isfinite(f):
        raise DataError(f"{name} line {number}: field {field_name!r} is {value!r}, expected a finite number")
    return int(f) if f.is_integer() else f


TIME_LIMIT = 2 ** 63  # times become int64 seconds/ms/...: anything beyond cannot be stored (nor is a real time)


def parse_time(value: str, name: str, number: int, field_name: str = "timestamp",
               integer: bool = False) -> float | int:
    """A finite number (an integer with `integer`) that fits the int64 the processed tables store (seconds,
    milliseconds, ... as given)."""
    t = parse_int(value, name, number, field_name) if integer else parse_number(value, name, number, field_name)
    if not -TIME_LIMIT < t < TIME_LIMIT:
        raise DataError(f"{name} line {number}: field {field_name!r} is {value.strip()!r}, out of range; expected "
                        f"a time such as unix seconds or milliseconds (at most 18 digits)")
    return t


def no_data_rows(name: str, expected: str, detail: str = "") -> DataError:
    """The error for a raw file that holds no data rows (empty, or a header line only)."""
    return DataError(f"{name} has no data rows{f' ({detail})' if detail else ''}; expected {expected}")


def require_id(value: str, name: str, number: int, field_name: str) -> str:
    v = value.strip()
    if not v:
        raise DataError(f"{name} line {number}: field {field_name!r} is empty, expected an id")
    return v


def find_file(folder: Path, filename: str, dataset: str, hint: str) -> RawFile:
    """`folder/filename` (or `folder/<dataset>/filename`, as archives unpack), else a `DataError` saying where
    it was looked for and where to get it."""
    candidates = [folder / filename, folder / dataset / filename]
    for c in candidates:
        if c.is_file():
            return RawFile.from_path(c)
    looked = " or ".join(str(c) for c in candidates)
    raise DataError(f"{dataset}: raw file {filename} not found (looked for {looked}). {hint}")
