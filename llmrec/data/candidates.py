"""Candidate sets: the target plus uniformly drawn negatives the user has not seen (docs/design.md §3).

Each sample's random numbers are a function of (seed, user id, position) alone -- a counter-based hash
(splitmix64) of those three numbers and a draw counter, never a running generator -- so
- the same seed gives identical candidates, another seed different ones;
- a sample's candidates do not depend on which other samples exist: the `--eval-positions last` valid/test
  samples are exactly the final-position subset of the `all` samples, candidates included (later stages
  compute `hr@1_last` from an `all` folder), and nothing changes with the user split;
- all samples are drawn at once with array operations (about a second for ML-100K's 100k samples).
Negatives are drawn uniformly without replacement from the items that are neither among the user's earlier items
(the whole earlier sequence, not only the truncated history) nor the target: rejection sampling over
`DRAWS` hashed draws per sample, keeping the first distinct unseen ones. The rare sample that runs out, and every
sample of a user who has seen more than half the catalog by then (so the choice of path depends on the data
only), takes an exact draw instead: k ranks drawn without replacement by a Philox generator keyed by the sample's
hash, among the unseen items in id order. The target is then put at a uniformly random slot, which shuffles the
set (the negatives are already in random order).

The exact draw never builds the unseen set of a sample (that was quadratic: a user with 100,000 items spent
15 s there). A user's items in time order followed by the items they never saw, in id order, form a permutation
S of the catalog in which the items unseen at position p are exactly the suffix S[p+1:]; the r-th unseen item
in id order is the r-th smallest value of that suffix, answered for all of the user's exact samples at once by a
wavelet matrix over S (`suffix_kth`: O(n_items log n_items) once per user, O(log n_items) per rank). The draws
are the same as those of the explicit complement.
"""

from __future__ import annotations

import numpy as np

from llmrec.base.errors import DataError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
CHUNK = 16384  # samples per vectorised batch (bounds memory: CHUNK x DRAWS x a few int64 arrays)
FEW_EXACT = 8  # up to this many exact samples of one user are answered by sorting, more by `suffix_kth`


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
    Raises DataError when a user has seen so much of the catalog that too few items are left (a guard: the
    build step drops or reports such samples first, naming the user by raw id).
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
    if short.any():  # callers drop or report these first (`llmrec.data.build`); a guard, not the user's message
        i = int(np.flatnonzero(short)[0])
        raise DataError(f"user {int(users[i])} position {int(positions[i])}: only "
                        f"{n_items - int(positions[i]) - 1} items are not in the user's history, but "
                        f"{n_candidates} candidates need {k} negatives (the catalog has {n_items} items)")

    users64, pos64 = users.astype(np.int64), positions.astype(np.int64)
    keys = sample_keys(seed, users64, pos64)
    neg = np.empty((n, k), dtype=np.int64)
    # a user who has seen more than half the catalog always takes the exact path, so the choice of path depends
    # on the data only; those samples skip the hashed draws altogether
    exact = (pos64 + 1) * 2 > n_items
    hashed = np.flatnonzero(~exact)
    for lo in range(0, len(hashed), CHUNK):
        rows = hashed[lo:lo + CHUNK]
        u, p = users64[rows], pos64[rows]
        cand = 1 + (_uniform(keys[rows], draws) * n_items).astype(np.int64)  # (B, draws) in 1..n_items
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
        ok = csum[:, -1] >= k  # else: too few distinct unseen draws, the exact path
        take = valid & (csum <= k) & ok[:, None]
        neg[rows[ok]] = cand[take].reshape(-1, k)
        exact[rows[~ok]] = True
    rows = np.flatnonzero(exact)
    if len(rows):
        neg[rows] = _exact_negatives(iid, starts, users64[rows], pos64[rows], keys[rows], n_items, k)

    for lo in range(0, n, CHUNK):
        sl = slice(lo, min(lo + CHUNK, n))
        targets = iid[starts[users64[sl]] + pos64[sl]]
        slot = (_uniform(keys[sl], 1, offset=draws)[:, 0] * n_candidates).astype(np.int64)  # (B,) in 0..k
        col = np.arange(n_candidates)[None, :]
        gather = np.clip(col - (col > slot[:, None]), 0, k - 1)
        rows_b = np.take_along_axis(neg[sl], gather, axis=1)
        out[sl] = np.where(col == slot[:, None], targets[:, None], rows_b)
    return out


