"""The item catalog a model was trained on: ids, titles (and genres), carried inside every model folder.

A trained LLM recommender needs the titles its prompts were built from, and serving needs them without the
prepared dataset, so the catalog travels with the checkpoint (`catalog.parquet`). Its fingerprint (sha256 over
the (item_id, title) pairs) is what every stage compares to refuse a model trained on another catalog.

Two ids per item: `item_id`, the model's index (1..n, the row of its embeddings; `llmrec prepare` numbers the
items), and `raw_id`, the id of the dataset's own log (MovieLens' movie id, Steam's product id, `B00001` in a
custom log), which is how users know the item. `ItemIds` maps one to the other for serving.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from llmrec.base.atomic import atomic_write
from llmrec.base.errors import CheckpointError
from llmrec.base.files import read_parquet

CATALOG_FILE = "catalog.parquet"
CATALOG_COLUMNS: tuple[str, ...] = ("item_id", "title", "genres", "raw_id")
_INTEGER = re.compile(r"^[+-]?\d+$")  # what `llmrec prepare` numbers numerically (llmrec.data.build.id_order)


def catalog_fingerprint(items: pd.DataFrame) -> str:
    """sha256 over the (item_id, title) pairs of an items table, in table order."""
    h = hashlib.sha256()
    for i, t in zip(items["item_id"].to_numpy(), items["title"].tolist()):
        h.update(f"{int(i)}\t{t}\n".encode())
    return h.hexdigest()


@dataclass
class Catalog:
    """Items (item_id 1..n, title, genres, raw_id) and the prompt domain (`movies`, `games`, `music`, `generic`)."""

    items: pd.DataFrame
    domain: str

    @classmethod
    def from_dataset(cls, data) -> Catalog:
        return cls(data.items.loc[:, [c for c in CATALOG_COLUMNS if c in data.items.columns]].reset_index(drop=True),
                   data.domain)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def fingerprint(self) -> str:
        return catalog_fingerprint(self.items)

    def titles(self) -> list[str]:
        """Titles indexed by item id; index 0 (padding) is the empty string."""
        out = [""] * (int(self.items["item_id"].max()) + 1 if len(self.items) else 1)
        for i, t in zip(self.items["item_id"].to_numpy(), self.items["title"].tolist()):
            out[int(i)] = t
        return out

    def raw_ids(self) -> list[str]:
        """The dataset's own ids (`raw_id`, as text) indexed by item id; index 0 (padding) and unused ids are the
        empty string. A catalog saved without the column (written before it was kept) has the item ids."""
        out = [""] * (int(self.items["item_id"].max()) + 1 if len(self.items) else 1)
        raw = self.items["raw_id"].tolist() if "raw_id" in self.items.columns else self.items["item_id"].tolist()
        for i, r in zip(self.items["item_id"].to_numpy(), raw):
            out[int(i)] = str(r)
        return out

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / CATALOG_FILE
        table = self.items.copy()
        table.attrs = {}
        atomic_write(path, lambda tmp: table.assign(domain=self.domain).to_parquet(tmp, index=False))
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Catalog:
        path = Path(folder) / CATALOG_FILE
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; the folder is incomplete (re-run the command that wrote it)")
        table = read_parquet(path, f"re-run the command that wrote {Path(folder)}", CheckpointError)
        missing = [c for c in ("item_id", "title", "domain") if c not in table.columns]
        if missing:
            raise CheckpointError(f"{path}: missing column(s) {', '.join(missing)}")
        domain = str(table["domain"].iloc[0]) if len(table) else "generic"
        return cls(table.drop(columns=["domain"]), domain)


class ItemIds:
    """The dataset's own item ids (`raw_id`) <-> the model's item ids (`item_id`, called the index here).

    - `public(index)`, the id an answer shows: an int when every raw id of the catalog is an integer written
      canonically (`50`, not `050` or `+50`: ML-100K, ML-1M, Last.fm, Steam), so that JSON answers keep numbers
      for numeric logs; else the raw text (`"B00001"`), which then round-trips unchanged.
    - `find(ref)`, the index of an id given as an int or as text, or None. Text matches a raw id exactly; an int
      (and, in a catalog of integer raw ids, text holding an integer) matches by value, so 7 finds `007`.

    Args:
        raw: raw ids indexed by item id, "" for the padding index 0 and unused ids (`Catalog.raw_ids`).
    """

    def __init__(self, raw: Sequence[str]):
        self.raw = [str(r) for r in raw]
        used = [(i, r) for i, r in enumerate(self.raw) if i > 0 and r]
        self._by_text = {r: i for i, r in used}
        if len(self._by_text) != len(used):
            twice = next(r for r in self._by_text if sum(x == r for _, x in used) > 1)
            raise CheckpointError(f"the catalog gives raw id {twice!r} to several items; raw ids must be unique")
        integer = bool(used) and all(_INTEGER.match(r) for _, r in used)
        self._by_value = {int(r): i for i, r in used} if integer else {}
        if integer and len(self._by_value) != len(used):  # `7` and `007` both: values are ambiguous, text is not
            self._by_value = {}
        self.integer = bool(self._by_value) and all(str(int(r)) == r for _, r in used)
        self.examples = [r for _, r in used[:2]]

    def public(self, index: int) -> int | str:
        r = self.raw[index]
        return int(r) if self.integer else r

    def find(self, ref: int | str) -> int | None:
        if isinstance(ref, str):
            if ref in self._by_text:
                return self._by_text[ref]
            text = ref.strip()
            return self._by_value.get(int(text)) if self._by_value and len(text) < 40 and _INTEGER.match(text) else None
        return self._by_value.get(int(ref)) if self._by_value else self._by_text.get(str(int(ref)))

    def numeric(self) -> bool:
        """Whether ids are matched by integer value (every raw id is an integer)."""
        return bool(self._by_value)

    def known(self) -> str:
        """Which ids exist, for an error message: `ids 1..24`, `ids between 1 and 3952` or `ids such as 'B00001'`."""
        if self._by_value:
            lo, hi = min(self._by_value), max(self._by_value)
            return f"ids {lo}..{hi}" if hi - lo + 1 == len(self._by_value) else f"ids between {lo} and {hi}"
        return "ids such as " + ", ".join(repr(r) for r in self.examples)
