"""From a loader's `RawData` to a `ProcessedDataset`: clean, index, split, sample candidates.

Every row that does not make it into the processed tables is counted in `dropped` (logged and written to
`meta.json`); nothing is lost silently:
- `duplicate_items`: identical repeated rows of an items file (conflicting ones are an error);
- `unknown_item_interactions`: interactions whose item is not in the items file (or an error with
  `unknown_items="error"`);
- `repeated_interactions`: a user's later interactions with an item already seen (only the first, in time,
  is kept: candidates must exclude everything the user has seen, and a target the user already had would be
  trivially predictable);
- `users_below_min_interactions` / `interactions_of_dropped_users`: users with fewer than
  `min_interactions` distinct items (counted after the two steps above);
- `items_without_interactions`: catalog items no kept user interacted with (they would get no training
  signal and only enlarge the candidate pool);
- `samples_too_few_unseen_items`: samples whose user had seen so much of the catalog by then that fewer unseen
  items are left than the candidate set's negatives need (the warning names the users by raw id and the
  `--candidates` value that keeps every sample; if dropping would empty a split, it is an error instead).
Ordering: interactions are sorted by time per user with a *stable* sort, so ties keep the file order.
Ids: users and items are numbered 1..n in the order of their raw ids (numerically when all raw ids are
integers, else as strings), so ML-100K keeps its own ids; 0 is padding.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from llmrec.data.candidates import sample_candidates
from llmrec.data.dataset import SPLITS, ProcessedDataset
from llmrec.data.protocols import (
    DEFAULT_MAX_HISTORY,
    llara_positions,
    loo_positions,
    split_users,
)
from llmrec.data.raw import RawData, no_data_rows
from llmrec.data.titles import fallback_title, normalize_title, unique_titles
from llmrec.base.errors import DataError

log = logging.getLogger(__name__)
_INT = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class BuildOptions:
    protocol: str = "llara"
    eval_positions: str = "last"
    seed: int = 42
    min_interactions: int = 5
    max_history: int | None = None
    candidates: int = 20
    unknown_items: str = "drop"

    @property
    def history_length(self) -> int:
        return self.max_history if self.max_history is not None else DEFAULT_MAX_HISTORY[self.protocol]


def id_order(raw_ids: pd.Series) -> list[str]:
    """Distinct raw ids in numbering order: numeric when all are integers, else lexicographic."""
    ids = list(dict.fromkeys(raw_ids.astype(str).tolist()))  # a list: iterating an Arrow array is slow
    if all(_INT.match(x) for x in ids):
        return sorted(ids, key=lambda x: (int(x), x))
    return sorted(ids)


def _isin(values: pd.Series, allowed: pd.Series) -> np.ndarray:
    """(len(values),) bool: which values are in `allowed`. Not `Series.isin`: on pandas' Arrow-backed string
    columns it builds one pyarrow scalar per allowed value (seconds for a 100k-item catalog)."""
    allowed_set = set(allowed.tolist())
    return np.fromiter((v in allowed_set for v in values.tolist()), dtype=bool, count=len(values))


def _check_items(items: pd.DataFrame, dropped: dict[str, int]) -> pd.DataFrame:
    """One row per raw item id; identical repeats collapse (counted), conflicting ones are an error."""
    dup = items["item"].duplicated(keep=False)
    if not dup.any():
        return items
    key = items["title"].astype(str) + "\x00" + items["genres"].map(lambda g: "|".join(map(str, g)))
    for item_id, group in items[dup].groupby("item", sort=False):
        if key[group.index].nunique() > 1:
            first, second = group["where"].iloc[0], group["where"].iloc[1]
            raise DataError(f"duplicate item id {item_id!r} with different data: {first} and {second}; "
                            f"expected each item id once in the items file")
    n = int(items["item"].duplicated().sum())
    dropped["duplicate_items"] = n
    log.warning("items file lists %d item id(s) more than once with identical data; kept one of each", n)
    return items.drop_duplicates("item", keep="first")


def clean(raw: RawData, opts: BuildOptions) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Validate, drop (counted) and sort. Returns interactions (user, item, timestamp, sorted by user then
    time, stable) and items (item, title, genres) restricted to items with interactions, plus the counts."""
    dropped: dict[str, int] = dict(raw.dropped)
    inter = raw.interactions.loc[:, ["user", "item", "timestamp"]].copy()
    inter["user"] = inter["user"].astype(str)
    inter["item"] = inter["item"].astype(str)
    items = raw.items.copy()
    items["item"] = items["item"].astype(str)
    # the loaders report empty files themselves; this guards loaders added later
    names = [f.name for f in raw.files] + ["the interactions file", "the items file"][len(raw.files):]
    if len(inter) == 0:
        raise no_data_rows(names[0], "one row per interaction")
    if len(items) == 0:
        raise no_data_rows(names[1], "one row per item")
    items = _check_items(items, dropped)

    known = _isin(inter["item"], items["item"])
    n_unknown = int((~known).sum())
    if n_unknown:
        example = inter.loc[~known, "item"].iloc[0]
        msg = (f"{n_unknown} interaction(s) refer to {inter.loc[~known, 'item'].nunique()} item id(s) missing "
               f"from the items file (e.g. {example!r})")
        if opts.unknown_items == "error":
            raise DataError(msg + "; add them to the items file, or pass --unknown-items drop")
        log.warning("%s; dropped them (--unknown-items drop)", msg)
        dropped["unknown_item_interactions"] = n_unknown
        inter = inter[known]

    # Stable sort by (user, time): np.lexsort is stable, so ties keep file order.
    order = np.lexsort((inter["timestamp"].to_numpy(), inter["user"].to_numpy()))
    inter = inter.iloc[order]
    repeated = inter.duplicated(["user", "item"], keep="first")
    if repeated.any():
        dropped["repeated_interactions"] = int(repeated.sum())
        log.info("kept the first of each repeated (user, item) pair: dropped %d later repeat(s)",
                 int(repeated.sum()))
        inter = inter[~repeated]

    counts = inter.groupby("user", sort=False)["item"].transform("size")
    small = counts < opts.min_interactions
    if small.any():
        dropped["users_below_min_interactions"] = int(inter.loc[small, "user"].nunique())
        dropped["interactions_of_dropped_users"] = int(small.sum())
        log.info("dropped %d user(s) with fewer than %d interactions (%d interactions)",
                 dropped["users_below_min_interactions"], opts.min_interactions, int(small.sum()))
        inter = inter[~small]
    if len(inter) == 0:
        raise DataError(f"no interactions left after filtering (min_interactions={opts.min_interactions}; "
                        f"dropped: {dropped or 'nothing'}); lower --min-interactions or check the raw files")

    used = _isin(items["item"], inter["item"])
    if not used.all():
        dropped["items_without_interactions"] = int((~used).sum())
        log.info("dropped %d catalog item(s) without interactions", int((~used).sum()))
        items = items[used]
    return inter.reset_index(drop=True), items.reset_index(drop=True), dropped


