"""Item groups for item-side fairness (IFairLRS, docs/design.md §7): popularity groups or genres.

A grouping is a dense membership matrix M [n_items + 1, G]: M[i, g] is item i's share in group g. Row 0
(padding) is all zeros, so padding ids in histories or rankings count for nothing. Every fairness formula in
this package works on group *masses* (sums of membership rows), so one code path serves single-group
(popularity) and multi-group (genre) items alike.

- Popularity (the default, as in IFairLRS): items sorted by their number of TRAINING interactions
  (`ProcessedDataset.train_sequences()`, so no valid/test target leaks into the grouping) and cut into
  `n_groups` equal-size groups. Group 0 (`pop0`) is the LEAST popular, group G-1 the most popular. Items with
  the same count are ordered by item id (lower id first), so a count can straddle a boundary but the
  grouping is deterministic; items never seen in training have count 0.
- Genre: one group per genre name in `items.parquet` (sorted by name). An item counts once in each of its
  genres (multi-hot, as in the authors' code) or 1/|genres| in each (`split_multi=True`, so every item has
  total mass 1). Items without genres belong to no group and are left out of every share.

Differs from the authors' code: they read groups from a precomputed CSV (`movie_pop_count_5.csv`); here
the groups are computed from the processed training data of whichever dataset is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from llmrec.base.errors import ConfigError, DataError

if TYPE_CHECKING:
    from llmrec.data.dataset import ProcessedDataset

GroupKind = Literal["popularity", "genre"]
GROUP_KINDS: tuple[str, ...] = ("popularity", "genre")


@dataclass
class ItemGroups:
    """A grouping of the catalog.

    Attributes:
        names: the G group names (`pop0` .. `pop{G-1}`, least popular first; or genre names).
        membership: [n_items + 1, G] float64; row i = item i's share in each group (row 0 = padding = zeros).
        kind: `popularity` or `genre`.
        edges: popularity only: per group, the (lowest, highest) training interaction count of its items.
        split_multi: genre only: a multi-genre item counts 1/|genres| (True) or 1 (False) in each genre.
    """

    names: list[str]
    membership: np.ndarray
    kind: str
    edges: list[tuple[int, int]] | None = None
    split_multi: bool = False

    def __post_init__(self) -> None:
        m = np.asarray(self.membership, dtype=np.float64)
        if m.ndim != 2 or m.shape[1] != len(self.names) or m.shape[0] < 1:
            raise ValueError(f"membership must be [n_items + 1, {len(self.names)}], got {list(m.shape)}")
        if np.any(m[0] != 0):
            raise ValueError("membership row 0 is padding and must be all zeros")
        self.membership = m

    @property
    def n_items(self) -> int:
        return self.membership.shape[0] - 1

    @property
    def n_groups(self) -> int:
        return len(self.names)

    def mass(self, item_ids: np.ndarray | Sequence[int], what: str = "item") -> np.ndarray:
        """[G] summed membership of `item_ids` (any shape; id 0 = padding counts for nothing)."""
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() > self.n_items):
            bad = int(ids[(ids < 0) | (ids > self.n_items)][0])
            raise DataError(f"{what} id {bad} is outside the grouped catalog 1..{self.n_items} "
                            f"(0 = padding); were the groups built on another dataset?")
        return self.membership[ids].sum(axis=0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary for results files (the full matrix is rebuilt from the data)."""
        return {
            "kind": self.kind,
            "names": list(self.names),
            "n_items": self.n_items,
            "sizes": [int(x) for x in (self.membership[1:] > 0).sum(axis=0)],
            "edges": [[int(lo), int(hi)] for lo, hi in self.edges] if self.edges is not None else None,
            "split_multi": bool(self.split_multi),
        }


def training_counts(train_sequences: Sequence[np.ndarray | Sequence[int]], n_items: int) -> np.ndarray:
    """[n_items + 1] number of training interactions per item (index 0 unused, always 0)."""
    seqs = [np.asarray(s, dtype=np.int64).reshape(-1) for s in train_sequences]
    ids = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
    if ids.size and (ids.min() < 1 or ids.max() > n_items):
        bad = int(ids[(ids < 1) | (ids > n_items)][0])
        raise DataError(f"training sequence holds item id {bad}; expected ids in 1..{n_items}")
    return np.bincount(ids, minlength=n_items + 1).astype(np.int64)


