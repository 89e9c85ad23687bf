"""Evaluate an encoder on a processed split: full ranking and the stored 20 candidates (docs/design.md §8).

Full ranking (`full/hr@k`, `full/ndcg@k`) scores every item; padding and, by default, every item the user
interacted with before the target (`user_sequence(u)[:position]`) are excluded. Candidate ranking
(`candidates/hr@k`, `candidates/ndcg@k`) ranks the target among the sample's stored candidates, identical for
every model. When the split is the `all` eval set (meta `eval_positions == "all"`), `candidates/hr@1_last`
and `full/ndcg@10_last` are computed on each user's final-position sample, which equals the `last` set.

Which history the encoder reads: `sequence` = the user's whole earlier sequence cut to the encoder's
`max_length` (most recent items); `sample` = the sample's stored `history` (for `llara`, the <= 10 items the
LLM prompt shows). `auto` = `sequence` for `loo`, `sample` for `llara`.

Item-side fairness (IFairLRS, docs/design.md §7; `evaluate` only, not the per-epoch validation): `full/mgu@k`,
`full/dgu@k`, `full/gu@k/<group>` for K in 1, 5, 10, 20 of the full-catalog ranking, `candidates/...` for K in
1, 5, 10 of the stored candidates (at K = 20 with 20 candidates GP is the candidate distribution whatever the
model does), and `gh/<group>`, over 5 popularity groups counted on training interactions
(`llmrec.evaluation.groups`). What is recommended at K: the K best-scored items, ties broken by item id (full
ranking) or by the stored candidate order (candidates); items excluded from full ranking (padding, seen
items) are never counted, even when fewer than K items remain. GH uses the samples' stored `history`
column whichever `history` source the encoder reads, so that every model evaluated on a split (the LLMs
included, `llmrec.fairness.evaluate`) is compared with the same histories.

`encoder_ranking` writes an encoder's scores of the stored candidates of a seeded subset of a split in the
table format of the LLMs' `llmrec.evaluation.llm_split.rank_split` (same rows for the same size and seed), so
that an encoder and an LLM are measured on the same samples by the same functions (`llmrec demo`). It scores
through `score_rows`, as `evaluate` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch

from llmrec.data.dataset import ProcessedDataset
from llmrec.data.sampling import LAST_COLUMN, ranked_subset
from llmrec.encoders.base import SequentialEncoder, pad_left
from llmrec.base.errors import DataError
from llmrec.evaluation.metrics import candidate_metrics, mask_seen_items, target_ranks
from llmrec.evaluation.groups import ItemGroups, item_groups
from llmrec.evaluation.fairness_metrics import (
    fairness_metrics,
    group_share_of_history,
    rank_candidates,
)

HistorySource = Literal["auto", "sequence", "sample"]
FULL_KS: tuple[int, ...] = (5, 10, 20)
CANDIDATE_KS: tuple[int, ...] = (1, 5, 10)
FAIRNESS_FULL_KS: tuple[int, ...] = (1, 5, 10, 20)
FAIRNESS_CANDIDATE_KS: tuple[int, ...] = (1, 5, 10)
FAIRNESS_GROUPS = 5  # popularity groups (IFairLRS's default)
_ROW = "_eval_set_row"  # encoder_ranking: where a subset row sits in the whole split


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
    groups: ItemGroups | None = None  # item grouping of the fairness metrics (None: no fairness metrics)
    sample_histories: list[np.ndarray] | None = None  # per sample, the stored `history` (GH of fairness)

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
    groups = item_groups(data, "popularity", n_groups=min(FAIRNESS_GROUPS, data.n_items))
    stored = [np.asarray(h, dtype=np.int64) for h in df["history"]]
    return EvalSet(split=split, histories=histories, targets=targets,
                   seen=earlier if exclude_seen else None, candidates=candidates, last=last,
                   groups=groups, sample_histories=stored)


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
    """What `rank_rows_with_lists` returns for R rows: target ranks, and the ranked lists fairness counts."""

    full_ranks: torch.Tensor  # [R] 0-based rank of the target in the full ranking
    cand_ranks: torch.Tensor | None  # [R] among the stored candidates (None: the split stores none)
    full_top: np.ndarray | None  # [R, K] best K items of the full ranking, 0 where fewer items were rankable
    cand_order: np.ndarray | None  # [R, C] candidate ids best first (ties: stored order; 0 = no candidate)


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
    """Target ranks for `rows` of `eval_set` and, when `top` > 0, the top-`top` full-ranking items and the
    candidates in ranked order (for the fairness metrics)."""
    scores, cand_scores = score_rows(encoder, eval_set, rows)  # [R, n_items + 1], [R, C] or None
    device = scores.device
    targets = torch.as_tensor(eval_set.targets[rows], device=device)
    cand_ranks = cand_order = None
    if cand_scores is not None and eval_set.candidates is not None:
        cands = torch.as_tensor(eval_set.candidates[rows], device=device)  # [R, C]
        cand_ranks = target_ranks(cand_scores, (cands == targets[:, None]).long().argmax(dim=1)).cpu()
        if top > 0:
            cand_order = rank_candidates(cand_scores.cpu().double().numpy(), eval_set.candidates[rows])
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
    return RowRanking(full_ranks, cand_ranks, full_top, cand_order)


def rank_rows(encoder: SequentialEncoder, eval_set: EvalSet, rows: np.ndarray
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """0-based target ranks for `rows` of `eval_set`: (full-ranking ranks [R], candidate ranks [R] or None)."""
    r = rank_rows_with_lists(encoder, eval_set, rows)
    return r.full_ranks, r.cand_ranks


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


def fairness_from_lists(eval_set: EvalSet, full_top: np.ndarray | None, cand_order: np.ndarray | None
                        ) -> dict[str, float]:
    """`full/mgu@k` ..., `candidates/mgu@k` ... and `gh/<group>` from ranked lists in sample order."""
    if eval_set.groups is None or eval_set.sample_histories is None:
        return {}
    out: dict[str, float] = {}
    hist = eval_set.sample_histories
    if full_top is not None:
        ks = [k for k in FAIRNESS_FULL_KS if k <= full_top.shape[1]]
        out.update({f"full/{k}": v for k, v in fairness_metrics(full_top, hist, eval_set.groups, ks).items()})
    if cand_order is not None:
        ks = [k for k in FAIRNESS_CANDIDATE_KS if k <= cand_order.shape[1]]
        out.update({f"candidates/{k}": v for k, v in fairness_metrics(cand_order, hist, eval_set.groups, ks).items()})
    for name, share in zip(eval_set.groups.names, group_share_of_history(hist, eval_set.groups).tolist()):
        out[f"gh/{name}"] = float(share)
    return out


@torch.no_grad()
def evaluate(encoder: SequentialEncoder, eval_set: EvalSet, batch_size: int = 1024) -> dict[str, float]:
    """All metrics of `encoder` on `eval_set` (encoder put in eval mode), the fairness metrics included when
    `eval_set.groups` is set; adds `eval_seconds`."""
    start = time.perf_counter()
    was_training = encoder.training
    encoder.eval()
    order = length_order(eval_set)
    fair = eval_set.groups is not None
    parts = []
    full_top = cand_order = None
    try:
        for s in range(0, len(eval_set), batch_size):
            rows = order[s:s + batch_size]
            r = rank_rows_with_lists(encoder, eval_set, rows, top=max(FAIRNESS_FULL_KS) if fair else 0)
            parts.append((rows, r.full_ranks, r.cand_ranks))
            if r.full_top is not None:
                if full_top is None:
                    full_top = np.zeros((len(eval_set), r.full_top.shape[1]), dtype=np.int64)
                full_top[rows] = r.full_top
            if r.cand_order is not None:
                if cand_order is None:
                    cand_order = np.zeros((len(eval_set), r.cand_order.shape[1]), dtype=np.int64)
                cand_order[rows] = r.cand_order
    finally:
        encoder.train(was_training)
    out = metrics_from_ranks(eval_set, *gather_ranks(eval_set, parts))
    out.update(fairness_from_lists(eval_set, full_top, cand_order))
    out["eval_seconds"] = time.perf_counter() - start
    return out


@torch.no_grad()
def encoder_ranking(encoder: SequentialEncoder, data: ProcessedDataset, split: str, max_samples: int | None,
                    seed: int, history: HistorySource = "auto", batch_size: int = 256) -> pd.DataFrame:
    """Score-mode ranking of the stored candidates of (a seeded subset of) `split` by `encoder`, one row per
    sample in `llmrec.evaluation.llm_split.rank_split`'s table format.

    The rows are exactly the samples `rank_split` ranks for the same `max_samples` and `seed` (both draw them
    with `llmrec.data.sampling.ranked_subset` from the whole split), so `split_metrics` and `ranked_fairness` of
    this table are the encoder's metrics on the LLM's samples. The encoder reads the history `build_eval_set`
    gives it (`history` as in `train-encoder --eval-history`) and scores through `score_rows`, as `evaluate`
    does. Columns: user_id, position, target, candidates (stored order), scores (one per candidate), chosen (the
    best-scored candidate, ties: stored order), `is_last` (final sample of its user in the WHOLE split), text
    (empty). Raises DataError when the split stores no candidates or its rows hold different numbers of them.
    """
    eval_set = build_eval_set(data, split, encoder.max_length, history, exclude_seen=False)
    if eval_set.candidates is None:
        raise DataError(f"{data.root or 'dataset'}: split {split!r} stores no candidates to rank")
    whole = data.split(split)  # type: ignore[arg-type]
    samples = ranked_subset(whole.assign(**{_ROW: np.arange(len(whole), dtype=np.int64)}), max_samples, seed)
    rows = samples[_ROW].to_numpy()
    candidates = eval_set.candidates[rows]  # [N, C], 0-padded where a row has fewer
    if (candidates == 0).any():
        widths = sorted({int(n) for n in (candidates != 0).sum(axis=1)})
        raise DataError(f"{data.root or 'dataset'}: {split} rows hold different numbers of candidates ({widths}); "
                        f"expected one candidate set size per split")
    was_training = encoder.training
    encoder.eval()
    parts = []
    try:
        for start in range(0, len(rows), batch_size):
            _, cand_scores = score_rows(encoder, eval_set, rows[start:start + batch_size])
            parts.append(cand_scores.double().cpu().numpy())  # type: ignore[union-attr]
    finally:
        encoder.train(was_training)
    scores = np.concatenate(parts) if parts else np.zeros(candidates.shape)  # [N, C]
    out = pd.DataFrame({
        "user_id": samples["user_id"].astype(np.int64).to_numpy(),
        "position": samples["position"].astype(np.int64).to_numpy(),
        "target": samples["target"].astype(np.int64).to_numpy(),
        "candidates": [list(map(int, c)) for c in candidates],
        "scores": [list(map(float, s)) for s in scores],
        "chosen": rank_candidates(scores, candidates)[:, 0],
        LAST_COLUMN: samples[LAST_COLUMN].to_numpy(),
        "text": [""] * len(rows),
    })
    out.attrs.update({"mode": "score", "split": split})
    return out
