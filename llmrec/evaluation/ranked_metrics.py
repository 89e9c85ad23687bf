"""Metrics of a ranked table (`llmrec.evaluation.scores`), whatever model made it: accuracy (docs/design.md §8) and
item-side fairness (IFairLRS, docs/design.md §7).

Accuracy (`split_metrics`): `hr@1` (correct / all samples), `hr@1_valid` (correct / valid outputs),
`valid_ratio`, `candidates/ndcg@5`, and, for score mode, `candidates/hr@k` and `candidates/ndcg@k` for k in 1, 5,
10 (ties count against the model, `metrics.target_ranks`). `hr@1_last` (with `n_users_last`) is hr@1 over the
rows that are their user's final sample in the full split (`llmrec.data.sampling`), reported when the table holds
several samples per user. `generate` and `constrained` make one choice per sample: the chosen item is ranked
first and nothing else is, so for them `candidates/ndcg@5` equals `hr@1`.

Fairness (`ranked_fairness`), what is "recommended" at K:
- `score` mode: each row's candidates ordered by the scores, best first; tied scores keep the candidates' stored
  order (a seeded shuffle; `fairness_metrics.rank_candidates`), NaN scores go last. K in 1, 5, 10 by default (at
  K = 20 with 20 candidates every candidate is recommended, so GP@20 is the candidate distribution whatever the
  model does).
- `generate` / `constrained`: one choice per sample, so only K = 1 is defined. An invalid output (no candidate
  named, `chosen = -1`) recommends nothing: it takes no slot, so GP@1 is the group share among the VALID
  choices and `valid_ratio` says how many slots there were.
GH uses the ranked samples' stored `history` (for `llara`, the <= 10 most recent items the prompt shows): the
same histories for every model ranked on that split, so GU is comparable across models on the same candidates.
Keys: `mgu@k`, `dgu@k`, `gu@k/<group>` (as `fairness_metrics.fairness_metrics`) and `gh/<group>`; GP@K of a
group is `gu@k/<group> + gh/<group>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from llmrec.base.errors import ConfigError, DataError
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.sampling import LAST_COLUMN
from llmrec.evaluation.fairness_metrics import (
    FAIRNESS_KS,
    check_k,
    fairness_metrics,
    group_share_of_history,
    rank_candidates,
)
from llmrec.evaluation.groups import ItemGroups
from llmrec.evaluation.metrics import candidate_metrics, choice_metrics, target_ranks
from llmrec.evaluation.scores import (
    CHOICE_MODES,
    INVALID,
    padded_scores,
    stack_candidates,
    stack_scores,
    table_mode,
    table_split,
)


def hits(ranked: pd.DataFrame) -> np.ndarray:
    """[N] bool: the model's top choice is the target."""
    return ranked["chosen"].to_numpy() == ranked["target"].to_numpy()


def candidate_ranks(ranked: pd.DataFrame) -> torch.Tensor:
    """[N] 0-based rank of each row's target among its candidates, from a score-mode table's `scores` (rows
    with fewer candidates than others rank among their own)."""
    if not len(ranked):
        return torch.zeros(0, dtype=torch.long)
    padded_cands, padded = padded_scores(ranked)
    scores = torch.tensor(padded.astype(np.float32))
    cands = torch.tensor(padded_cands)
    target_index = (cands == torch.tensor(ranked["target"].to_numpy())[:, None]).long().argmax(1)
    return target_ranks(scores, target_index)


def split_metrics(ranked: pd.DataFrame, mode: str) -> dict[str, Any]:
    """Accuracy of a ranked table made in `mode` (see the module docstring)."""
    if mode == "score":
        m = candidate_metrics(candidate_ranks(ranked))
        metrics: dict[str, Any] = {"hr@1": m["candidates/hr@1"], "hr@1_valid": m["candidates/hr@1"],
                                   "valid_ratio": 1.0, **m}
    else:
        chosen = [None if c == INVALID else int(c) for c in ranked["chosen"]]
        metrics = choice_metrics(chosen, ranked["target"].tolist())
        metrics["candidates/ndcg@5"] = metrics["hr@1"]
    users = ranked["user_id"].to_numpy()
    if len(np.unique(users)) < len(users) or not ranked[LAST_COLUMN].all():
        last = ranked[LAST_COLUMN].to_numpy().astype(bool)
        metrics["hr@1_last"] = float(hits(ranked)[last].mean()) if last.any() else None
        metrics["n_users_last"] = int(last.sum())
    metrics["n_samples"] = len(ranked)
    return metrics


