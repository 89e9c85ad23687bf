"""The split fingerprint: which users a model may have trained on, recorded with every trained model.

A model trained on one preparation must not be used with another whose valid/test users it saw: an encoder
trained on the `loo` protocol of a catalog trained on every user's sequence up to its last two items, so its item
embeddings carry the sequences and targets of the `llara` protocol's held-out users; another `--seed` of `llara`
draws other train/valid/test users. The catalog fingerprint alone cannot tell these apart.

The fingerprint records the protocol, the seed, the eval positions and a sha256 over every (user, split) pair.
Two preparations are compatible when protocol and user assignment agree; `eval_positions` may differ (`last`
and `all` hold the same training samples and hold out the same users: only how many samples a held-out user
contributes to valid/test changes), so it is recorded but not compared.
"""

from __future__ import annotations

import hashlib
from typing import Any

from llmrec.data.dataset import ProcessedDataset

COMPARED: tuple[str, ...] = ("protocol", "users_sha256")


def split_fingerprint(data: ProcessedDataset) -> dict[str, Any]:
    """{"protocol", "seed", "eval_positions", "users_sha256"} of a prepared dataset."""
    users = data.users.sort_values("user_id")
    digest = hashlib.sha256()
    for user, split in zip(users["user_id"].to_numpy(), users["split"].astype(str).tolist()):
        digest.update(f"{int(user)}\t{split}\n".encode())
    return {"protocol": data.protocol, "seed": data.meta.get("seed"),
            "eval_positions": data.meta.get("eval_positions"), "users_sha256": digest.hexdigest()}


def split_mismatch(recorded: dict[str, Any] | None, data: ProcessedDataset) -> str | None:
    """Why a model trained on the split `recorded` must not be used with `data` (None when it may)."""
    if not recorded:
        return "it records no split fingerprint (made by an older llmrec)"
    current = split_fingerprint(data)
    if recorded.get("protocol") != current["protocol"]:
        return (f"it was trained on the `{recorded.get('protocol')}` protocol (seed {recorded.get('seed')}), the data "
                f"use `{current['protocol']}` (seed {current['seed']})")
    if recorded.get("users_sha256") != current["users_sha256"]:
        return (f"its training users differ from the data's (it was trained on a preparation with seed "
                f"{recorded.get('seed')}, the data have seed {current['seed']}), so some of the data's valid/test "
                f"users were its training users")
    return None
