"""An encoder (SASRec, GRU4Rec, Caser, MostPop) as a `Ranker` of the one evaluator (`llmrec.evaluation`).

`EncoderRanker` scores each sample's stored candidates and ranks the whole catalog (`CatalogRanker`) with the
encoder's inner-product scores (`llmrec.encoders.evaluate.score_rows`). It reads the history `history` names
(as `train-encoder --eval-history`) and, in the catalog ranking, excludes the user's earlier items when
`exclude_seen` (`--exclude-seen`). Samples are scored in batches of `batch_size` sorted by history length (little
padding), as train-encoder's evaluation does, so `llmrec evaluate` on an encoder checkpoint, given the recorded
`eval_batch_size`, reproduces train-encoder's numbers exactly.

`evaluate_encoder` is train-encoder's evaluation of a split: the evaluator's `catalog_metrics` (full ranking,
stored candidates, final-position samples, fairness over popularity groups) plus `eval_seconds`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from llmrec.base.errors import DataError
from llmrec.data.dataset import ProcessedDataset
from llmrec.encoders.base import SequentialEncoder
from llmrec.encoders.evaluate import (
    FAIRNESS_GROUPS,
    EvalSet,
    HistorySource,
    eval_set_of,
    length_order,
    rank_rows_with_lists,
    score_rows,
)
from llmrec.evaluation.evaluator import catalog_metrics, rank_split
from llmrec.evaluation.fairness_metrics import rank_candidates
from llmrec.evaluation.groups import item_groups
from llmrec.evaluation.ranker import CandidateRanking, CatalogRanking


class EncoderRanker:
    """A sequential encoder behind the `Ranker` and `CatalogRanker` contracts (module docstring)."""

    mode = "score"

    def __init__(self, encoder: SequentialEncoder, data: ProcessedDataset, history: HistorySource = "auto",
                 exclude_seen: bool = True, batch_size: int = 128):
        self.encoder, self.data, self.history = encoder, data, history
        self.exclude_seen, self.batch_size = exclude_seen, batch_size
        self._eval_set: tuple[pd.DataFrame, EvalSet] | None = None  # the last samples' eval set, reused

    def eval_set(self, samples: pd.DataFrame) -> EvalSet:
        if self._eval_set is None or self._eval_set[0] is not samples:
            split = str(samples.attrs.get("split", "ranked"))
            self._eval_set = samples, eval_set_of(self.data, samples, split, self.encoder.max_length, self.history,
                                                  self.exclude_seen)
        return self._eval_set[1]

    def _batches(self, eval_set: EvalSet) -> list[np.ndarray]:
        order = length_order(eval_set)
        return [order[s:s + self.batch_size] for s in range(0, len(eval_set), self.batch_size)]

    @torch.no_grad()
    def score_candidates(self, samples: pd.DataFrame, label: str = "ranking") -> CandidateRanking:
        """[B, C] inner-product scores of the stored candidates; `chosen` = the best (ties: stored order). A row
        with fewer candidates than C is padded with -inf scores (`ranked_table` keeps the row's own)."""
        eval_set = self.eval_set(samples)
        candidates = eval_set.candidates
        if candidates is None:
            raise DataError(f"{self.data.root or 'dataset'}: {eval_set.split} stores no candidates to rank")
        scores = np.zeros(candidates.shape, dtype=np.float64)  # [N, C], -inf where a row has fewer candidates
        with _eval_mode(self.encoder):
            for rows in self._batches(eval_set):
                _, cand_scores = score_rows(self.encoder, eval_set, rows)
                scores[rows] = cand_scores.double().cpu().numpy()  # type: ignore[union-attr]
        return CandidateRanking(scores, rank_candidates(scores, candidates)[:, 0])

    @torch.no_grad()
    def rank_catalog(self, samples: pd.DataFrame, top: int) -> CatalogRanking:
        """The target's rank among every item (padding and, with `exclude_seen`, earlier items excluded) and
        the `top` best items, ties by item id."""
        eval_set = self.eval_set(samples)
        ranks = torch.empty(len(eval_set), dtype=torch.long)
        top_items = np.zeros((len(eval_set), min(top, self.encoder.n_items + 1)), dtype=np.int64)
        with _eval_mode(self.encoder):
            for rows in self._batches(eval_set):
                r = rank_rows_with_lists(self.encoder, eval_set, rows, top=top)
                ranks[torch.as_tensor(rows)] = r.full_ranks
                top_items[rows] = r.full_top
        return CatalogRanking(ranks, top_items)


class _eval_mode:
    """Context: the encoder in eval mode, its training flag restored afterwards."""

    def __init__(self, encoder: SequentialEncoder):
        self.encoder, self.was_training = encoder, encoder.training

    def __enter__(self) -> None:
        self.encoder.eval()

    def __exit__(self, *exc: object) -> None:
        self.encoder.train(self.was_training)


def evaluate_encoder(encoder: SequentialEncoder, data: ProcessedDataset, split: str,
                     history: HistorySource = "auto", exclude_seen: bool = True, batch_size: int = 128
                     ) -> dict[str, Any]:
    """train-encoder's metrics of `split` (every sample): `catalog_metrics` with popularity-group fairness, and
    `eval_seconds`."""
    start = time.perf_counter()
    evaluation = rank_split(EncoderRanker(encoder, data, history, exclude_seen, batch_size), data, split)
    groups = item_groups(data, "popularity", n_groups=min(FAIRNESS_GROUPS, data.n_items))
    out = catalog_metrics(evaluation, data, groups)
    out["eval_seconds"] = time.perf_counter() - start
    return out
