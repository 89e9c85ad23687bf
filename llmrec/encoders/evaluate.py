"""Evaluate an encoder on a processed split: full ranking and the stored 20 candidates (DESIGN.md §8).

Full ranking (`full/hr@k`, `full/ndcg@k`) scores every item; padding and, by default, every item the user
interacted with before the target (`user_sequence(u)[:position]`) are excluded. Candidate ranking
(`candidates/hr@k`, `candidates/ndcg@k`) ranks the target among the sample's stored candidates, identical for
every model. When the split is the `all` eval set (meta `eval_positions == "all"`), `candidates/hr@1_last`
and `full/ndcg@10_last` are computed on each user's final-position sample, which equals the `last` set.

Which history the encoder reads: `sequence` = the user's whole earlier sequence cut to the encoder's
`max_length` (most recent items); `sample` = the sample's stored `history` (for `llara`, the <= 10 items the
LLM prompt shows). `auto` = `sequence` for `loo`, `sample` for `llara`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from llmrec.data.dataset import ProcessedDataset
from llmrec.encoders.base import SequentialEncoder, pad_left
from llmrec.errors import DataError
from llmrec.evaluation.metrics import candidate_metrics, mask_seen_items, target_ranks

HistorySource = Literal["auto", "sequence", "sample"]
FULL_KS: tuple[int, ...] = (5, 10, 20)
CANDIDATE_KS: tuple[int, ...] = (1, 5, 10)


def monitor_metric(protocol: str) -> str:
    """The VALID metric that early stopping and checkpoint choice watch."""
    return "full/ndcg@10" if protocol == "loo" else "candidates/hr@1"


@dataclass
class EvalSet:
    """One split, ready to score: encoder inputs, targets, what to exclude and the stored candidates."""

    split: str
    histories: list[np.ndarray]  # encoder input per sample, oldest -> newest, <= max_length items
    targets: np.ndarray  # [N]
    seen: list[np.ndarray] | None  # per sample, items excluded from full ranking (None: exclude nothing)
    candidates: np.ndarray | None  # [N, C], or None when the split stores no candidates
    last: np.ndarray | None  # [N] bool: the user's final-position sample (only for the `all` eval set)

    def __len__(self) -> int:
        return len(self.targets)


def build_eval_set(data: ProcessedDataset, split: str, max_length: int, history: HistorySource = "auto",
                   exclude_seen: bool = True) -> EvalSet:
    """Collect split `split` of `data` for `evaluate`; raises DataError on an empty or inconsistent split."""
    df = data.split(split)  # type: ignore[arg-type]
    if not len(df):
        raise DataError(f"{data.root or 'dataset'}: split {split!r} has no samples")
    source = ("sequence" if data.protocol == "loo" else "sample") if history == "auto" else history
    users = df["user_id"].to_numpy()
    positions = df["position"].to_numpy()
    targets = df["target"].to_numpy().astype(np.int64)
    seqs = data.user_sequences()
    earlier = [seqs[int(u)][: int(p)] for u, p in zip(users, positions)]
    if source == "sequence":
        histories = [e[-max_length:] for e in earlier]
    else:
        histories = [np.asarray(h, dtype=np.int64)[-max_length:] for h in df["history"]]
    empty = [i for i, h in enumerate(histories) if len(h) == 0]
    if empty:
        i = empty[0]
        raise DataError(f"{split} sample {i} (user {users[i]}, position {positions[i]}) has an empty history; "
                        f"an encoder needs at least one item")
    candidates = _stack_candidates(df["candidates"])
    if candidates is not None and not (candidates == targets[:, None]).any(axis=1).all():
        bad = int(np.flatnonzero(~(candidates == targets[:, None]).any(axis=1))[0])
        raise DataError(f"{split} sample {bad} (user {users[bad]}): its candidates do not contain its target")
    last = None
    if data.meta.get("eval_positions") == "all" and split in ("valid", "test"):
        max_pos = df.groupby("user_id")["position"].transform("max").to_numpy()
        last = positions == max_pos
    return EvalSet(split=split, histories=histories, targets=targets,
                   seen=earlier if exclude_seen else None, candidates=candidates, last=last)


def _stack_candidates(column) -> np.ndarray | None:
    """Candidate lists -> [N, C] padded with 0 (never a real item; scored -inf), or None if all are empty."""
    lists = [np.asarray(c if c is not None else [], dtype=np.int64) for c in column]
    width = max((len(c) for c in lists), default=0)
    if width == 0:
        return None
    out = np.zeros((len(lists), width), dtype=np.int64)
    for i, c in enumerate(lists):
        out[i, : len(c)] = c
    return out


@torch.no_grad()
def rank_rows(encoder: SequentialEncoder, eval_set: EvalSet, rows: np.ndarray
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """0-based target ranks for `rows` of `eval_set`: (full-ranking ranks [R], candidate ranks [R] or None)."""
    device = next(iter(encoder.state_dict().values())).device
    item_seq, lengths = pad_left([eval_set.histories[i] for i in rows], encoder.max_length, device=device)
    scores = encoder.score_all(encoder(item_seq, lengths)).float()  # [R, n_items + 1]
    targets = torch.as_tensor(eval_set.targets[rows], device=device)
    cand_ranks = None
    if eval_set.candidates is not None:
        cands = torch.as_tensor(eval_set.candidates[rows], device=device)  # [R, C]
        cand_scores = scores.gather(1, cands).masked_fill(cands == 0, float("-inf"))  # 0 = no candidate
        cand_ranks = target_ranks(cand_scores, (cands == targets[:, None]).long().argmax(dim=1)).cpu()
    full = scores.clone()
    if eval_set.seen is not None:
        mask_seen_items(full, [eval_set.seen[i] for i in rows], targets)
    else:
        full[:, 0] = float("-inf")
    full_ranks = target_ranks(full, targets).cpu()
    return full_ranks, cand_ranks


def metrics_from_ranks(eval_set: EvalSet, full_ranks: torch.Tensor, cand_ranks: torch.Tensor | None
                       ) -> dict[str, float]:
    out = candidate_metrics(full_ranks, prefix="full/", ks=FULL_KS)
    if cand_ranks is not None:
        out.update(candidate_metrics(cand_ranks, prefix="candidates/", ks=CANDIDATE_KS))
    if eval_set.last is not None:
        last = torch.as_tensor(eval_set.last)
        sub = candidate_metrics(full_ranks[last], prefix="full/", ks=(10,))
        out.update({f"{k}_last": v for k, v in sub.items()})
        if cand_ranks is not None:
            sub = candidate_metrics(cand_ranks[last], prefix="candidates/", ks=(1, 5))
            out.update({f"{k}_last": v for k, v in sub.items()})
        out["n_samples_last"] = int(last.sum())
    out["n_samples"] = len(eval_set)
    return out


def length_order(eval_set: EvalSet) -> np.ndarray:
    """Sample indices sorted by history length, so each batch carries little padding."""
    return np.argsort([len(h) for h in eval_set.histories], kind="stable")


def gather_ranks(eval_set: EvalSet, parts: list[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]]
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rows, full ranks, candidate ranks) batches in any order -> ranks in sample order."""
    full = torch.empty(len(eval_set), dtype=torch.long)
    cand = torch.empty(len(eval_set), dtype=torch.long) if eval_set.candidates is not None else None
    for rows, f, c in parts:
        idx = torch.as_tensor(rows)
        full[idx] = f
        if cand is not None and c is not None:
            cand[idx] = c
    return full, cand


@torch.no_grad()
def evaluate(encoder: SequentialEncoder, eval_set: EvalSet, batch_size: int = 1024) -> dict[str, float]:
    """All metrics of `encoder` on `eval_set` (encoder put in eval mode); adds `eval_seconds`."""
    start = time.perf_counter()
    was_training = encoder.training
    encoder.eval()
    order = length_order(eval_set)
    parts = []
    try:
        for s in range(0, len(eval_set), batch_size):
            rows = order[s:s + batch_size]
            parts.append((rows, *rank_rows(encoder, eval_set, rows)))
    finally:
        encoder.train(was_training)
    out = metrics_from_ranks(eval_set, *gather_ranks(eval_set, parts))
    out["eval_seconds"] = time.perf_counter() - start
    return out