def _titles(items: pd.DataFrame) -> tuple[list[str], dict[str, int]]:
    titles = [normalize_title(t) if isinstance(t, str) else "" for t in items["title"].tolist()]
    empty = [i for i, t in enumerate(titles) if not t]
    for i in empty:
        titles[i] = fallback_title(items["raw_id"].iloc[i])
    if empty:
        log.warning("%d item(s) have no title; named them 'item <raw id>' (e.g. %r)", len(empty), titles[empty[0]])
    unique = unique_titles(titles)
    renamed = sum(a != b for a, b in zip(titles, unique))
    if renamed:
        log.info("%d duplicate title(s) made unique with a ' [k]' suffix", renamed)
    return unique, {"fallback_titles": len(empty), "deduplicated_titles": renamed}


def build(raw: RawData, opts: BuildOptions) -> tuple[ProcessedDataset, dict[str, Any]]:
    """Processed tables for `raw` under `opts`; returns the dataset (meta holds counts only) and the drop and
    title statistics for meta.json."""
    if opts.candidates < 2:
        raise DataError(f"--candidates must be at least 2 (the target and one negative), got {opts.candidates}")
    inter, items, dropped = clean(raw, opts)

    user_raw = id_order(inter["user"])
    item_raw = id_order(items["item"])
    user_index = {r: i for i, r in enumerate(user_raw, 1)}
    item_index = {r: i for i, r in enumerate(item_raw, 1)}
    n_users, n_items = len(user_raw), len(item_raw)

    uid = inter["user"].map(user_index).to_numpy(np.int64)
    iid = inter["item"].map(item_index).to_numpy(np.int64)
    ts = inter["timestamp"].to_numpy()
    # Re-sort by contiguous user id (the time order within a user is kept: stable sort on the user only).
    order = np.argsort(uid, kind="stable")
    uid, iid, ts = uid[order], iid[order], ts[order]
    ts = np.floor(ts.astype(np.float64)).astype(np.int64) if ts.dtype.kind == "f" else ts.astype(np.int64)
    interactions = pd.DataFrame({"user_id": uid, "item_id": iid, "timestamp": ts})

    items = items.assign(item_id=items["item"].map(item_index)).sort_values("item_id", kind="stable")
    items = items.assign(raw_id=items["item"].astype(str))
    titles, title_stats = _titles(items)
    items_df = pd.DataFrame({"item_id": items["item_id"].to_numpy(np.int64), "title": titles,
                             "genres": [list(map(str, g)) if isinstance(g, (list, tuple, np.ndarray)) else []
                                        for g in items["genres"]],
                             "raw_id": items["raw_id"].tolist()})

    user_ids = np.arange(1, n_users + 1, dtype=np.int64)
    if opts.protocol == "llara":
        user_split = split_users(user_ids, opts.seed)
    else:
        user_split = np.full(n_users, "all", dtype=object)
    users_df = pd.DataFrame({"user_id": user_ids, "raw_id": user_raw, "split": user_split.tolist()})

    samples = _samples(uid, iid, n_items, user_split, user_raw, opts, dropped)
    ds = ProcessedDataset(meta={"n_users": n_users, "n_items": n_items, "n_interactions": len(interactions),
                                "n_samples": {s: len(samples[s]) for s in SPLITS}, "protocol": opts.protocol},
                          items=items_df, interactions=interactions, users=users_df, samples=samples)
    return ds, {"dropped": dropped, "titles": title_stats}


