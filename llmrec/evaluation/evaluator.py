"""The one evaluator: a `Ranker` (`llmrec.evaluation.ranker`) and a split in, the ranked table and its metrics
out, for every model (encoders, MostPop, the LLM in any mode).

`rank_split` draws the samples (`llmrec.data.sampling.ranked_subset`: the whole split, or a seeded subset whose
rows are the same for every model given the same size and seed), has the ranker rank their stored candidates,
and, when the ranker can rank the whole catalog (`CatalogRanker`), has it do that too. What it returns holds
the ranked table (`llmrec.evaluation.scores`, written as `scores.parquet`) and the catalog ranking. Two views
of the metrics:
- `ranking_metrics`: the ranked table's accuracy (`ranked_metrics.split_metrics`: `hr@1`, `hr@1_valid`,
  `valid_ratio`, `candidates/hr@k`, `candidates/ndcg@k`, ...) and the facts of the run (seed, protocol, mode,
  split, eval_positions, seconds, users_per_second); what `llmrec evaluate`, `train-llm` and `train-sdpo` report.
- `catalog_metrics`: what `train-encoder` reports for a split (docs/design.md §8): full-catalog `full/hr@k`,
  `full/ndcg@k` (k in 5, 10, 20), `candidates/hr@k`, `candidates/ndcg@k` (k in 1, 5, 10), on an `all` eval set
  (meta `eval_positions == "all"`, valid or test) the final-position samples' `full/hr@10_last`,
  `full/ndcg@10_last`, `candidates/hr@k_last`, `candidates/ndcg@k_last` (k in 1, 5) and `n_samples_last`, and,
  given the item groups, the fairness metrics of both rankings: `full/mgu@k`, `full/dgu@k`, `full/gu@k/<group>`
  for K in 1, 5, 10, 20 of the catalog ranking, `candidates/...` for K in 1, 5, 10 of the candidates (the same
  numbers as `ranked_metrics.ranked_fairness`'s `mgu@k`; rows with fewer candidates than others are padded with
  id 0, which belongs to no group), and `gh/<group>`. What is recommended at K: the K
  best-scored items, ties broken by item id (catalog) or by the stored candidate order (candidates); items the
  catalog ranking excludes (padding, seen items) are never counted, even when fewer than K items remain.
Fairness metrics always use the samples' stored `history` column, whatever history a model reads, so every model
ranked on a split is compared with the same histories.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from llmrec.base.errors import DataError
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.sampling import LAST_COLUMN, ranked_subset
from llmrec.evaluation.fairness_metrics import (
    FAIRNESS_KS,
    fairness_metrics,
    group_share_of_history,
    rank_candidates,
)
from llmrec.evaluation.groups import ItemGroups
from llmrec.evaluation.metrics import candidate_metrics
from llmrec.evaluation.ranked_metrics import candidate_ranks, split_metrics
from llmrec.evaluation.ranker import CatalogRanker, CatalogRanking, Ranker
from llmrec.evaluation.scores import padded_scores, ranked_table, table_mode

FULL_KS: tuple[int, ...] = (5, 10, 20)
CANDIDATE_KS: tuple[int, ...] = (1, 5, 10)
FAIRNESS_FULL_KS: tuple[int, ...] = (1, 5, 10, 20)


@dataclass
class Evaluation:
    """A ranked split: the samples, their ranked table, and the catalog ranking (None: the ranker has none)."""

    samples: pd.DataFrame  # the ranked rows of the split, in table order
    table: pd.DataFrame  # `llmrec.evaluation.scores` columns, mode and split in `attrs`
    catalog: CatalogRanking | None
    seconds: float  # wall time of the ranking

    @property
    def has_candidates(self) -> bool:
        return bool(len(self.table)) and all(len(c) for c in self.table["candidates"])


def rank_split(ranker: Ranker, data: ProcessedDataset, split: str, max_samples: int | None = None, seed: int = 0
               ) -> Evaluation:
    """Rank every (or a seeded subset of `max_samples`) sample of `split` with `ranker` (module docstring)."""
    samples = ranked_subset(data.split(split), max_samples, seed)  # type: ignore[arg-type]
    samples.attrs["split"] = split  # so a ranker's errors can name it
    started = time.perf_counter()
    ranking = ranker.score_candidates(samples, f"ranking {split} ({ranker.mode})")
    top = max(FULL_KS + FAIRNESS_FULL_KS)
    catalog = ranker.rank_catalog(samples, top) if isinstance(ranker, CatalogRanker) else None
    seconds = time.perf_counter() - started
    table = ranked_table(samples, ranking.scores, ranking.chosen, ranking.texts, ranker.mode, split)
    return Evaluation(samples=samples, table=table, catalog=catalog, seconds=seconds)


def ranking_metrics(evaluation: Evaluation, data: ProcessedDataset, seed: int) -> dict[str, Any]:
    """Accuracy of the ranked table and the run's facts (the metrics.json of `llmrec evaluate`)."""
    table = evaluation.table
    mode = table_mode(table)
    metrics = split_metrics(table, mode)
    seconds = evaluation.seconds
    metrics.update({"seed": seed, "protocol": data.protocol, "mode": mode, "split": table.attrs["split"],
                    "eval_positions": data.meta.get("eval_positions"), "seconds": seconds,
                    "users_per_second": len(table) / seconds if seconds > 0 else None})
    return metrics