def _exact_negatives(iid: np.ndarray, starts: np.ndarray, users: np.ndarray, positions: np.ndarray,
                     keys: np.ndarray, n_items: int, k: int) -> np.ndarray:
    """(R, k) negatives of R samples, each drawn without replacement from its explicit complement.

    Sample r takes the items of ranks `Philox(keys[r]).choice(pool, k, replace=False)` among its `pool`
    unseen items in id order -- what `choice` on the sorted complement returns, without building it: one
    permutation S (the user's items in time order, then the never-seen items) per user, whose suffix
    S[p+1:] holds exactly the items unseen at position p (module docstring). A user with at most `FEW_EXACT`
    such samples has each suffix sorted instead (the same items, without building the matrix).
    """
    out = np.empty((len(users), k), dtype=np.int64)
    bits = np.random.Philox(key=0)
    rng = np.random.Generator(bits)
    order = np.argsort(users, kind="stable")
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    for group in np.split(order, bounds):
        u = int(users[group[0]])
        sequence = iid[starts[u]:starts[u + 1]]
        never_seen = np.ones(n_items + 1, dtype=bool)
        never_seen[0] = False
        never_seen[sequence] = False
        perm = np.concatenate([sequence, np.flatnonzero(never_seen)])  # (n_items,) a permutation of 1..n_items
        ranks = np.empty((len(group), k), dtype=np.int64)
        for j, r in enumerate(group.tolist()):
            _philox_key(bits, int(keys[r]))
            ranks[j] = rng.choice(n_items - int(positions[r]) - 1, size=k, replace=False)
        if len(group) <= FEW_EXACT:  # a few samples: sorting each one's complement is cheaper than the matrix
            for j, r in enumerate(group.tolist()):
                out[r] = np.sort(perm[int(positions[r]) + 1:])[ranks[j]]
            continue
        lo = np.repeat(positions[group] + 1, k)
        out[group] = suffix_kth(perm, lo, ranks.ravel()).reshape(len(group), k)
    return out


def _philox_key(bits: np.random.Philox, key: int) -> None:
    """Put `bits` in the state of a fresh `Philox(key=key)` (constructing one per sample costs 3x more)."""
    bits.state = {"bit_generator": "Philox",
                  "state": {"counter": np.zeros(4, dtype=np.uint64),
                            "key": np.array([key & 0xFFFFFFFFFFFFFFFF, key >> 64], dtype=np.uint64)},
                  "buffer": np.zeros(4, dtype=np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}


def suffix_kth(values: np.ndarray, lo: np.ndarray, kth: np.ndarray) -> np.ndarray:
    """For each query q, the kth[q]-th smallest (0-based) of values[lo[q]:], for many queries at once.

    values: (N,) non-negative integers; lo, kth: (Q,) with 0 <= kth[q] < N - lo[q]. A wavelet matrix, built
    and queried level by level (one bit of the values per level, most significant first): at each level the
    sequence is stably partitioned into the values whose bit is 0, then those whose bit is 1, and a query's
    range [l, r) follows its answer's side. O((N + Q) * bits) time, O(N + Q) memory.
    """
    cur = values.astype(np.int64)
    n = len(cur)
    left = lo.astype(np.int64)
    right = np.full(len(left), n, dtype=np.int64)
    k = kth.astype(np.int64)
    out = np.zeros(len(left), dtype=np.int64)
    for b in range(max(int(cur.max()).bit_length(), 1) - 1, -1, -1):
        one = ((cur >> b) & 1).astype(bool)
        zeros = np.concatenate([[0], np.cumsum(~one)])  # (N+1,) zeros before each index
        n_zeros = int(zeros[-1])
        zl, zr = zeros[left], zeros[right]
        go_one = k >= zr - zl  # fewer than k+1 values of this range have a 0 here: the answer has a 1
        k = np.where(go_one, k - (zr - zl), k)
        left, right = np.where(go_one, n_zeros + left - zl, zl), np.where(go_one, n_zeros + right - zr, zr)
        out |= go_one.astype(np.int64) << b
        cur = np.concatenate([cur[~one], cur[one]])
    return out
