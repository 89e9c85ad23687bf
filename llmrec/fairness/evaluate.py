"""Item-side fairness (IFairLRS, docs/design.md §7) of a saved ranking: the table `llmrec evaluate` writes as
`scores.parquet` (`llmrec.evaluation.llm_split.rank_split` / `read_scores`), one row per ranked sample.

What is "recommended" at K:
- `score` mode: each row's candidates ordered by the model's scores, best first; tied scores keep the
  candidates' stored order (a seeded shuffle; `metrics.rank_candidates`), NaN scores go last. K in 1, 5, 10 by
  default (at K = 20 with 20 candidates every candidate is recommended, so GP@20 is the candidate
  distribution whatever the model does).
- `generate` / `constrained`: one choice per sample, so only K = 1 is defined. An invalid output (no candidate
  named, `chosen = -1`) recommends nothing: it takes no slot, so GP@1 is the group share among the VALID
  choices and `valid_ratio` (in metrics.json) says how many slots there were.

GH uses the evaluated samples' stored `history` (for `llara`, the <= 10 most recent items the prompt shows):
the same histories for every model evaluated on that split, so GU is comparable across models on the same
candidates (the encoders' evaluation, `llmrec.encoders.evaluate`, uses the same column).

Keys returned: `mgu@k`, `dgu@k`, `gu@k/<group>` (as `metrics.fairness_metrics`) and `gh/<group>`; GP@K of a
group is `gu@k/<group> + gh/<group>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from llmrec.data.dataset import ProcessedDataset
from llmrec.base.errors import ConfigError, DataError
from llmrec.evaluation.groups import ItemGroups
from llmrec.evaluation.fairness_metrics import (
    FAIRNESS_KS,
    check_k,
    fairness_metrics,
    group_share_of_history,
    rank_candidates,
)

INVALID = -1  # `chosen` of an output that named no candidate (llm_split.INVALID)
CHOICE_MODES: tuple[str, ...] = ("generate", "constrained")


def table_mode(ranked: pd.DataFrame) -> str:
    """The ranking mode of a ranked table (`attrs` as `rank_split` sets them, else the `mode` column)."""
    mode = ranked.attrs.get("mode")
    if mode is None and "mode" in ranked.columns and len(ranked):
        mode = str(ranked["mode"].iloc[0])
    if mode is None:
        raise DataError("the ranked table records no mode (score, generate or constrained); expected a "
                        "scores.parquet written by `llmrec evaluate`")
    return str(mode)


def table_split(ranked: pd.DataFrame) -> str:
    """The split a ranked table was made on (`attrs`, else the `split` column)."""
    split = ranked.attrs.get("split")
    if split is None and "split" in ranked.columns and len(ranked):
        split = str(ranked["split"].iloc[0])
    if split is None:
        raise DataError("the ranked table records no split; expected a scores.parquet written by `llmrec evaluate`")
    return str(split)


def stack_candidates(ranked: pd.DataFrame) -> np.ndarray:
    """[N, C] candidate ids in stored order; DataError when rows hold different numbers of candidates."""
    lists = [np.asarray(c, dtype=np.int64) for c in ranked["candidates"]]
    widths = {len(c) for c in lists}
    if len(widths) > 1:
        raise DataError(f"ranked rows hold different numbers of candidates ({sorted(widths)}); expected one "
                        f"candidate set size per split")
    return np.stack(lists) if lists else np.zeros((0, 0), dtype=np.int64)


def stack_scores(ranked: pd.DataFrame, column: str = "scores") -> np.ndarray:
    """[N, C] float64 scores of a score-mode table (one list per row, candidates in stored order)."""
    if column not in ranked.columns or ranked[column].isna().any():
        raise DataError(f"the ranked table has no `{column}` for every row; re-ranking and K > 1 need a "
                        f"score-mode ranking (`llmrec evaluate --mode score`)")
    rows = [np.asarray(s, dtype=np.float64) for s in ranked[column]]
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float64)


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
        ranked: rows of `rank_split` / `read_scores` (any mode).
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
