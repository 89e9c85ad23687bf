"""Post-learning re-ranking of IFairLRS (Jiang et al., WWW 2024), docs/design.md §7. NumPy (hr@1 via the project's
torch `target_ranks`, so ties count against the model exactly as in every metrics.json).

    U_G   = sum_K (K / sum_K' K') GU(G)@K           measured on VALID with the unadjusted model,
            then divided by max_G |U_G|               (so U lies in [-1, 1])
    adj_i = mean of U_G over item i's groups          (membership-weighted; 0 for items without a group)
    s'    = z(s) - alpha * adj                         per sample over its candidates
Over-recommended groups (U_G > 0) are pushed down, under-recommended ones up. Larger K weigh more: a group's
excess in a long list costs more slots than at K = 1.

Why standardise: score-mode scores are summed log-probabilities of the titles, on a scale that depends on
title length, model and sample, so a fixed alpha would mean a different strength on every row. The z-score
over each sample's candidates (mean 0, std 1; non-finite scores are left as they are) puts every row on one
scale first. It is strictly increasing per row, so it never changes a ranking on its own.

alpha is chosen on VALID (`choose_alpha`): the value that lowers valid MGU most while valid hr@1 stays within
`max_rel_drop` (relative) of alpha = 0. Differs from the authors' code: there the adjustment is applied to
distances between generated-text and item embeddings over the whole catalog, and the strength is set by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from llmrec.base.errors import ConfigError, DataError
from llmrec.evaluation.metrics import target_ranks
from llmrec.evaluation.groups import ItemGroups
from llmrec.evaluation.fairness_metrics import (
    FAIRNESS_KS,
    dgu,
    group_unfairness_at_ks,
    mgu,
    rank_candidates,
)

DEFAULT_ALPHAS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)


def group_adjustment(gu_by_k: dict[int, np.ndarray]) -> np.ndarray:
    """U [G] = sum_K (K / sum_K' K') GU@K, divided by max_G |U_G| (all zeros if every U_G is 0)."""
    if not gu_by_k:
        raise ValueError("group_adjustment needs GU at one K at least")
    total_k = float(sum(gu_by_k))
    u = sum((k / total_k) * np.asarray(gu, dtype=np.float64) for k, gu in gu_by_k.items())
    scale = float(np.max(np.abs(u)))
    return u / scale if scale > 0 else np.zeros_like(u)


def item_adjustment(u: np.ndarray, groups: ItemGroups) -> np.ndarray:
    """[n_items + 1] adj_i = membership-weighted mean of U over item i's groups (0 for padding / no group)."""
    m = groups.membership
    total = m.sum(axis=1)
    return np.where(total > 0, (m @ np.asarray(u, dtype=np.float64)) / np.where(total > 0, total, 1.0), 0.0)


