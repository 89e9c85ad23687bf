"""The ranked table: one row per ranked sample, the columns of `scores.parquet` (one typed definition), and its
I/O beside `metrics.json`.

Every model that ranks a split's stored candidates (an encoder, MostPop, an LLM in any mode) leaves the same
table (`llmrec.evaluation.evaluator`), so re-ranking, fairness and reports reuse a model's output without running
it again, whatever the model. `COLUMNS` lists the columns in order with their types; `scores.parquet` adds
`mode` and `split` (`FILE_COLUMNS`) so the file explains itself, and a re-ranked table adds `model_scores` (the
scores before re-ranking, `llmrec.fairness.rerank_command`).

`mode` is how the ranking was made: `score` (every candidate scored: `scores` holds one float per candidate and
`chosen` is the best-scored one) or one of the `CHOICE_MODES` (`generate`, `constrained`: the LLM decodes one
answer per sample, `scores` is null and `chosen` is the item it named, `INVALID` when it named none).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from llmrec.base.atomic import atomic_write, atomic_write_text, mark_output
from llmrec.base.errors import CheckpointError, DataError
from llmrec.base.files import read_parquet
from llmrec.data.sampling import LAST_COLUMN

Mode = Literal["score", "generate", "constrained"]
MODES: tuple[str, ...] = ("score", "generate", "constrained")
CHOICE_MODES: tuple[str, ...] = ("generate", "constrained")
SCORES_FILE = "scores.parquet"
METRICS_FILE = "metrics.json"
INVALID = -1  # `chosen` of an output that named no candidate


@dataclass(frozen=True)
class Column:
    """One column of the ranked table: its name, its type (pandas / parquet) and what a row holds there."""

    name: str
    dtype: str
    meaning: str


COLUMNS: tuple[Column, ...] = (
    Column("user_id", "int64", "the sample's user"),
    Column("position", "int64", "the target's position in the user's sequence"),
    Column("target", "int64", "the item the user took next"),
    Column("candidates", "list<int64>", "the stored candidates, in stored order (rows may differ in length)"),
    Column("scores", "list<float64> | null", "one score per candidate, stored order (score mode; null otherwise)"),
    Column("chosen", "int64", f"the best-scored or decoded candidate; {INVALID} = the output named none"),
    Column(LAST_COLUMN, "bool", "the user's final sample in the WHOLE split (`llmrec.data.sampling`)"),
    Column("text", "string", "the decoded answer (generate mode; empty otherwise)"),
)
FILE_COLUMNS: tuple[Column, ...] = COLUMNS + (
    Column("mode", "string", f"how the ranking was made: one of {', '.join(MODES)}"),
    Column("split", "string", "the split the samples are from"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)


def ranked_table(samples: pd.DataFrame, scores: np.ndarray | None, chosen: np.ndarray, texts: list[str] | None,
                 mode: str, split: str) -> pd.DataFrame:
    """The ranked table of `samples` (rows of a split with user_id, position, target, candidates and
    `is_last`, as `llmrec.data.sampling.ranked_subset` returns them): `scores` [N, C] (score mode; None for a
    one-choice mode; a row with fewer than C candidates keeps its first scores), `chosen` [N] item ids
    (`INVALID` = none), `texts` (None = empty). `mode` and `split` are kept as `attrs`."""
    n = len(samples)
    candidates = [list(map(int, c)) for c in samples["candidates"]]
    out = pd.DataFrame({
        "user_id": samples["user_id"].astype(np.int64).to_numpy(),
        "position": samples["position"].astype(np.int64).to_numpy(),
        "target": samples["target"].astype(np.int64).to_numpy(),
        "candidates": candidates,
        "scores": ([list(map(float, s[:len(c)])) for s, c in zip(scores, candidates)] if scores is not None
                   else [None] * n),
        "chosen": np.asarray(chosen, dtype=np.int64).reshape(n),
        LAST_COLUMN: samples[LAST_COLUMN].to_numpy(),
        "text": list(texts) if texts is not None else [""] * n,
    })
    out.attrs.update({"mode": mode, "split": split})
    return out


def table_mode(ranked: pd.DataFrame) -> str:
    """The ranking mode of a ranked table (`attrs`, else the `mode` column)."""
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


def padded_scores(ranked: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """[N, C] candidate ids padded with 0 (never an item) and [N, C] float64 scores padded with -inf (ranked
    last), C = the most candidates of a row: a score-mode table whose rows may hold different numbers."""
    width = max((len(c) for c in ranked["candidates"]), default=0)
    candidates = np.zeros((len(ranked), width), dtype=np.int64)
    scores = np.full((len(ranked), width), float("-inf"), dtype=np.float64)
    for i, (c, s) in enumerate(zip(ranked["candidates"], ranked["scores"])):
        candidates[i, :len(c)] = np.asarray(c, dtype=np.int64)
        scores[i, :len(c)] = np.asarray(s, dtype=np.float64)
    return candidates, scores


def write_scores(folder: Path, ranked: pd.DataFrame) -> Path:
    """`scores.parquet` (atomic) with the mode and split as columns, so the file explains itself."""
    table = ranked.assign(mode=ranked.attrs.get("mode"), split=ranked.attrs.get("split"))
    table.attrs = {}
    return atomic_write(Path(folder) / SCORES_FILE, lambda tmp: table.to_parquet(tmp, index=False))


def write_evaluation(folder: Path, metrics: dict[str, Any], ranked: pd.DataFrame, nested: bool = False) -> Path:
    """`metrics.json` and `scores.parquet` of one ranked split into `folder` (created). `nested=True` marks the
    folder as an `llmrec evaluate` output of its own, for a ranking written inside a checkpoint (train-llm's and
    train-sdpo's `eval-test-score/`), so that `llmrec evaluate` may later replace it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    write_scores(folder, ranked)
    if nested:
        mark_output(folder, "evaluate")
    return folder


def read_scores(folder: Path) -> pd.DataFrame:
    """The rows `write_scores` wrote (the `mode` and `split` columns kept, also set as `attrs`)."""
    path = Path(folder) / SCORES_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: expected a folder written by `llmrec evaluate`")
    table = read_parquet(path, "re-run `llmrec evaluate`", CheckpointError)
    if len(table):
        table.attrs.update({"mode": str(table["mode"].iloc[0]), "split": str(table["split"].iloc[0])})
    return table
