"""The processed dataset: the one contract between `llmrec prepare` and every later stage (docs/design.md §3).

A processed folder holds
    interactions.parquet  user_id, item_id, timestamp        (sorted by user, then time; ids contiguous from 1)
    items.parquet         item_id, title, genres, raw_id     (title unique within the catalog)
    users.parquet         user_id, raw_id, split             (split: train/valid/test for `llara`, all for `loo`)
    samples_{train,valid,test}.parquet
                          user_id, position, history, target, candidates
    meta.json             counts, protocol, seed, source and checksums (written last: its presence marks a
                          complete folder)
Conventions: item id 0 is padding and never a real item; `history` is oldest -> newest and already truncated
to the protocol's max length; `position` is the target's index in the user's time-sorted sequence, so the
whole earlier sequence (for excluding seen items from full ranking) is `user_sequence(user)[:position]`;
`candidates` holds the target plus the sampled negatives, shuffled, identical for every model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from llmrec.base.atomic import (
    LegacyOutput,
    PreviousOutput,
    atomic_write_text,
    check_output,
    output_directory,
)
from llmrec.base.errors import DataError
from llmrec.base.markers import MarkerSpec, read_marker

SPLITS: tuple[str, ...] = ("train", "valid", "test")
Split = Literal["train", "valid", "test"]
SAMPLE_COLUMNS: tuple[str, ...] = ("user_id", "position", "history", "target", "candidates")
ITEM_COLUMNS: tuple[str, ...] = ("item_id", "title", "genres", "raw_id")
INTERACTION_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "timestamp")
USER_COLUMNS: tuple[str, ...] = ("user_id", "raw_id", "split")
META_FILE = "meta.json"
SPEC = MarkerSpec(kind="llmrec-processed-dataset", version=1, what="a prepared dataset", writer="`llmrec prepare`")
MARKER, FORMAT_VERSION = SPEC.kind, SPEC.version


def _prepare_hint(path: Path) -> str:
    return f"run `llmrec prepare --dataset ml-100k --out {path}` (or another --dataset) first"


def _rebuild_hint(folder: Path, damaged: Path | None = None) -> str:
    """How to rebuild a damaged or incomplete prepare output, with the options saved beside it (config.yaml).

    `prepare` refuses to overwrite a file changed since it wrote it (`llmrec.base.atomic.check_output`), so a
    `damaged` file must first leave the folder; a damaged meta.json of a folder without llmrec's output marker
    means prepare cannot prove the folder is its own at all, so the whole folder must be moved away.
    """
    from llmrec.base.atomic import read_output_marker

    config = folder / "config.yaml"
    rerun = (f"`llmrec prepare --config {config}`" if config.is_file() else
             f"`llmrec prepare --out {folder}` with the options it was prepared with")
    if damaged is None:
        return f"it was written by `llmrec prepare`: re-run {rerun} to complete it"
    if damaged.name == META_FILE and read_output_marker(folder) is None:
        moved = folder.with_name(folder.name + ".damaged")
        return (f"move the folder away (e.g. to {moved}), then re-run "
                f"{rerun.replace(str(config), str(moved / 'config.yaml'))} to rebuild it")
    return (f"it was written by `llmrec prepare`: move {damaged.name} out of the folder (or delete it), then "
            f"re-run {rerun} to rebuild the folder")


@dataclass
class ProcessedDataset:
    """In-memory processed dataset; `load` / `save` read and write the folder format above."""

    meta: dict[str, Any]
    items: pd.DataFrame
    interactions: pd.DataFrame
    users: pd.DataFrame
    samples: dict[str, pd.DataFrame]
    root: Path | None = None
    _sequences: dict[int, np.ndarray] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ facts
    @property
    def n_items(self) -> int:
        """Number of real items; valid item ids are 1..n_items."""
        return int(self.meta["n_items"])

    @property
    def n_users(self) -> int:
        return int(self.meta["n_users"])

    @property
    def protocol(self) -> str:
        return str(self.meta["protocol"])

    @property
    def domain(self) -> str:
        """What the items are (`movies`, `games`, `music` or `generic`): chooses prompt wording."""
        return str(self.meta.get("domain", "generic"))

    def catalog_fingerprint(self) -> str:
        """sha256 over (item_id, title) pairs: models trained on one catalog refuse another."""
        h = hashlib.sha256()
        for i, t in zip(self.items["item_id"].to_numpy(), self.items["title"].tolist()):
            h.update(f"{int(i)}\t{t}\n".encode("utf-8"))
        return h.hexdigest()

    def titles(self) -> list[str]:
        """Titles indexed by item id; index 0 (padding) is the empty string."""
        out = [""] * (self.n_items + 1)
        for i, t in zip(self.items["item_id"].to_numpy(), self.items["title"].tolist()):
            out[int(i)] = t
        return out

    def user_sequences(self) -> dict[int, np.ndarray]:
        """Each user's item ids in time order (cached)."""
        if self._sequences is None:
            inter = self.interactions
            users = inter["user_id"].to_numpy()
            items = inter["item_id"].to_numpy()
            bounds = np.flatnonzero(np.diff(users)) + 1
            starts = np.concatenate([[0], bounds])
            self._sequences = {int(users[s]): seq for s, seq in zip(starts, np.split(items, bounds))} \
                if len(users) else {}
        return self._sequences

    def user_sequence(self, user_id: int) -> np.ndarray:
        return self.user_sequences()[int(user_id)]

    def train_sequences(self) -> list[np.ndarray]:
        """The sequences a model may train on, without leaking any valid/test target.

        `llara`: the full sequences of train users (valid/test users are held out entirely).
        `loo`: every user's sequence without its last two items (valid and test targets).
        """
        seqs = self.user_sequences()
        if self.protocol == "loo":
            return [s[:-2] for s in seqs.values() if len(s) > 2]
        train_users = self.users.loc[self.users["split"] == "train", "user_id"].to_numpy()
        return [seqs[int(u)] for u in train_users if int(u) in seqs]

    def split(self, name: Split) -> pd.DataFrame:
        if name not in self.samples:
            raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return self.samples[name]

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike, extra_files: Callable[[Path], None] | None = None) -> Path:
        """Write the folder atomically; an existing folder must be a previous prepare output (files a user added
        to it are kept: `llmrec.base.atomic.output_directory`). `extra_files(tmp)` writes more files into the folder
        before it is put in place (prepare's config.yaml)."""
        path = Path(path)
        meta = {**self.meta, "format": SPEC.kind, "format_version": SPEC.version}  # this key order, as always
        with output_directory(path, OUTPUT_COMMAND, legacy=LEGACY_OUTPUT, what=OUTPUT_WHAT, error=DataError) as tmp:
            self.items.loc[:, list(ITEM_COLUMNS)].to_parquet(tmp / "items.parquet", index=False)
            self.interactions.loc[:, list(INTERACTION_COLUMNS)].to_parquet(tmp / "interactions.parquet", index=False)
            self.users.loc[:, list(USER_COLUMNS)].to_parquet(tmp / "users.parquet", index=False)
            for split in SPLITS:
                self.samples[split].loc[:, list(SAMPLE_COLUMNS)].to_parquet(tmp / f"samples_{split}.parquet",
                                                                             index=False)
            atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2, sort_keys=False) + "\n")
            if extra_files is not None:
                extra_files(tmp)
        self.meta, self.root = meta, path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProcessedDataset:
        """Read a folder written by `llmrec prepare`; a clear error names what is missing.

        A table that cannot be read (truncated by an interrupted copy, say) or whose row count differs from the
        one meta.json records is named as damaged, with the way to rebuild the folder from its config.yaml.
        """
        path = Path(path)
        if not path.is_dir():
            raise DataError(f"data folder {path} does not exist; {_prepare_hint(path)}")
        meta = read_meta(path)
        tables = {}
        for name, columns in (("items", ITEM_COLUMNS), ("interactions", INTERACTION_COLUMNS),
                              ("users", USER_COLUMNS)) + tuple((f"samples_{s}", SAMPLE_COLUMNS) for s in SPLITS):
            f = path / f"{name}.parquet"
            if not f.is_file():
                raise DataError(f"{f} is missing: {path} is an incomplete prepare output; {_rebuild_hint(path)}")
            df = _read_table(f, path)
            missing = [c for c in columns if c not in df.columns]
            if missing:
                raise DataError(f"{f}: missing column(s) {', '.join(missing)}; expected {', '.join(columns)}; "
                                f"{_rebuild_hint(path, f)}")
            tables[name] = df
        _check_counts(path, meta, tables)
        return cls(meta=meta, items=tables["items"], interactions=tables["interactions"], users=tables["users"],
                   samples={s: tables[f"samples_{s}"] for s in SPLITS}, root=path)