def sample_histories(ranked: pd.DataFrame, data: ProcessedDataset) -> list[np.ndarray]:
    """The stored `history` of each ranked row, found by (user, position) in the table's split of `data`.

    Raises DataError when a row is not a sample of that split, or its target or candidates differ from the
    data's: the scores were made on another preparation than `data`.
    """
    split = table_split(ranked)
    samples = data.split(split)  # type: ignore[arg-type]
    index = {(int(u), int(p)): i for i, (u, p) in enumerate(zip(samples["user_id"], samples["position"]))}
    targets = samples["target"].to_numpy()
    candidates = samples["candidates"].tolist()
    stored = samples["history"].tolist()
    histories: list[np.ndarray] = []
    where = data.root or "the data"
    for row, (u, p, t, c) in enumerate(zip(ranked["user_id"], ranked["position"], ranked["target"],
                                           ranked["candidates"])):
        i = index.get((int(u), int(p)))
        if i is None:
            raise DataError(f"ranked row {row} (user {int(u)}, position {int(p)}) is not a {split} sample of "
                            f"{where}: the scores were made on another preparation")
        if int(targets[i]) != int(t) or not np.array_equal(np.asarray(candidates[i], dtype=np.int64),
                                                           np.asarray(c, dtype=np.int64)):
            raise DataError(f"ranked row {row} (user {int(u)}, position {int(p)}): its target or candidates differ "
                            f"from {split} of {where}: the scores were made on another preparation")
        histories.append(np.asarray(stored[i], dtype=np.int64))
    return histories


def recommended_items(ranked: pd.DataFrame, scores_column: str = "scores") -> np.ndarray:
    """[N, C] item ids best first (score mode), or [N, 1] chosen items with invalid outputs as 0 (choices).

    Id 0 is padding: it belongs to no group, so an invalid output counts in no share.
    """
    if table_mode(ranked) in CHOICE_MODES:
        chosen = ranked["chosen"].to_numpy().astype(np.int64).reshape(-1, 1)
        return np.where(chosen == INVALID, 0, chosen)
    return rank_candidates(stack_scores(ranked, scores_column), stack_candidates(ranked))


def default_ks(ranked: pd.DataFrame) -> tuple[int, ...]:
    """K = 1 for one-choice modes; 1, 5, 10 (those <= the candidates per sample) for score mode."""
    if table_mode(ranked) in CHOICE_MODES:
        return (1,)
    width = stack_candidates(ranked).shape[1]
    return tuple(k for k in FAIRNESS_KS if k <= width)


def ranked_fairness(ranked: pd.DataFrame, data: ProcessedDataset, groups: ItemGroups,
                    ks: Sequence[int] | None = None, scores_column: str = "scores") -> dict[str, Any]:
    """`mgu@k`, `dgu@k`, `gu@k/<group>` and `gh/<group>` of a ranked table (see the module docstring).

    Args:
        ranked: a ranked table (`llmrec.evaluation.scores`), any mode.
        data: the prepared dataset the ranking was made on (histories; rows are checked against it).
        groups: the item grouping (`groups.item_groups(data, ...)`).
        ks: cut-offs; None = `default_ks` (1 for generate/constrained; 1, 5, 10 for score mode). A K larger
            than the ranked list (1 for one-choice modes, the candidates per sample for score mode) is a
            one-line ConfigError.
        scores_column: which score column ranks a score-mode table (`model_scores` = a re-ranked table's
            original scores).
    """
    items = recommended_items(ranked, scores_column)
    ks = tuple(int(k) for k in (default_ks(ranked) if ks is None else ks))
    mode = table_mode(ranked)
    if mode in CHOICE_MODES and any(k > 1 for k in ks):
        raise ConfigError(f"K={max(ks)} is not defined for `{mode}` mode, which makes one choice per sample; "
                          f"only K=1 (rank with `--mode score` for K > 1)")
    for k in ks:  # refuse a bad K before reading histories
        check_k(k, items.shape[1])
    histories = sample_histories(ranked, data)
    out: dict[str, Any] = fairness_metrics(items, histories, groups, ks)
    for name, share in zip(groups.names, group_share_of_history(histories, groups).tolist()):
        out[f"gh/{name}"] = float(share)
    return out


def table_metrics(table: pd.DataFrame, data: ProcessedDataset, groups: ItemGroups, ks: Sequence[int],
                  scores_column: str = "scores") -> dict[str, Any]:
    """Accuracy (`split_metrics`) and fairness (`ranked_fairness`) of a score-mode table, ranked by
    `scores_column` (`model_scores`: a re-ranked table's scores before re-ranking)."""
    ranked = table if scores_column == "scores" else table.assign(scores=table[scores_column])
    ranked.attrs = dict(table.attrs)
    return {**split_metrics(ranked, "score"), **ranked_fairness(ranked, data, groups, ks)}
