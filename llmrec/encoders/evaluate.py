"""An encoder's scores of a processed split: the eval set, batched scoring, target ranks (docs/design.md §8).

Full ranking scores every item; padding and, by default, every item the user interacted with before the target
(`user_sequence(u)[:position]`) are excluded. Candidate ranking ranks the target among the sample's stored
candidates, identical for every model.

Which history the encoder reads: `sequence` = the user's whole earlier sequence cut to the encoder's
`max_length` (most recent items); `sample` = the sample's stored `history` (for `llara`, the <= 10 items the
LLM prompt shows). `auto` = `sequence` for `loo`, `sample` for `llara`.

This module is the encoder's side of evaluation: the per-epoch validation (`EncoderModule`: `rank_rows`,
`metrics_from_ranks`) and the scoring behind `llmrec.encoders.ranker.EncoderRanker`, through which an encoder is
evaluated by the one evaluator (`llmrec.evaluation.evaluator`) like every other model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch

from llmrec.base.errors import DataError
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.sampling import LAST_COLUMN
from llmrec.encoders.base import SequentialEncoder, pad_left
from llmrec.evaluation.evaluator import rank_metrics
from llmrec.evaluation.metrics import mask_seen_items, target_ranks

HistorySource = Literal["auto", "sequence", "sample"]
FAIRNESS_GROUPS = 5  # popularity groups (IFairLRS's default)


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
    """Collect split `split` of `data`; raises DataError on an empty or inconsistent split."""
    return eval_set_of(data, data.split(split), split, max_length, history, exclude_seen)  # type: ignore[arg-type]


def eval_set_of(data: ProcessedDataset, df: pd.DataFrame, split: str, max_length: int,
                history: HistorySource = "auto", exclude_seen: bool = True) -> EvalSet:
    """The eval set of `df`, rows of split `split` of `data` (the whole split or a subset of it; a subset carries
    `is_last`, decided on the whole split, as `llmrec.data.sampling.ranked_subset` adds it)."""
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
        if LAST_COLUMN in df.columns:
            last = df[LAST_COLUMN].to_numpy().astype(bool)
        else:
            last = positions == df.groupby("user_id")["position"].transform("max").to_numpy()
    return EvalSet(split=split, histories=histories, targets=targets, seen=earlier if exclude_seen else None,
                   candidates=candidates, last=last)


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


@dataclass
class RowRanking:
    """What `rank_rows_with_lists` returns for R rows: target ranks, and the full ranking's best items."""

    full_ranks: torch.Tensor  # [R] 0-based rank of the target in the full ranking
    cand_ranks: torch.Tensor | None  # [R] among the stored candidates (None: the split stores none)
    full_top: np.ndarray | None  # [R, K] best K items of the full ranking, 0 where fewer items were rankable


@torch.no_grad()
def score_rows(encoder: SequentialEncoder, eval_set: EvalSet, rows: np.ndarray
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scores of `rows` of `eval_set`, on the encoder's device: every item [R, n_items + 1] (column 0 =
    padding) and the stored candidates [R, C] in stored order (-inf where a row has fewer candidates than C:
    the 0 padding of `EvalSet.candidates`), or None when the split stores no candidates."""
    device = next(iter(encoder.state_dict().values())).device
    item_seq, lengths = pad_left([eval_set.histories[i] for i in rows], encoder.max_length, device=device)
    scores = encoder.score_all(encoder(item_seq, lengths)).float()  # [R, n_items + 1]
    if eval_set.candidates is None:
        return scores, None
    cands = torch.as_tensor(eval_set.candidates[rows], device=device)  # [R, C]
    return scores, scores.gather(1, cands).masked_fill(cands == 0, float("-inf"))


@torch.no_grad()
def rank_rows_with_lists(encoder: SequentialEncoder, eval_set: EvalSet, rows: np.ndarray, top: int = 0
                         ) -> RowRanking:
    """Target ranks for `rows` of `eval_set` and, when `top` > 0, the top-`top` full-ranking items (for the
    fairness metrics)."""
    scores, cand_scores = score_rows(encoder, eval_set, rows)  # [R, n_items + 1], [R, C] or None
    device = scores.device
    targets = torch.as_tensor(eval_set.targets[rows], device=device)
    cand_ranks = None
    if cand_scores is not None and eval_set.candidates is not None:
        cands = torch.as_tensor(eval_set.candidates[rows], device=device)  # [R, C]
        cand_ranks = target_ranks(cand_scores, (cands == targets[:, None]).long().argmax(dim=1)).cpu()
    full = scores.clone()
    if eval_set.seen is not None:
        mask_seen_items(full, [eval_set.seen[i] for i in rows], targets)
    else:
        full[:, 0] = float("-inf")
    full_ranks = target_ranks(full, targets).cpu()
    full_top = None
    if top > 0:
        # A stable sort, not topk: equal scores (MostPop's equal counts) are ordered by item id, deterministic.
        values, order = torch.sort(full, dim=1, descending=True, stable=True)
        k = min(top, full.shape[1])
        full_top = torch.where(torch.isfinite(values[:, :k]), order[:, :k], 0).cpu().numpy()
    return RowRanking(full_ranks, cand_ranks, full_top)


def rank_rows(encoder: SequentialEncoder, eval_set: EvalSet, rows: np.ndarray
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """0-based target ranks for `rows` of `eval_set`: (full-ranking ranks [R], candidate ranks [R] or None)."""
    r = rank_rows_with_lists(encoder, eval_set, rows)
    return r.full_ranks, r.cand_ranks


def metrics_from_ranks(eval_set: EvalSet, full_ranks: torch.Tensor, cand_ranks: torch.Tensor | None
                       ) -> dict[str, float]:
    out = rank_metrics(full_ranks, cand_ranks, eval_set.last)
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
