"""`llmrec rerank`: IFairLRS post-learning re-ranking (docs/design.md §7) of saved score-mode rankings; no model runs.

    llmrec rerank --scores CKPT [--alpha auto|X] [--grouping popularity|genre] [--data DIR] [--out DIR]

Needs two score-mode rankings of one LLM checkpoint, as `llmrec evaluate --mode score` writes them:
`CKPT/eval-valid-score/` (VALID: the group adjustment U_G is measured there and, with `--alpha auto`, alpha is
chosen there) and `CKPT/eval-test-score/` (TEST: the ranking the adjustment is applied to; `train-llm` writes it).
`--scores` may also name one of these two folders (the other is found through the checkpoint recorded in its
config.yaml). The data folder is the one recorded in their config.yaml (or the checkpoint's) unless `--data`.

Steps (`llmrec.fairness.rerank`): U_G = sum_K (K / sum K') GU(G)@K on valid, divided by max_G |U_G|; each
item's adjustment is the mean of U over its groups; every sample's scores are standardised over its candidates
(z-scores: the model's scores are summed log-probabilities whose scale differs by title length and sample, so
alpha = 1 moves an item by at most one standard deviation of its own sample's scores) and
final = z - alpha * adjustment. `--alpha auto` tries `--alpha-grid` on valid and keeps the alpha that lowers
valid MGU (mean over `--objective-ks`) most while valid hr@1 stays within `--max-rel-drop` (relative) of
alpha = 0; a given alpha is used as it is (the valid table still shows what it does there).

Writes into `--out` (default CKPT/rerank-GROUPING), atomically: `metrics.json` (the re-ranked TEST metrics at
the top level — hr@1, candidates/hr@k, candidates/ndcg@k, mgu@k, dgu@k, gu@k/<group>, gh/<group> — the same
before re-ranking under `before`, valid before/after under `valid`, the chosen `alpha`, the alpha `grid` table,
the `groups` with their edges and the `group_adjustment`), `scores.parquet` (the test rows with the re-ranked
`scores`, the model's under `model_scores`, and `chosen` = the new top item) and the resolved `config.yaml`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from llmrec.base.atomic import atomic_write_text, check_output, output_directory
from llmrec.base.config import check_config, load_yaml_mapping, option, save_config
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.fingerprint import split_mismatch
from llmrec.base.errors import CheckpointError, ConfigError, DataError
from llmrec.evaluation.ranked_metrics import recommended_items, sample_histories, table_metrics
from llmrec.evaluation.scores import (
    SCORES_FILE,
    read_scores,
    stack_candidates,
    stack_scores,
    table_mode,
    table_split,
    write_scores,
)
from llmrec.evaluation.groups import item_groups
from llmrec.evaluation.fairness_metrics import FAIRNESS_KS, check_k
from llmrec.fairness.rerank import (
    DEFAULT_ALPHAS,
    choose_alpha,
    item_adjustment,
    rerank_scores,
)

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
MODEL_SCORES = "model_scores"


@dataclass
class RerankConfig:
    scores: Path | None = option(None, "LLM checkpoint folder holding eval-valid-score/ and eval-test-score/ "
                                       "(written by `llmrec evaluate --mode score`), or one of those two folders")
    alpha: str = option("auto", "re-ranking strength: a number >= 0, or `auto` (chosen on valid from --alpha-grid)")
    grouping: Literal["popularity", "genre"] = option("popularity", "item groups: popularity (equal-size groups "
                                                                     "by training interactions) or genre")
    n_groups: int = option(5, "number of popularity groups", min=1)
    split_multi: bool = option(False, "genre grouping: a multi-genre item counts 1/|genres| in each genre "
                                      "(default: once in each)")
    data: Path | None = option(None, "processed dataset folder (default: the one recorded in the scores' "
                                     "config.yaml)")
    out: Path | None = option(None, "output folder (default: CKPT/rerank-GROUPING)")
    valid_scores: Path | None = option(None, "valid score-mode folder (default: CKPT/eval-valid-score)")
    alpha_grid: list[float] = option(factory=lambda: list(DEFAULT_ALPHAS), help="alphas `auto` tries on valid",
                                     min=0)
    max_rel_drop: float = option(0.05, "`auto`: largest relative drop of valid hr@1 allowed", min=0, max=1,
                                 max_exclusive=True)
    ks: list[int] = option(factory=lambda: list(FAIRNESS_KS), help="K at which GU is measured (U_G and the "
                                                                   "reported mgu@k, dgu@k)", min=1)
    objective_ks: list[int] = option(factory=lambda: [5, 10], help="`auto`: the K whose valid MGU is lowered",
                                     min=1)


def parse_alpha(value: str) -> float | None:
    """`auto` -> None; a number >= 0 -> float; anything else is a one-line ConfigError."""
    text = str(value).strip()
    if text.lower() == "auto":
        return None
    try:
        alpha = float(text)
    except ValueError:
        raise ConfigError(f"option --alpha: got {value!r}, expected `auto` or a number >= 0") from None
    if not math.isfinite(alpha) or alpha < 0:
        raise ConfigError(f"re-ranking alpha must be >= 0, got {value}")
    return alpha


# ------------------------------------------------------------------------------------------------ inputs
def _recorded(folder: Path, key: str) -> Path | None:
    """A path recorded under `key` in `folder/config.yaml` (None when there is none)."""
    f = folder / "config.yaml"
    if not f.is_file():
        return None
    value = load_yaml_mapping(f).get(key)
    return Path(value) if value else None


def _evaluate_hint(ckpt: Path, data: Path | None, split: str) -> str:
    return (f"run `llmrec evaluate --ckpt {ckpt} --data {data or 'DATA'} --split {split} --mode score` first "
            f"(it writes {ckpt / f'eval-{split}-score'})")


@dataclass
class RerankInputs:
    ckpt: Path
    valid_dir: Path
    test_dir: Path
    data_dir: Path


def locate_inputs(config: RerankConfig) -> RerankInputs:
    """The checkpoint, the valid and test score folders and the data folder named (or implied) by `config`."""
    if config.scores is None:
        raise ConfigError("rerank needs --scores DIR (an LLM checkpoint folder with eval-valid-score/ and "
                          "eval-test-score/)")
    given = Path(config.scores)
    if not given.is_dir():
        raise ConfigError(f"--scores {given} does not exist; expected an LLM checkpoint folder or an "
                          f"`llmrec evaluate` output folder")
    valid_dir = test_dir = None
    if (given / SCORES_FILE).is_file():  # one evaluation folder: find the checkpoint and the other split
        split = table_split(read_scores(given))
        if split not in ("valid", "test"):
            raise DataError(f"{given / SCORES_FILE} holds the {split} split; re-ranking needs valid and test")
        ckpt = _recorded(given, "ckpt") or given.parent
        valid_dir, test_dir = (given, None) if split == "valid" else (None, given)
    else:
        ckpt = given
    # imported here: llmrec.llm pulls in transformers, needed only once the arguments look right
    from llmrec.llm.checkpoint import read_facts

    read_facts(ckpt)  # a clear error when it is not an LLM checkpoint
    test_dir = test_dir or ckpt / "eval-test-score"
    valid_dir = Path(config.valid_scores) if config.valid_scores is not None else (valid_dir or
                                                                                 ckpt / "eval-valid-score")
    data_dir = Path(config.data) if config.data is not None else None
    for d in (test_dir, valid_dir, ckpt):
        data_dir = data_dir or _recorded(d, "data")
    if not (test_dir / SCORES_FILE).is_file():
        raise CheckpointError(f"{test_dir / SCORES_FILE} is missing: re-ranking is applied to the test ranking; "
                              f"{_evaluate_hint(ckpt, data_dir, 'test')}")
    if not (valid_dir / SCORES_FILE).is_file():
        raise CheckpointError(f"{valid_dir / SCORES_FILE} is missing: re-ranking measures its adjustment and "
                              f"chooses alpha on VALID; {_evaluate_hint(ckpt, data_dir, 'valid')}")
    if data_dir is None:
        raise ConfigError(f"no data folder is recorded in {test_dir}/config.yaml or {ckpt}/config.yaml; pass "
                          f"--data DIR (the prepared dataset the checkpoint was evaluated on)")
    if config.data is None and not data_dir.is_dir():
        raise ConfigError(f"the recorded data folder {data_dir} does not exist; pass --data DIR")
    return RerankInputs(ckpt=ckpt, valid_dir=valid_dir, test_dir=test_dir, data_dir=data_dir)


def _read_table(folder: Path, split: str) -> pd.DataFrame:
    """A score-mode table of `split`; one-line errors for another mode or another split."""
    table = read_scores(folder)
    mode, found = table_mode(table), table_split(table)
    if mode != "score":
        raise ConfigError(f"{folder / SCORES_FILE} holds a `{mode}` ranking (one choice per sample, no scores to "
                          f"re-rank); re-ranking needs `llmrec evaluate --split {split} --mode score`")
    if found != split:
        raise DataError(f"{folder / SCORES_FILE} holds the {found} split, expected {split}: re-ranking needs "
                        f"the valid ranking to tune and the test ranking to re-rank")
    if not len(table):
        raise DataError(f"{folder / SCORES_FILE} has no ranked samples")
    return table


def check_same_split(ckpt: Path, data: ProcessedDataset) -> None:
    """The scores' checkpoint must have been trained on `data`'s catalog and train/valid/test users."""
    from llmrec.llm.checkpoint import read_facts

    facts = read_facts(ckpt)
    if facts.catalog_fingerprint != data.catalog_fingerprint():
        raise CheckpointError(f"the scores of {ckpt} are from another catalog than {data.root} (catalog "
                              f"fingerprints differ); pass the --data the checkpoint was evaluated on")
    why = split_mismatch(facts.split, data)
    if why:
        raise CheckpointError(f"the scores of {ckpt} are from another split than {data.root}: {why}; pass the "
                              f"--data the checkpoint was evaluated on")


# ------------------------------------------------------------------------------------------------ re-ranked table
def reranked_table(table: pd.DataFrame, item_adj: np.ndarray, alpha: float) -> pd.DataFrame:
    """`table` with re-ranked `scores`, the model's under `model_scores`, and `chosen` = the new top item."""
    scores = stack_scores(table)
    final = rerank_scores(scores, stack_candidates(table), item_adj, alpha)
    out = table.assign(**{MODEL_SCORES: list(scores.tolist()), "scores": list(final.tolist())})
    out.attrs = {"mode": "score", "split": table_split(table)}
    out["chosen"] = recommended_items(out)[:, 0]
    return out


