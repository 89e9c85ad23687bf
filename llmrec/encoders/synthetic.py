"""Tiny synthetic processed datasets with a learnable sequential pattern, for tests and smoke runs.

Each user walks the catalog with a fixed stride (item_{t+1} = item_t + stride, wrapping around), so the next
item is predictable from the last two; a sequential encoder should learn it within a few epochs, MostPop
should not. Built directly as a `ProcessedDataset` (no raw files, no `llmrec prepare`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from llmrec.data.dataset import ProcessedDataset


def synthetic_dataset(n_users: int = 60, n_items: int = 40, min_len: int = 8, max_len: int = 20,
                      protocol: Literal["loo", "llara"] = "loo", eval_positions: Literal["last", "all"] = "all",
                      n_candidates: int = 20, history_length: int = 10, seed: int = 0,
                      strides: tuple[int, ...] = (1, 2, 3)) -> ProcessedDataset:
    rng = np.random.default_rng(seed)
    seqs: dict[int, np.ndarray] = {}
    for u in range(1, n_users + 1):
        n = int(rng.integers(min_len, max_len + 1))
        start, stride = int(rng.integers(0, n_items)), int(rng.choice(strides))
        seqs[u] = (start + stride * np.arange(n)) % n_items + 1
    inter = pd.DataFrame({
        "user_id": np.concatenate([np.full(len(s), u) for u, s in seqs.items()]).astype(np.int64),
        "item_id": np.concatenate(list(seqs.values())).astype(np.int64),
        "timestamp": np.concatenate([np.arange(len(s)) for s in seqs.values()]).astype(np.int64)})
    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1, dtype=np.int64),
                          "title": [f"Item {i}" for i in range(1, n_items + 1)],
                          "genres": [["g"] for _ in range(n_items)], "raw_id": [str(i) for i in range(1, n_items + 1)]})

    def sample(u: int, pos: int) -> dict:
        seq = seqs[u]
        seen = set(seq[:pos].tolist()) | {int(seq[pos])}
        pool = np.array([i for i in range(1, n_items + 1) if i not in seen])
        negs = rng.choice(pool, size=min(n_candidates - 1, len(pool)), replace=False)
        cands = np.concatenate([[seq[pos]], negs]).astype(np.int64)
        rng.shuffle(cands)
        return {"user_id": u, "position": pos, "history": seq[max(0, pos - history_length):pos].astype(np.int64),
                "target": int(seq[pos]), "candidates": cands}

    rows: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    if protocol == "loo":
        split = ["all"] * n_users
        for u, s in seqs.items():
            rows["train"] += [sample(u, p) for p in range(1, len(s) - 2)]
            rows["valid"].append(sample(u, len(s) - 2))
            rows["test"].append(sample(u, len(s) - 1))
    else:
        order = rng.permutation(n_users) + 1
        n_eval = max(1, n_users // 10)
        assign = {int(u): "valid" for u in order[:n_eval]} | {int(u): "test" for u in order[n_eval:2 * n_eval]}
        split = [assign.get(u, "train") for u in range(1, n_users + 1)]
        for u, s in seqs.items():
            where = assign.get(u, "train")
            positions = range(3, len(s)) if where == "train" or eval_positions == "all" else [len(s) - 1]
            rows[where] += [sample(u, p) for p in positions]
    users = pd.DataFrame({"user_id": np.arange(1, n_users + 1, dtype=np.int64),
                          "raw_id": [str(u) for u in range(1, n_users + 1)], "split": split})
    samples = {k: pd.DataFrame(v, columns=["user_id", "position", "history", "target", "candidates"])
               for k, v in rows.items()}
    meta = {"dataset": "synthetic", "protocol": protocol, "seed": seed, "n_users": n_users, "n_items": n_items,
            "n_interactions": len(inter), "domain": "generic"}
    if protocol == "llara":
        meta["eval_positions"] = eval_positions
    return ProcessedDataset(meta=meta, items=items, interactions=inter, users=users, samples=samples)
