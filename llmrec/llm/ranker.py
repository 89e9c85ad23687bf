"""The LLM recommender as a `Ranker` of the one evaluator (`llmrec.evaluation`), in its three modes.

`LLMRanker` builds each sample's prompt (`llmrec.llm.datamodule.prompt_loader`, `batch_size` prompts per batch)
and ranks its stored candidates with `llmrec.llm.ranking.rank`: in `score` mode every candidate gets a score
(`scores` [B, C], `chosen` = the best-scored candidate); `generate` and `constrained` are LLM decoding modes that
make one choice per sample (`scores` None, `chosen` = the candidate named, `INVALID` when the output named none;
the decoded text is kept in generate mode). An LLM cannot rank the whole catalog (it scores the titles its
prompt shows), so it is no `CatalogRanker`: its metrics are those of the ranked table.

`evaluate_split` is what train-llm, train-sdpo and `llmrec evaluate` report for a checkpoint: `rank_split` with
an `LLMRanker`, then `ranking_metrics` (keys in `llmrec.evaluation.ranked_metrics` and `.evaluator`); given a
`Launch` of several processes (`llmrec evaluate --devices N`), the ranker is sharded over them
(`llmrec.training.sharding`) and the table is the one a single process makes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from llmrec.base.progress import track
from llmrec.data.dataset import ProcessedDataset
from llmrec.evaluation.evaluator import ranking_metrics, rank_split
from llmrec.evaluation.ranker import CandidateRanking, Ranker
from llmrec.evaluation.scores import INVALID, Mode
from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.hybrid import HybridLM
from llmrec.llm.ranking import MAX_NEW_TOKENS, rank
from llmrec.training.sharding import Launch, ShardedRanker


class LLMRanker:
    """A `HybridLM` behind the `Ranker` contract (module docstring)."""

    def __init__(self, lm: HybridLM, mode: Mode = "score", batch_size: int = 8,
                 max_new_tokens: int = MAX_NEW_TOKENS):
        self.lm, self.mode, self.batch_size, self.max_new_tokens = lm, mode, batch_size, max_new_tokens

    def score_candidates(self, samples: pd.DataFrame, label: str = "ranking") -> CandidateRanking:
        return self._rank(samples, label)

    def rank_rows(self, samples: pd.DataFrame) -> CandidateRanking:
        """`score_candidates` without progress lines: one work item of a sharded ranking
        (`llmrec.training.sharding.ShardedRanker`), `batch_size` consecutive samples at most."""
        return self._rank(samples, None)

    def _rank(self, samples: pd.DataFrame, label: str | None) -> CandidateRanking:
        lm = self.lm
        device = next(lm.parameters()).device
        loader = prompt_loader(samples, lm.builder, self.batch_size, with_answer=False,
                               summary_max_length=getattr(lm.encoder, "max_length", 50))
        chosen: list[int] = []
        scores: list[list[float]] = []
        texts: list[str] = []
        lm.eval()
        batches = loader if label is None else track(loader, label, total=len(samples), unit="samples",
                                                     size=lambda b: b.input_ids.shape[0])
        for batch in batches:
            result = rank(lm, batch.to(device), self.mode, max_new_tokens=self.max_new_tokens)
            chosen += [INVALID if c is None else int(c) for c in result.chosen]
            if result.scores is not None:
                scores += result.scores.float().cpu().tolist()
            texts += result.texts or [""] * len(result.chosen)
        return CandidateRanking(np.asarray(scores, dtype=np.float64) if self.mode == "score" else None,
                                np.asarray(chosen, dtype=np.int64), texts)


def evaluate_split(lm: HybridLM, data: ProcessedDataset, split: str, mode: Mode = "score", batch_size: int = 8,
                   max_samples: int | None = None, seed: int = 0, max_new_tokens: int = MAX_NEW_TOKENS,
                   launch: Launch | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """(metrics, ranked table) of (a seeded subset of `max_samples` samples of) `split`; the metrics also carry
    seed, protocol, mode, split, time and users/s. With a `launch` of several processes the samples are split
    over them in batches of `batch_size` (`llmrec.training.sharding.ShardedRanker`) and every process returns
    the whole table, equal to one process's."""
    ranker: Ranker = LLMRanker(lm, mode, batch_size, max_new_tokens)
    if launch is not None and launch.sharded:
        ranker = ShardedRanker(ranker, batch_size, launch, model=lm)
    evaluation = rank_split(ranker, data, split, max_samples, seed)
    return ranking_metrics(evaluation, data, seed), evaluation.table