def _read_table(f: Path, folder: Path) -> pd.DataFrame:
    """One parquet table of a processed folder; a damaged (e.g. truncated) file is named, never a traceback."""
    import pyarrow as pa

    try:
        return pd.read_parquet(f)
    except (OSError, ValueError, TypeError, NotImplementedError, pa.ArrowException) as e:
        reason = " ".join(str(e).split())[:160]
        raise DataError(f"{f} is damaged (not a readable parquet file: {reason}); {_rebuild_hint(folder, f)}") \
            from None


def _check_counts(path: Path, meta: dict[str, Any], tables: dict[str, pd.DataFrame]) -> None:
    """Row counts against meta.json: a table damaged or swapped after `prepare` wrote it is caught here."""
    expected = {"items": meta.get("n_items"), "interactions": meta.get("n_interactions"),
                "users": meta.get("n_users")}
    expected.update({f"samples_{s}": (meta.get("n_samples") or {}).get(s) for s in SPLITS})
    for name, n in expected.items():
        if isinstance(n, int) and len(tables[name]) != n:
            f = path / f"{name}.parquet"
            raise DataError(f"{f} has {len(tables[name])} rows but {path / META_FILE} records {n}: the folder "
                            f"was damaged or edited after `llmrec prepare` wrote it; {_rebuild_hint(path, f)}")


def read_meta(path: Path) -> dict[str, Any]:
    """`meta.json` of a processed folder, checked to be ours (`llmrec.base.markers`: one error format)."""
    path = Path(path)

    def advice(problem: str) -> str:
        if problem in ("damaged", "not-object", "field"):
            return _rebuild_hint(path, path / META_FILE)
        if problem == "version":
            return "re-run `llmrec prepare`"
        return _prepare_hint(path)

    return read_marker(path / META_FILE, SPEC, error=DataError, advice=advice)


def is_processed_dir(path: Path) -> bool:
    try:
        read_meta(path)
        return True
    except DataError:
        return False


OUTPUT_COMMAND = "prepare"
OUTPUT_WHAT = "a previous `llmrec prepare` output"
# prepare outputs written before `.llmrec-output.json`: proven by meta.json's format field
LEGACY_OUTPUT = LegacyOutput(is_processed_dir, ("*.parquet", META_FILE, "config.yaml"))


def check_output_dir(path: Path) -> PreviousOutput | None:
    """Refuse to replace a folder that is neither empty nor a previous prepare output (never deletes it)."""
    return check_output(path, OUTPUT_COMMAND, legacy=LEGACY_OUTPUT, what=OUTPUT_WHAT, error=DataError)
