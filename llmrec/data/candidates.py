"""Candidate sets: the target plus uniformly drawn negatives the user has not seen (DESIGN.md §3).

Each sample's random numbers are a function of (seed, user id, position) alone -- a counter-based hash
(splitmix64) of those three numbers and a draw counter, never a running generator -- so
- the same seed gives identical candidates, another seed different ones;
- a sample's candidates do not depend on which other samples exist: the `--eval-positions last` valid/test
  samples are exactly the final-position subset of the `all` samples, candidates included (later stages
  compute `hr@1_last` from an `all` folder), and nothing changes with the user split;
- all samples are drawn at once with array operations (about a second for ML-100K's 100k samples).
Negatives are drawn uniformly without replacement from the items that are neither among the user's earlier items
(the whole earlier sequence, not only the truncated history) nor the target: rejection sampling over
`DRAWS` hashed draws per sample, keeping the first distinct unseen ones; the rare sample that runs out (a user
who has seen most of the catalog) falls back to an exact draw from the explicit complement, seeded from the same
triple. The target is then put at a uniformly random slot, which shuffles the set (the negatives are already in
random order).
"""

from __future__ import annotations

import numpy as np

from llmrec.errors import DataError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
CHUNK = 16384  # samples per vectorised batch (bounds memory: CHUNK x DRAWS x a few int64 arrays)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic is intended)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def sample_keys(seed: int, users: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(N,) uint64 key of each sample: a hash of (seed, user, position) only."""
    with np.errstate(over="ignore"):
        k = _mix(np.full(len(users), seed, dtype=np.uint64) + _GOLDEN)
        k = _mix(k ^ users.astype(np.uint64))
        return _mix(k ^ (positions.astype(np.uint64) * _GOLDEN))


def _uniform(keys: np.ndarray, n_draws: int, offset: int = 0) -> np.ndarray:
    """(N, n_draws) floats in [0, 1): draw j of sample i is a hash of (key_i, offset + j)."""
    with np.errstate(over="ignore"):
        counters = (np.arange(offset + 1, offset + n_draws + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        h = _mix(keys[:, None] + counters)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def sample_candidates(uid: np.ndarray, iid: np.ndarray, users: np.ndarray, positions: np.ndarray, n_items: int,
                      n_candidates: int, seed: int, draws: int | None = None) -> np.ndarray:
    """Candidate sets of many samples.

    uid, iid: (T,) all interactions, sorted by user, time-ordered within a user, each (user, item) at most once.
    users, positions: (N,) the samples: the target is the user's item at `position` (0-based, time order), the
        items at earlier positions are the ones the user has seen.
    Returns (N, n_candidates) int64 rows holding the target and n_candidates - 1 unseen items, shuffled.
    Raises DataError when a user has seen so much of the catalog that too few items are left.
    """
    k = n_candidates - 1
    n = len(users)
    out = np.empty((n, n_candidates), dtype=np.int64)
    if n == 0:
        return out
    draws = draws or 2 * k + 16
    # Where each user's sequence starts, and every (user, item) pair's position, as a sorted lookup table:
    # an item is "seen" by sample (u, p) iff u has it at some position <= p (the target itself is at p).
    starts = np.zeros(int(uid.max()) + 2, dtype=np.int64)
    np.add.at(starts, uid + 1, 1)
    starts = np.cumsum(starts)
    item_pos = np.arange(len(uid), dtype=np.int64) - starts[uid]
    pair = uid.astype(np.int64) * (n_items + 1) + iid
    order = np.argsort(pair, kind="stable")
    pair_sorted, pos_sorted = pair[order], item_pos[order]

    short = n_items - (positions + 1) < k
    if short.any():
        i = int(np.flatnonzero(short)[0])
        raise DataError(f"user {int(users[i])} position {int(positions[i])}: only "
                        f"{n_items - int(positions[i]) - 1} items are not in the user's history, but "
                        f"{n_candidates} candidates need {k} negatives; lower --candidates (the catalog has "
                        f"{n_items} items)")

    for lo in range(0, n, CHUNK):
        sl = slice(lo, min(lo + CHUNK, n))
        u, p = users[sl].astype(np.int64), positions[sl].astype(np.int64)
        keys = sample_keys(seed, u, p)
        targets = iid[starts[u] + p]
        cand = 1 + (_uniform(keys, draws) * n_items).astype(np.int64)  # (B, draws) in 1..n_items
        q = u[:, None] * (n_items + 1) + cand
        idx = np.minimum(np.searchsorted(pair_sorted, q), len(pair_sorted) - 1)
        seen = (pair_sorted[idx] == q) & (pos_sorted[idx] <= p[:, None])
        # a repeated draw within a row: keep its first occurrence (stable sort puts it first)
        srt = np.argsort(cand, axis=1, kind="stable")
        vals = np.take_along_axis(cand, srt, axis=1)
        dup_sorted = np.zeros_like(seen)
        dup_sorted[:, 1:] = vals[:, 1:] == vals[:, :-1]
        dup = np.zeros_like(seen)
        np.put_along_axis(dup, srt, dup_sorted, axis=1)
        valid = ~seen & ~dup
        csum = np.cumsum(valid, axis=1)
        ok = csum[:, -1] >= k
        # a user who has seen more than half the catalog always takes the exact path, so the choice of path
        # depends on the data only
        ok &= (p + 1) * 2 <= n_items
        neg = np.empty((len(u), k), dtype=np.int64)
        take = valid & (csum <= k) & ok[:, None]
        neg[ok] = cand[take].reshape(-1, k)
        for r in np.flatnonzero(~ok):
            neg[r] = _exact_negatives(iid[starts[u[r]]:starts[u[r]] + p[r] + 1], n_items, k, int(keys[r]))
        slot = (_uniform(keys, 1, offset=draws)[:, 0] * n_candidates).astype(np.int64)  # (B,) in 0..k
        col = np.arange(n_candidates)[None, :]
        gather = np.clip(col - (col > slot[:, None]), 0, k - 1)
        rows = np.take_along_axis(neg, gather, axis=1)
        out[sl] = np.where(col == slot[:, None], targets[:, None], rows)
    return out


def _exact_negatives(seen_items: np.ndarray, n_items: int, k: int, key: int) -> np.ndarray:
    """k items drawn without replacement from the explicit complement of `seen_items` (deterministic in key)."""
    mask = np.ones(n_items + 1, dtype=bool)
    mask[0] = False
    mask[seen_items] = False
    pool = np.flatnonzero(mask)
    rng = np.random.Generator(np.random.Philox(key=key))
    return rng.choice(pool, size=k, replace=False)