def run_rerank(config: RerankConfig) -> int:
    check_config(config)
    alpha_given = parse_alpha(config.alpha)
    missing = [k for k in config.objective_ks if k not in config.ks]
    if missing:
        raise ConfigError(f"option --objective-ks: {missing} must be among --ks {list(config.ks)}")
    inputs = locate_inputs(config)
    out = Path(config.out) if config.out is not None else inputs.ckpt / f"rerank-{config.grouping}"
    check_output(out, "rerank")
    valid = _read_table(inputs.valid_dir, "valid")
    test = _read_table(inputs.test_dir, "test")
    for table in (valid, test):  # a K larger than the ranked list, before any work
        for k in config.ks:
            check_k(int(k), stack_candidates(table).shape[1])
    data = ProcessedDataset.load(inputs.data_dir)
    check_same_split(inputs.ckpt, data)
    groups = item_groups(data, config.grouping, config.n_groups, config.split_multi)
    ks = [int(k) for k in config.ks]

    grid = list(config.alpha_grid) if alpha_given is None else [alpha_given]
    choice = choose_alpha(stack_scores(valid), stack_candidates(valid), valid["target"].to_numpy(),
                          sample_histories(valid, data), groups, grid=grid, max_rel_drop=config.max_rel_drop,
                          ks=ks, objective_ks=config.objective_ks)
    alpha = choice.alpha if alpha_given is None else alpha_given
    adj = item_adjustment(choice.group_adjustment, groups)
    valid_after, test_after = reranked_table(valid, adj, alpha), reranked_table(test, adj, alpha)

    evaluated = {}
    f = inputs.test_dir / METRICS_FILE
    if f.is_file():
        evaluated = json.loads(f.read_text(encoding="utf-8"))
    facts = {"mode": "score", "split": "test", "protocol": data.protocol, "seed": evaluated.get("seed"),
             "eval_positions": data.meta.get("eval_positions")}
    metrics: dict[str, Any] = {
        **table_metrics(test_after, data, groups, ks), **facts,
        "alpha": alpha, "alpha_choice": "auto" if alpha_given is None else "given",
        "before": {**table_metrics(test, data, groups, ks), **facts},
        "valid": {"before": table_metrics(valid, data, groups, ks),
                  "after": table_metrics(valid_after, data, groups, ks)},
        "grid": choice.table, "max_rel_drop": config.max_rel_drop, "objective_ks": list(config.objective_ks),
        "standardised": True, "groups": groups.to_dict(),
        "group_adjustment": dict(zip(groups.names, map(float, choice.group_adjustment))),
        "ckpt": str(inputs.ckpt), "valid_scores": str(inputs.valid_dir), "test_scores": str(inputs.test_dir),
    }
    resolved = dataclasses.replace(config, scores=inputs.ckpt, data=inputs.data_dir, out=out,
                                   valid_scores=inputs.valid_dir)
    with output_directory(out, "rerank") as tmp:
        atomic_write_text(tmp / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
        write_scores(tmp, test_after)
        save_config(resolved, tmp, extra={"ckpt": str(inputs.ckpt), "test_scores": str(inputs.test_dir)})
    before = metrics["before"]
    shown = [k for k in ("hr@1", "candidates/ndcg@5", *(f"mgu@{k}" for k in ks), "dgu@1") if k in metrics]
    print(f"re-ranked {inputs.test_dir} ({config.grouping} groups) with alpha {alpha:g} "
          f"({'chosen on valid' if alpha_given is None else 'given'}); written to {out}")
    for k in shown:
        print(f"  {k:18s} {before[k]:.4f} -> {metrics[k]:.4f}")
    return 0
