"""Ranking a split's stored candidates with an LLM recommender, and the metrics of docs/design.md §8.

`rank_split` runs the model once over (a seeded subset of) a split and returns one row per ranked sample —
user, position, target, candidate ids in stored order, each candidate's score (score mode) or the chosen item
(generate / constrained; -1 = invalid output), whether the row is the user's final sample in the FULL split,
and the decoded text — so that re-ranking and reports reuse the model's output without running it again
(`write_scores` keeps it as `scores.parquet` beside `metrics.json`). `split_metrics` computes:
`hr@1` (correct / all samples), `hr@1_valid` (correct / valid outputs), `valid_ratio`, `candidates/ndcg@5`, and,
for score mode, `candidates/hr@k` and `candidates/ndcg@k` for k in 1, 5, 10. `hr@1_last` (with `n_users_last`)
is hr@1 over the rows that are their user's final sample in the full split (`llmrec.data.sampling`), reported
when the split holds several samples per user. `generate` and `constrained` make one choice per sample: the
chosen item is ranked first and nothing else is, so for them `candidates/ndcg@5` equals `hr@1`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from llmrec.base.atomic import atomic_write
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.sampling import LAST_COLUMN, ranked_subset
from llmrec.evaluation.metrics import candidate_metrics, choice_metrics, target_ranks
from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.hybrid import HybridLM
from llmrec.llm.ranking import MAX_NEW_TOKENS, Mode, rank
from llmrec.base.progress import track

SCORES_FILE = "scores.parquet"
INVALID = -1


def rank_split(lm: HybridLM, data: ProcessedDataset, split: str, mode: Mode = "score", batch_size: int = 8,
               max_samples: int | None = None, seed: int = 0, max_new_tokens: int = MAX_NEW_TOKENS
               ) -> pd.DataFrame:
    """Rank every (or a seeded subset of) sample of `split`; one row per sample (see the module docstring)."""
    samples = ranked_subset(data.split(split), max_samples, seed)
    device = next(lm.parameters()).device
    loader = prompt_loader(samples, lm.builder, batch_size, with_answer=False,
                           summary_max_length=getattr(lm.encoder, "max_length", 50))
    chosen: list[int] = []
    scores: list[list[float]] = []
    texts: list[str] = []
    lm.eval()
    for batch in track(loader, f"ranking {split} ({mode})", total=len(samples), unit="samples",
                       size=lambda b: b.input_ids.shape[0]):
        result = rank(lm, batch.to(device), mode, max_new_tokens=max_new_tokens)
        chosen += [INVALID if c is None else int(c) for c in result.chosen]
        if result.scores is not None:
            scores += result.scores.float().cpu().tolist()
        texts += result.texts or [""] * len(result.chosen)
    out = pd.DataFrame({
        "user_id": samples["user_id"].astype(np.int64).to_numpy(),
        "position": samples["position"].astype(np.int64).to_numpy(),
        "target": samples["target"].astype(np.int64).to_numpy(),
        "candidates": [list(map(int, c)) for c in samples["candidates"]],
        "scores": scores if mode == "score" else [None] * len(samples),
        "chosen": np.asarray(chosen, dtype=np.int64),
        LAST_COLUMN: samples[LAST_COLUMN].to_numpy(),
        "text": texts,
    })
    out.attrs.update({"mode": mode, "split": split})
    return out


def hits(ranked: pd.DataFrame) -> np.ndarray:
    """[N] bool: the model's top choice is the target."""
    return ranked["chosen"].to_numpy() == ranked["target"].to_numpy()


def split_metrics(ranked: pd.DataFrame, mode: Mode) -> dict[str, Any]:
    """Metrics of docs/design.md §8 from `rank_split`'s rows."""
    if mode == "score":
        if len(ranked):
            scores = torch.tensor(np.stack([np.asarray(s, dtype=np.float32) for s in ranked["scores"]]))
            cands = torch.tensor(np.stack([np.asarray(c, dtype=np.int64) for c in ranked["candidates"]]))
            target_index = (cands == torch.tensor(ranked["target"].to_numpy())[:, None]).long().argmax(1)
            r = target_ranks(scores, target_index)
        else:
            r = torch.zeros(0, dtype=torch.long)
        m = candidate_metrics(r)
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


def evaluate_split(lm: HybridLM, data: ProcessedDataset, split: str, mode: Mode = "score", batch_size: int = 8,
                   max_samples: int | None = None, seed: int = 0, max_new_tokens: int = MAX_NEW_TOKENS,
                   ) -> tuple[dict[str, Any], pd.DataFrame]:
    """(metrics, ranked rows) of one split; metrics also carry seed, protocol, mode, split, time and users/s."""
    started = time.perf_counter()
    ranked = rank_split(lm, data, split, mode, batch_size, max_samples, seed, max_new_tokens)
    seconds = time.perf_counter() - started
    metrics = split_metrics(ranked, mode)
    metrics.update({"seed": seed, "protocol": data.protocol, "mode": mode, "split": split,
                    "eval_positions": data.meta.get("eval_positions"), "seconds": seconds,
                    "users_per_second": len(ranked) / seconds if seconds > 0 else None})
    return metrics, ranked


def write_scores(folder: Path, ranked: pd.DataFrame) -> Path:
    """`scores.parquet` (atomic) with the mode and split as columns, so the file explains itself."""
    table = ranked.assign(mode=ranked.attrs.get("mode"), split=ranked.attrs.get("split"))
    table.attrs = {}
    return atomic_write(Path(folder) / SCORES_FILE, lambda tmp: table.to_parquet(tmp, index=False))


def write_evaluation(folder: Path, metrics: dict[str, Any], ranked: pd.DataFrame, nested: bool = False) -> Path:
    """`metrics.json` and `scores.parquet` of one ranked split into `folder` (created). `nested=True` marks the
    folder as an `llmrec evaluate` output of its own, for a ranking written inside a checkpoint (train-llm's and
    train-sdpo's `eval-test-score/`), so that `llmrec evaluate` may later replace it."""
    from llmrec.base.atomic import atomic_write_text, mark_output

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_scores(folder, ranked)
    if nested:
        mark_output(folder, "evaluate")
    return folder


def read_scores(folder: Path) -> pd.DataFrame:
    """The rows `write_scores` wrote (the `mode` and `split` columns kept, also set as `attrs`)."""
    from llmrec.base.errors import CheckpointError

    path = Path(folder) / SCORES_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: expected a folder written by `llmrec evaluate`")
    try:
        table = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise CheckpointError(f"{path}: damaged or not a parquet file ({str(e).splitlines()[0]}); re-run "
                              f"`llmrec evaluate`") from None
    if len(table):
        table.attrs.update({"mode": str(table["mode"].iloc[0]), "split": str(table["split"].iloc[0])})
    return table