def _samples(uid: np.ndarray, iid: np.ndarray, n_items: int, user_split: np.ndarray, user_raw: list[str],
             opts: BuildOptions, dropped: dict[str, int]) -> dict[str, pd.DataFrame]:
    """All samples of all users; `uid` sorted, `iid` in time order within each user."""
    h = opts.history_length
    picked: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {s: ([], []) for s in SPLITS}
    bounds = np.flatnonzero(np.diff(uid)) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64)
    ends = np.concatenate([bounds, [len(uid)]]).astype(np.int64)
    for s, e in zip(starts.tolist(), ends.tolist()):
        user, n = int(uid[s]), e - s
        if opts.protocol == "llara":
            split = str(user_split[user - 1])
            per_split = {split: llara_positions(n, split, opts.eval_positions)}
        else:
            per_split = loo_positions(n)
        for split, positions in per_split.items():
            if len(positions):
                picked[split][0].append(np.full(len(positions), user, dtype=np.int64))
                picked[split][1].append(positions + s)  # index into uid/iid
    in_user = _positions_in_user(uid)
    chosen = {}
    for split, (us, idx) in picked.items():
        users = np.concatenate(us) if us else np.empty(0, dtype=np.int64)
        index = np.concatenate(idx) if idx else np.empty(0, dtype=np.int64)
        chosen[split] = (users, index, in_user[index])
    keep = _enough_unseen({s: (u, p) for s, (u, _, p) in chosen.items()}, n_items, user_raw, opts, dropped)
    out = {}
    for split, (users, index, positions) in chosen.items():
        users, index, positions = users[keep[split]], index[keep[split]], positions[keep[split]]
        start = index - positions
        cands = sample_candidates(uid, iid, users, positions, n_items, opts.candidates, opts.seed)
        out[split] = pd.DataFrame({
            "user_id": users,
            "position": positions,
            "history": pd.Series([iid[max(b, i - h):i] for b, i in zip(start.tolist(), index.tolist())],
                                 dtype=object),
            "target": iid[index] if len(index) else np.empty(0, dtype=np.int64),
            "candidates": pd.Series(list(cands), dtype=object),
        })
    return out


