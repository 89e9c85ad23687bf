"""A faiss inner-product index over an encoder's item embeddings: whole-catalog retrieval for serving.

`ItemIndex(encoder.item_embeddings()).retrieve(seq_repr, k)` returns the k items with the highest
`seq_repr @ item_emb.T`, exactly as `encoder.score_all` ranks them (an exact `IndexFlatIP`, not an
approximate index: ML-scale catalogs are small). Row 0 (padding) is never indexed, so item id 0 is never
returned. faiss is imported only when an index is built or read, so machines without faiss (e.g. a GPU box
used for benchmarks) can still train and load encoders.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmrec.base.atomic import atomic_write
from llmrec.base.errors import CheckpointError

INDEX_FILE = "items.faiss"


def _faiss() -> Any:
    try:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines are noise
        import faiss  # lazily: optional when only training (a GPU box may lack it)
    except ImportError:
        raise ImportError("the item index needs faiss: `pip install faiss-cpu` (or faiss-gpu)") from None
    return faiss


def faiss_available() -> bool:
    try:
        _faiss()
        return True
    except ImportError:
        return False


def _as_float32(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


class ItemIndex:
    """Exact inner-product search over items 1..n_items (faiss row r holds item r + 1)."""

    def __init__(self, index: Any):
        self.index = index

    @classmethod
    def build(cls, item_embeddings: torch.Tensor | np.ndarray) -> ItemIndex:
        """From `[n_items + 1, H]` embeddings (row 0 = padding, left out)."""
        emb = _as_float32(item_embeddings)
        if emb.ndim != 2 or emb.shape[0] < 2:
            raise ValueError(f"item embeddings must be [n_items + 1, H] with n_items >= 1, got {emb.shape}")
        faiss = _faiss()
        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(emb[1:])
        return cls(index)

    @property
    def n_items(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def retrieve(self, seq_repr: torch.Tensor | np.ndarray, k: int,
                 exclude: Sequence[Sequence[int] | np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per row of `seq_repr` [B, H] -> (scores [B, k] float32, item_ids [B, k] int64).

        `exclude[b]` lists item ids never to return for row b (e.g. the history). k is capped at the number
        of items that can be returned; rows with fewer eligible items are filled with id 0 and score -inf.
        """
        q = _as_float32(seq_repr)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"seq_repr must be [B, {self.dim}], got {q.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, self.n_items)
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        search_k = min(k + extra, self.n_items)
        scores, rows = self.index.search(q, search_k)  # [B, search_k]
        ids = rows.astype(np.int64) + 1  # faiss returns -1 for missing -> 0 (padding)
        if exclude is None:
            return scores[:, :k], ids[:, :k]
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_i = np.zeros((len(q), k), dtype=np.int64)
        for b in range(len(q)):
            banned = {int(i) for i in exclude[b]}
            keep = [j for j in range(search_k) if ids[b, j] > 0 and int(ids[b, j]) not in banned][:k]
            out_s[b, : len(keep)] = scores[b, keep]
            out_i[b, : len(keep)] = ids[b, keep]
        return out_s, out_i

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index atomically (to a temporary file, then renamed)."""
        faiss = _faiss()
        return atomic_write(path, lambda tmp: faiss.write_index(self.index, str(tmp)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ItemIndex:
        path = Path(path)
        if path.is_dir():
            path = path / INDEX_FILE
        if not path.is_file():
            raise CheckpointError(f"{path}: no item index; build one with "
                                  f"`ItemIndex.build(encoder.item_embeddings())`")
        faiss = _faiss()
        try:
            return cls(faiss.read_index(str(path)))
        except RuntimeError as e:
            raise CheckpointError(f"{path}: not a faiss index ({str(e).splitlines()[0]})") from None
