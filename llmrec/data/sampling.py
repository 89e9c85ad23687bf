"""Seeded sample subsets and the per-user final position of a split: shared by every stage that ranks samples.

`last` is always decided on the FULL split before any subset is drawn: a user's final sample is the one at the
user's largest `position` in the split (the sample the `--eval-positions last` protocol keeps), whether or not a
seeded subset of the split is ranked afterwards. Deciding it inside a subset would call a user's latest *sampled*
row "last" although later rows of that user exist in the split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LAST_COLUMN = "is_last"


def final_position_mask(samples: pd.DataFrame) -> np.ndarray:
    """[N] bool: True where the row is its user's final (largest-position) sample in `samples`."""
    if len(samples) == 0:
        return np.zeros(0, dtype=bool)
    latest = samples.groupby("user_id")["position"].transform("max").to_numpy()
    return samples["position"].to_numpy() == latest


def subset(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded random subset of `n` rows in their original order (all rows when n is None or >= len)."""
    if n is None or n >= len(df):
        return df
    idx = np.sort(np.random.default_rng(seed).choice(len(df), size=n, replace=False))
    return df.iloc[idx].reset_index(drop=True)


def ranked_subset(split: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """`subset` of a split to rank, with an `is_last` column decided on the whole split first."""
    marked = split.assign(**{LAST_COLUMN: final_position_mask(split)})
    return subset(marked, n, seed)
