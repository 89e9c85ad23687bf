"""The item catalog a model was trained on: ids, titles (and genres), carried inside every model folder.

A trained LLM recommender needs the titles its prompts were built from, and serving needs them without the
prepared dataset, so the catalog travels with the checkpoint (`catalog.parquet`). Its fingerprint (sha256 over
the (item_id, title) pairs) is what every stage compares to refuse a model trained on another catalog.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from llmrec.base.atomic import atomic_write
from llmrec.base.errors import CheckpointError
from llmrec.base.files import read_parquet

CATALOG_FILE = "catalog.parquet"
CATALOG_COLUMNS: tuple[str, ...] = ("item_id", "title", "genres", "raw_id")


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
