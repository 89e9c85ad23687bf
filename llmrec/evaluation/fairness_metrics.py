"""Item-side group-fairness metrics of IFairLRS (Jiang et al., WWW 2024), docs/design.md §7. NumPy throughout.

For a grouping with membership M (see `groups.py`):
    GH(G)    = share of G among all items of the evaluated samples' histories
    GP(G)@K  = share of G among all top-K recommended slots
    GU(G)@K  = GP(G)@K - GH(G)          (> 0: G is recommended more than the users consumed it)
    MGU@K    = mean_G |GU(G)@K|          DGU@K = max_G GU(G)@K - min_G GU(G)@K
A "share" is mass_G / sum_G' mass_G', where mass_G sums the membership of the items counted. With one group
per item (popularity) that is exactly "the fraction of slots (history items) in G". With multi-hot genres an
item counts once in each of its genres and the denominator is the total genre mass, as in the authors' code,
so GP and GH are distributions over the groups (they sum to 1) and GU sums to 0. Items without any group
(padding, or items without genres) are left out of numerator and denominator.

GH uses the histories of the EVALUATED samples (the authors compute it on the test histories): GU then
compares what the model recommends to exactly these users with what these users consumed.

K: for 20-candidate ranking use K in {1, 5, 10}. At K = 20 every candidate is "recommended", so GP@20 is the
candidate distribution whatever the model does; `fairness_metrics` refuses K larger than the ranked list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmrec.base.errors import ConfigError
from llmrec.evaluation.groups import ItemGroups

FAIRNESS_KS: tuple[int, ...] = (1, 5, 10)


def _share(mass: np.ndarray) -> np.ndarray:
    """[G] mass -> [G] share; NaN everywhere when nothing was counted (no samples, or no grouped items)."""
    total = float(mass.sum())
    return mass / total if total > 0 else np.full_like(mass, np.nan, dtype=np.float64)


def _ragged(histories: Sequence[Sequence[int] | np.ndarray]) -> np.ndarray:
    parts = [np.asarray(h, dtype=np.int64).reshape(-1) for h in histories]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def check_k(k: int, n_ranked: int) -> None:
    """One-line ConfigError unless 1 <= k <= n_ranked."""
    if k < 1:
        raise ConfigError(f"fairness K must be at least 1, got K={k}")
    if k > n_ranked:
        raise ConfigError(f"K={k} exceeds the {n_ranked} ranked items per sample; use K <= {n_ranked} "
                          f"(with 20 candidates, K in 1, 5, 10: at K=20 GP is the candidate distribution)")


def rank_candidates(scores: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """[N, C] scores (higher is better) and [N, C] item ids -> [N, C] item ids, best first.

    Ties keep the candidates' stored order (a stable sort): deterministic, and the stored order is a
    seeded shuffle. NaN scores go last.
    """
    scores = np.asarray(scores, dtype=np.float64)
    candidates = np.asarray(candidates, dtype=np.int64)
    if scores.shape != candidates.shape or scores.ndim != 2:
        raise ValueError(f"scores {list(scores.shape)} and candidates {list(candidates.shape)} must both be [N, C]")
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(candidates, order, axis=1)


def group_share_of_history(histories: Sequence[Sequence[int] | np.ndarray], groups: ItemGroups) -> np.ndarray:
    """GH: [G] share of each group among all items of `histories` (one list of item ids per sample)."""
    return _share(groups.mass(_ragged(histories), what="history item"))


def group_share_of_recommendations(ranked_items: np.ndarray, groups: ItemGroups, k: int) -> np.ndarray:
    """GP@K: [G] share of each group among all top-K slots of `ranked_items` [N, C] (best first)."""
    ranked = np.asarray(ranked_items, dtype=np.int64)
    if ranked.ndim != 2:
        raise ValueError(f"ranked_items must be [N, C], got {list(ranked.shape)}")
    check_k(k, ranked.shape[1])
    return _share(groups.mass(ranked[:, :k], what="ranked item"))


def group_unfairness(gp: np.ndarray, gh: np.ndarray) -> np.ndarray:
    """GU@K = GP@K - GH, [G]."""
    return np.asarray(gp, dtype=np.float64) - np.asarray(gh, dtype=np.float64)


def mgu(gu: np.ndarray) -> float:
    """MGU = mean over groups of |GU|."""
    return float(np.mean(np.abs(gu)))


def dgu(gu: np.ndarray) -> float:
    """DGU = max over groups of GU - min over groups of GU."""
    return float(np.max(gu) - np.min(gu))


def group_unfairness_at_ks(ranked_items: np.ndarray, histories: Sequence[Sequence[int] | np.ndarray],
                           groups: ItemGroups, ks: Sequence[int] = FAIRNESS_KS) -> dict[int, np.ndarray]:
    """{K: GU@K [G]} for every K in `ks` (GH computed once)."""
    ranked = np.asarray(ranked_items, dtype=np.int64)
    if ranked.ndim != 2:
        raise ValueError(f"ranked_items must be [N, C], got {list(ranked.shape)}")
    for k in ks:  # refuse a bad K before any work
        check_k(int(k), ranked.shape[1])
    gh = group_share_of_history(histories, groups)
    return {int(k): group_unfairness(group_share_of_recommendations(ranked, groups, int(k)), gh) for k in ks}


def fairness_metrics(ranked_items: np.ndarray, histories: Sequence[Sequence[int] | np.ndarray],
                     groups: ItemGroups, ks: Sequence[int] = FAIRNESS_KS) -> dict[str, float]:
    """`mgu@k`, `dgu@k` and `gu@k/<group name>` for each k in `ks`.

    Args:
        ranked_items: [N, C] item ids per evaluated sample, best first (`rank_candidates`).
        histories: the N evaluated samples' histories (GH is measured on them).
        groups: the grouping.
        ks: cut-offs; each must be <= C.
    """
    out: dict[str, float] = {}
    for k, gu in group_unfairness_at_ks(ranked_items, histories, groups, ks).items():
        out[f"mgu@{k}"] = mgu(gu)
        out[f"dgu@{k}"] = dgu(gu)
        for name, value in zip(groups.names, gu.tolist()):
            out[f"gu@{k}/{name}"] = float(value)
    return out