def _enough_unseen(samples: dict[str, tuple[np.ndarray, np.ndarray]], n_items: int, user_raw: list[str],
                   opts: BuildOptions, dropped: dict[str, int]) -> dict[str, np.ndarray]:
    """Per split, (N,) bool: which samples leave the candidates - 1 unseen items their negatives need.

    A sample whose user had seen almost the whole catalog by its position cannot get a full candidate set
    (every model is scored on sets of one size). Such samples are dropped, counted in `dropped` and named by
    the user's raw id in a warning, with the `--candidates` value that would keep them all (if one does). When
    that would leave a split with no sample at all, it is an error instead, naming the `--candidates` value that
    keeps every sample, else one that keeps some samples of every split, else saying that none can.
    samples: split -> (users, positions), contiguous user ids and 0-based target positions.
    """
    k, c = opts.candidates - 1, opts.candidates
    unseen = {s: n_items - p - 1 for s, (_, p) in samples.items()}  # items distinct per user: p + 1 seen
    keep = {s: v >= k for s, v in unseen.items()}
    n_short = sum(int((~m).sum()) for m in keep.values())
    if n_short == 0:
        return keep
    filled = [s for s in SPLITS if len(unseen[s])]
    keep_all = min(int(unseen[s].min()) for s in filled) + 1  # the largest --candidates keeping every sample

    def who(split: str, i: int) -> str:
        u, p = samples[split][0][i], samples[split][1][i]
        return (f"user {user_raw[int(u) - 1]!r} had seen {int(p) + 1} of the {n_items} items by position "
                f"{int(p)}, leaving {int(unseen[split][i])} unseen")

    emptied = [s for s in filled if not keep[s].any()]
    if emptied:
        s = emptied[0]
        best = int(np.argmax(unseen[s]))
        keep_some = min(int(unseen[t].max()) for t in filled) + 1  # keeps the best sample of every split
        if keep_all >= 2:
            fix = f"pass --candidates {keep_all} (it keeps every sample)"
        elif keep_some >= 2:
            fix = (f"pass --candidates {keep_some} (it keeps some samples of every split; samples with fewer "
                   f"unseen items are dropped and counted)")
        else:
            fix = (f"no --candidates value helps: every {s} sample's user had seen the whole catalog; remove "
                   f"such users from the raw data")
        raise DataError(f"--candidates {c} needs {k} unseen items per sample for the negatives, but no {s} sample "
                        f"has that many: {who(s, best)} (the most of any {s} sample); {fix}")
    worst_split = min(filled, key=lambda t: int(unseen[t].min()))
    worst = int(np.argmin(unseen[worst_split]))
    per_split = ", ".join(f"{s} {int((~keep[s]).sum())}" for s in SPLITS if len(keep[s]) and not keep[s].all())
    raw_ids = sorted({user_raw[int(u) - 1] for s in filled for u in samples[s][0][~keep[s]]})
    shown = ", ".join(repr(r) for r in raw_ids[:5]) + (f" and {len(raw_ids) - 5} more" if len(raw_ids) > 5 else "")
    advice = (f"pass --candidates {keep_all} to keep every sample" if keep_all >= 2 else
              "no --candidates value keeps them all, since a user had seen every item")
    log.warning("dropped %d sample(s) (%s) whose user had seen so much of the catalog that fewer than the %d unseen "
                "items --candidates %d needs were left: user(s) %s (e.g. %s); %s", n_short, per_split, k, c, shown,
                who(worst_split, worst), advice)
    dropped["samples_too_few_unseen_items"] = n_short
    return keep


def _positions_in_user(uid: np.ndarray) -> np.ndarray:
    """(T,) each interaction's position within its user's (sorted) sequence."""
    bounds = np.flatnonzero(np.diff(uid)) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64)
    lengths = np.diff(np.concatenate([starts, [len(uid)]]))
    return np.arange(len(uid), dtype=np.int64) - np.repeat(starts, lengths)
