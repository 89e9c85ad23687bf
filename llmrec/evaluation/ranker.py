"""The `Ranker` contract: what the one evaluator (`llmrec.evaluation.evaluator`) needs from a model.

Every model is evaluated the same way: the evaluator draws the samples (a seeded subset of a split), hands them to
the ranker, and turns what comes back into the ranked table (`llmrec.evaluation.scores`) and its metrics.

- `Ranker.score_candidates(samples, label) -> CandidateRanking`: for each sample, its stored candidates
  (`samples["candidates"]`, stored order) ranked. A ranker whose `mode` is `score` (every encoder, MostPop, the
  LLM in score mode) returns `scores` [B, C], one float per candidate, and `chosen` = its best-scored candidate. A
  one-choice mode (`generate`, `constrained`: LLM decoding, `scores.CHOICE_MODES`) returns `scores = None` and
  `chosen` = the candidate its output named, `scores.INVALID` when it named none: validity is `chosen != INVALID`,
  so `hr@1_valid` and `valid_ratio` come from the same table. `texts` are the decoded answers (or None).
  The ranker batches as it needs (prompts per batch, sequences per batch) and reports progress under `label`.
- `CatalogRanker` (optional capability): `rank_catalog(samples, top) -> CatalogRanking` ranks the WHOLE catalog
  for each sample (the target's 0-based rank and the `top` best items). Encoders and MostPop have it; an LLM
  cannot rank a catalog (it scores the titles it is shown), so the evaluator reports `full/...` metrics only for
  rankers that have it (`isinstance(ranker, CatalogRanker)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch


@dataclass
class CandidateRanking:
    """What a ranker returns for B samples (see the module docstring)."""

    scores: np.ndarray | None  # [B, C] one score per stored candidate (score mode), None for one-choice modes
    chosen: np.ndarray  # [B] int64 item id of the top / named candidate; scores.INVALID = no valid output
    texts: list[str] | None = None  # [B] decoded answers (generate mode)


@dataclass
class CatalogRanking:
    """Full-catalog ranking of B samples: ties count against the model (`metrics.target_ranks`)."""

    target_ranks: torch.Tensor  # [B] long, 0-based rank of the target among every rankable item
    top_items: np.ndarray  # [B, K] best K items, ties by item id; 0 where fewer than K items were rankable


@runtime_checkable
class Ranker(Protocol):
    """Ranks each sample's stored candidates."""

    mode: str  # `score`, `generate` or `constrained` (`llmrec.evaluation.scores.MODES`)

    def score_candidates(self, samples: pd.DataFrame, label: str) -> CandidateRanking:
        """Rows of a split (user_id, position, target, candidates, history, is_last) -> their ranking."""
        ...


@runtime_checkable
class CatalogRanker(Ranker, Protocol):
    """A ranker that can also rank the whole catalog."""

    def rank_catalog(self, samples: pd.DataFrame, top: int) -> CatalogRanking:
        """The target's rank among every item and the `top` best items, for each sample."""
        ...