def standardise_scores(scores: np.ndarray) -> np.ndarray:
    """[N, C] -> [N, C] z-scores per row over its finite entries (ddof 0); a row with zero spread is only
    centred; non-finite entries are kept as they are."""
    s = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(s)
    n = finite.sum(axis=1, keepdims=True)
    filled = np.where(finite, s, 0.0)
    mean = filled.sum(axis=1, keepdims=True) / np.maximum(n, 1)
    var = (np.where(finite, s - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / np.maximum(n, 1)
    std = np.sqrt(var)
    std = np.where(std > 0, std, 1.0)
    return np.where(finite, (s - mean) / std, s)


def rerank_scores(scores: np.ndarray, candidate_items: np.ndarray, item_adj: np.ndarray, alpha: float,
                  standardise: bool = True) -> np.ndarray:
    """Fairness-adjusted scores: [N, C] (standardised) scores - alpha * adj[candidate].

    Args:
        scores: [N, C] model scores, higher is better.
        candidate_items: [N, C] the item id of each score.
        item_adj: [n_items + 1] from `item_adjustment`.
        alpha: strength, >= 0. alpha = 0 returns a copy of `scores` untouched (not standardised), so every
            ranking, ties included, is exactly the model's.
        standardise: z-score each row first (see the module docstring).
    """
    alpha = float(alpha)
    if not alpha >= 0:  # also refuses NaN
        raise ConfigError(f"re-ranking alpha must be >= 0, got {alpha}")
    s = np.asarray(scores, dtype=np.float64)
    items = np.asarray(candidate_items, dtype=np.int64)
    if s.shape != items.shape or s.ndim != 2:
        raise ValueError(f"scores {list(s.shape)} and candidate_items {list(items.shape)} must both be [N, C]")
    adj = np.asarray(item_adj, dtype=np.float64)
    if items.size and (items.min() < 0 or items.max() >= len(adj)):
        raise DataError(f"candidate item id {int(items.max())} is outside the adjusted catalog "
                        f"0..{len(adj) - 1}; were the groups built on another dataset?")
    if alpha == 0:
        return s.copy()
    return (standardise_scores(s) if standardise else s) - alpha * adj[items]


def _target_columns(candidates: np.ndarray, targets: np.ndarray) -> np.ndarray:
    hit = candidates == targets.reshape(-1, 1)
    missing = ~hit.any(axis=1)
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataError(f"sample {row}: target {int(targets[row])} is not among its candidates")
    return hit.argmax(axis=1)


def hit_ratio_at_1(scores: np.ndarray, candidates: np.ndarray, targets: np.ndarray) -> float:
    """hr@1 of [N, C] scores (ties count against the model, as in `llmrec.evaluation.metrics`)."""
    cols = _target_columns(np.asarray(candidates, dtype=np.int64), np.asarray(targets, dtype=np.int64))
    ranks = target_ranks(torch.as_tensor(np.asarray(scores, dtype=np.float64)), torch.as_tensor(cols))
    return float((ranks == 0).double().mean()) if len(cols) else float("nan")


@dataclass
class AlphaChoice:
    """Result of `choose_alpha`: the chosen alpha, the valid U it used, and one table row per alpha tried."""

    alpha: float
    group_adjustment: np.ndarray
    table: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "group_adjustment": [float(x) for x in self.group_adjustment],
                "table": [dict(row) for row in self.table]}


def choose_alpha(scores: np.ndarray, candidates: np.ndarray, targets: np.ndarray,
                 histories: Sequence[Sequence[int] | np.ndarray], groups: ItemGroups,
                 grid: Sequence[float] = DEFAULT_ALPHAS, max_rel_drop: float = 0.05,
                 ks: Sequence[int] = FAIRNESS_KS, objective_ks: Sequence[int] = (5, 10),
                 standardise: bool = True) -> AlphaChoice:
    """Pick alpha on VALID: lowest mean MGU over `objective_ks` among the alphas whose hr@1 is at least
    (1 - max_rel_drop) * hr@1 at alpha = 0 (ties: the smaller alpha). alpha = 0 is always tried.

    Args:
        scores, candidates: [N, C] valid scores and candidate item ids; targets: [N] valid targets.
        histories: the N valid histories (GH).
        groups: the grouping.
        grid: alphas to try (each >= 0).
        ks: the K at which GU is measured for U (and reported in the table).
        objective_ks: the K whose MGU is averaged into the objective. Default 5 and 10: MGU@1 rests on one
            slot per sample and is the noisiest, and the top-1 quality is already held by the hr@1 constraint.
    Returns:
        AlphaChoice(alpha, U, table) with table rows {alpha, hr@1, mgu, mgu@k, dgu@k for k in ks, eligible}.
    """
    if not 0 <= max_rel_drop < 1:
        raise ConfigError(f"max_rel_drop must be in [0, 1), got {max_rel_drop}")
    missing = [k for k in objective_ks if k not in ks]
    if missing:
        raise ConfigError(f"objective K {missing} must be among the fairness ks {list(ks)}")
    alphas = sorted({0.0, *(float(a) for a in grid)})
    for a in alphas:
        if not a >= 0:
            raise ConfigError(f"re-ranking alpha must be >= 0, got {a} in the alpha grid")
    scores = np.asarray(scores, dtype=np.float64)
    candidates = np.asarray(candidates, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if len(targets) == 0 or len(targets) != len(scores):
        raise DataError(f"choose_alpha needs valid samples: got {len(scores)} score rows and {len(targets)} targets")

    u = group_adjustment(group_unfairness_at_ks(rank_candidates(scores, candidates), histories, groups, ks))
    adj = item_adjustment(u, groups)
    table: list[dict[str, Any]] = []
    for a in alphas:
        final = rerank_scores(scores, candidates, adj, a, standardise=standardise)
        gus = group_unfairness_at_ks(rank_candidates(final, candidates), histories, groups, ks)
        row: dict[str, Any] = {"alpha": a, "hr@1": hit_ratio_at_1(final, candidates, targets)}
        row["mgu"] = float(np.mean([mgu(gus[int(k)]) for k in objective_ks]))
        for k in ks:
            row[f"mgu@{k}"] = mgu(gus[int(k)])
            row[f"dgu@{k}"] = dgu(gus[int(k)])
        table.append(row)
    floor = (1.0 - max_rel_drop) * table[0]["hr@1"]
    for row in table:
        row["eligible"] = bool(row["hr@1"] >= floor - 1e-12)
    # alpha = 0 is always eligible; an undefined MGU (no grouped item anywhere) never beats a defined one.
    best = min((r for r in table if r["eligible"]),
               key=lambda r: (np.inf if np.isnan(r["mgu"]) else r["mgu"], r["alpha"]))
    return AlphaChoice(alpha=best["alpha"], group_adjustment=u, table=table)
