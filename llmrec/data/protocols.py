"""Evaluation protocols: which (history, target) samples each user contributes to which split (pure functions).

`llara` (LLaRA / S-DPO): users are split 8:1:1 at random (seeded) into train/valid/test users. A train user
contributes every position with at least `MIN_HISTORY_LLARA` = 3 earlier items; a valid/test user contributes
its final position only (`eval_positions="last"`, LLaRA's choice) or, like a train user, every position with
>= 3 earlier items (`"all"`: many more evaluation samples, tighter estimates). History = the last
`max_history` (default 10) items before the target.

`loo` (leave-one-out, for encoders' full ranking): every user's last item is its test sample, the
second-to-last its valid sample, and every earlier position with >= 1 earlier item a train sample.
History = the last `max_history` (default 200) items before the target.

Positions index the user's time-sorted sequence, so `sequence[:position]` is everything the user saw before.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

MIN_HISTORY_LLARA = 3
MIN_HISTORY_LOO = 1
DEFAULT_MAX_HISTORY = {"llara": 10, "loo": 200}
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
_SPLIT_STREAM = 1  # keeps the user-split stream apart from the candidate streams, which use (seed, user, pos)

Protocol = Literal["llara", "loo"]
EvalPositions = Literal["last", "all"]


def split_users(user_ids: np.ndarray, seed: int) -> np.ndarray:
    """'train'/'valid'/'test' per user (8:1:1, seeded permutation); train gets floor(0.8 n), valid floor(0.1 n).

    user_ids: (n,) contiguous user ids in a deterministic order; returns (n,) object array aligned with it.
    """
    n = len(user_ids)
    order = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _SPLIT_STREAM, n]))).permutation(n)
    n_train, n_valid = int(n * SPLIT_FRACTIONS[0]), int(n * SPLIT_FRACTIONS[1])
    split = np.empty(n, dtype=object)
    split[order[:n_train]] = "train"
    split[order[n_train:n_train + n_valid]] = "valid"
    split[order[n_train + n_valid:]] = "test"
    return split


def llara_positions(length: int, split: str, eval_positions: EvalPositions) -> np.ndarray:
    """Target positions a user with `length` interactions contributes under `llara`."""
    if length <= MIN_HISTORY_LLARA:
        return np.empty(0, dtype=np.int64)
    if split != "train" and eval_positions == "last":
        return np.array([length - 1], dtype=np.int64)
    return np.arange(MIN_HISTORY_LLARA, length, dtype=np.int64)


def loo_positions(length: int) -> dict[str, np.ndarray]:
    """Target positions per split under `loo`; needs length >= 3 (one train-free history item, valid, test)."""
    return {"train": np.arange(MIN_HISTORY_LOO, max(length - 2, MIN_HISTORY_LOO), dtype=np.int64),
            "valid": np.array([length - 2], dtype=np.int64) if length >= 2 + MIN_HISTORY_LOO else
            np.empty(0, dtype=np.int64),
            "test": np.array([length - 1], dtype=np.int64) if length >= 1 + MIN_HISTORY_LOO else
            np.empty(0, dtype=np.int64)}