def last_mask(evaluation: Evaluation, data: ProcessedDataset) -> np.ndarray | None:
    """[N] bool final-position samples on an `all` eval set (valid or test), else None."""
    if data.meta.get("eval_positions") == "all" and evaluation.table.attrs["split"] in ("valid", "test"):
        return evaluation.samples[LAST_COLUMN].to_numpy().astype(bool)
    return None


def rank_metrics(full_ranks: torch.Tensor, cand_ranks: torch.Tensor | None, last: np.ndarray | None
                 ) -> dict[str, Any]:
    """`full/hr@k`, `full/ndcg@k` from 0-based full-catalog target ranks [N], `candidates/...` from candidate ranks
    [N] (None: no candidates), and, given the [N] bool final-position mask of an `all` eval set, `full/ndcg@10_last`,
    `candidates/hr@1_last` ... on those samples with `n_samples_last`: what train-encoder reports for a split, in
    its per-epoch validation too (`llmrec.encoders.evaluate.metrics_from_ranks`)."""
    out: dict[str, Any] = candidate_metrics(full_ranks, prefix="full/", ks=FULL_KS)
    if cand_ranks is not None:
        out.update(candidate_metrics(cand_ranks, prefix="candidates/", ks=CANDIDATE_KS))
    if last is not None:
        mask = torch.as_tensor(last)
        sub = candidate_metrics(full_ranks[mask], prefix="full/", ks=(10,))
        out.update({f"{k}_last": v for k, v in sub.items()})
        if cand_ranks is not None:
            sub = candidate_metrics(cand_ranks[mask], prefix="candidates/", ks=(1, 5))
            out.update({f"{k}_last": v for k, v in sub.items()})
        out["n_samples_last"] = int(mask.sum())
    return out


def catalog_metrics(evaluation: Evaluation, data: ProcessedDataset, groups: ItemGroups | None) -> dict[str, Any]:
    """train-encoder's metrics of a split (module docstring); DataError when the ranker ranked no catalog."""
    catalog = evaluation.catalog
    if catalog is None:
        raise DataError("full-catalog metrics need a ranker that ranks the whole catalog (an encoder or MostPop)")
    full_ranks = catalog.target_ranks
    cand_ranks = candidate_ranks(evaluation.table) if evaluation.has_candidates else None
    out: dict[str, Any] = rank_metrics(full_ranks, cand_ranks, last_mask(evaluation, data))
    out["n_samples"] = len(evaluation.table)
    if groups is None:
        return out
    histories = [np.asarray(h, dtype=np.int64) for h in evaluation.samples["history"]]
    ks = [k for k in FAIRNESS_FULL_KS if k <= catalog.top_items.shape[1]]
    out.update({f"full/{k}": v for k, v in fairness_metrics(catalog.top_items, histories, groups, ks).items()})
    if cand_ranks is not None:  # as `ranked_fairness` ranks a table, rows with fewer candidates padded with 0
        candidates, scores = padded_scores(evaluation.table)
        ks = [k for k in FAIRNESS_KS if k <= candidates.shape[1]]
        fair = fairness_metrics(rank_candidates(scores, candidates), histories, groups, ks)
        out.update({f"candidates/{k}": v for k, v in fair.items()})
    for name, share in zip(groups.names, group_share_of_history(histories, groups).tolist()):
        out[f"gh/{name}"] = float(share)
    return out
