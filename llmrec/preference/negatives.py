"""Negatives of the preference stage: per training sample, N items drawn from the sample's OTHER stored candidates.

S-DPO (Chen et al., NeurIPS 2024) contrasts the user's next item with N negatives. Here they come from the
sample's stored candidate set (the same 20 candidates the ranking protocol scores), never the target, and are
drawn ONCE per (seed, user, position): the same sample gets the same negatives in every epoch, in every run with
that seed, and whatever the batch it lands in or the subset it belongs to. `all` takes every other candidate.
A draw keeps the candidates' stored order, so `--negatives 19` and `all` on 20 candidates give the same items.

What differs from the authors' code: they sample negatives from the candidate list of each prompt at
data-loading time (so a sample sees other negatives in each epoch); here they are fixed per sample and seed,
which makes the reference log-probs computable once before training (docs/design.md §6).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from llmrec.base.errors import ConfigError, DataError

ALL = "all"
NEGATIVES_STREAM = 1
"""Last entry of the seed sequence: keeps this draw's random stream apart from the template choice
(`llmrec.llm.prompts.choose_template` seeds with the same (seed, user, position))."""

NegativeSetting = int | Literal["all"]


def other_candidates(candidates: Sequence[int], target: int) -> np.ndarray:
    """[C - 1] the stored candidates except the target, in stored order."""
    cands = np.asarray(candidates, dtype=np.int64)
    return cands[cands != int(target)]


def draw_negatives(candidates: Sequence[int], target: int, n: NegativeSetting, seed: int, user_id: int,
                   position: int) -> np.ndarray:
    """[N] negatives of one sample: `n` of its other candidates (all of them for `all`), in stored order.

    The draw is seeded by (seed, user_id, position) alone, so it does not depend on which other samples exist.
    Raises ValueError when the sample has fewer than `n` other candidates (`check_negatives` says it earlier).
    """
    others = other_candidates(candidates, target)
    if n == ALL:
        return others
    if not 1 <= n <= len(others):
        raise ValueError(f"cannot draw {n} negatives from {len(others)} other candidates")
    rng = np.random.default_rng([int(seed), int(user_id), int(position), NEGATIVES_STREAM])
    chosen = np.sort(rng.choice(len(others), size=n, replace=False))
    return others[chosen]


def available_negatives(samples: pd.DataFrame) -> tuple[int, int]:
    """(fewest, most) other candidates per sample over `samples` (0, 0 for no sample)."""
    if len(samples) == 0:
        return 0, 0
    counts = [len(other_candidates(c, t)) for c, t in zip(samples["candidates"], samples["target"])]
    return min(counts), max(counts)


def check_negatives(n: NegativeSetting, samples: pd.DataFrame, where: str) -> int:
    """The number of negatives per sample that `--negatives n` means for `samples`; one-line error if impossible.

    `where` names the data (e.g. the dataset folder) in the message.
    """
    fewest, most = available_negatives(samples)
    if fewest == 0:
        raise DataError(f"{where}: a training sample has no candidate besides its target; the preference stage "
                        f"needs stored candidates (prepare the data with `--protocol llara`)")
    if n == ALL:
        if fewest != most:
            raise ConfigError(f"option --negatives all: the training samples of {where} store between {fewest + 1} "
                              f"and {most + 1} candidates, so `all` is not one number; give --negatives N with "
                              f"N <= {fewest}")
        return fewest
    if n > fewest:
        raise ConfigError(f"option --negatives {n}: the training samples of {where} store "
                          f"{fewest + 1} candidates ({fewest} besides the target); use --negatives <= {fewest} or all")
    return int(n)


def sample_negatives(samples: pd.DataFrame, n: NegativeSetting, seed: int) -> np.ndarray:
    """[M, N] negatives of every sample (rows in the order of `samples`); `check_negatives` first."""
    rows = [draw_negatives(c, t, n, seed, u, p) for c, t, u, p in
            zip(samples["candidates"], samples["target"], samples["user_id"], samples["position"])]
    if not rows:
        return np.zeros((0, 0 if n == ALL else int(n)), dtype=np.int64)
    return np.stack(rows).astype(np.int64)


def preference_items(samples: pd.DataFrame, n: NegativeSetting, seed: int) -> np.ndarray:
    """[M, 1 + N] the items whose answers are scored per sample: the target (chosen) first, then its negatives."""
    negatives = sample_negatives(samples, n, seed)
    targets = samples["target"].to_numpy(dtype=np.int64)[:, None]
    return np.concatenate([targets, negatives], axis=1)