def popularity_groups(train_sequences: Sequence[np.ndarray | Sequence[int]], n_items: int,
                      n_groups: int = 5) -> ItemGroups:
    """`n_groups` equal-size popularity groups (sizes differ by at most one; the less popular groups get the
    extra items) from TRAINING sequences only.

    Args:
        train_sequences: the training users' item sequences (`ProcessedDataset.train_sequences()`).
        n_items: catalog size; every item 1..n_items is placed, unseen ones with count 0.
        n_groups: G.
    """
    if n_groups < 1 or n_groups > n_items:
        raise ConfigError(f"popularity groups: n_groups={n_groups} must be between 1 and the {n_items} items")
    counts = training_counts(train_sequences, n_items)
    ids = np.arange(1, n_items + 1, dtype=np.int64)
    order = ids[np.lexsort((ids, counts[ids]))]  # ascending count, then ascending id: deterministic ties
    membership = np.zeros((n_items + 1, n_groups), dtype=np.float64)
    edges: list[tuple[int, int]] = []
    for g, chunk in enumerate(np.array_split(order, n_groups)):
        membership[chunk, g] = 1.0
        edges.append((int(counts[chunk].min()), int(counts[chunk].max())))
    return ItemGroups(names=[f"pop{g}" for g in range(n_groups)], membership=membership, kind="popularity",
                      edges=edges)


def _genre_list(value: object) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        return [str(g) for g in value if str(g)]
    raise DataError(f"items.parquet: genres must be a list of strings, got {type(value).__name__}")


def genre_groups(items_df: pd.DataFrame, n_items: int, split_multi: bool = False,
                 dataset: str = "the dataset") -> ItemGroups:
    """One group per genre of `items_df` (columns `item_id`, `genres`), names sorted alphabetically.

    Raises ConfigError when no item has a genre (e.g. LastFM, whose raw files carry no genres).
    """
    if "genres" not in items_df.columns or "item_id" not in items_df.columns:
        raise DataError("items.parquet: genre grouping needs the columns item_id and genres")
    per_item: dict[int, list[str]] = {}
    for item_id, value in zip(items_df["item_id"].to_numpy(), items_df["genres"].tolist()):
        item_id = int(item_id)
        if not 1 <= item_id <= n_items:
            raise DataError(f"items.parquet: item_id {item_id} is outside 1..{n_items}")
        genres = list(dict.fromkeys(_genre_list(value)))  # drop repeats, keep order
        if genres:
            per_item[item_id] = genres
    names = sorted({g for gs in per_item.values() for g in gs})
    if not names:
        raise ConfigError(f"genre grouping needs genres in items.parquet; {dataset} has none "
                          f"(use popularity grouping)")
    column = {name: j for j, name in enumerate(names)}
    membership = np.zeros((n_items + 1, len(names)), dtype=np.float64)
    for item_id, genres in per_item.items():
        share = 1.0 / len(genres) if split_multi else 1.0
        membership[item_id, [column[g] for g in genres]] = share
    return ItemGroups(names=names, membership=membership, kind="genre", split_multi=split_multi)


def item_groups(data: ProcessedDataset, kind: str = "popularity", n_groups: int = 5,
                split_multi: bool = False) -> ItemGroups:
    """The grouping `kind` of a processed dataset; popularity counts only its training interactions.

    Args:
        data: the processed dataset.
        kind: `popularity` (`n_groups` equal-size groups) or `genre` (`split_multi` as in `genre_groups`).
    """
    if kind == "popularity":
        return popularity_groups(data.train_sequences(), data.n_items, n_groups)
    if kind == "genre":
        name = str(data.meta.get("dataset") or data.root or "this dataset")
        return genre_groups(data.items, data.n_items, split_multi=split_multi, dataset=name)
    raise ConfigError(f"unknown item grouping {kind!r}; expected one of {', '.join(GROUP_KINDS)}")
