"""`llmrec evaluate`: rank the stored candidates of a split with a trained LLM recommender (DESIGN.md §8).

    llmrec evaluate --ckpt DIR --data DIR --mode {score,generate,constrained} [--split test] [--out DIR]

Writes `metrics.json` (keys in `llmrec.evaluation.llm_split`; in `score` mode also `score_norm`, the rule that
ranked: the checkpoint's, or `--score-norm`), `scores.parquet` (every ranked sample's candidates and scores or
choice, with the mode and split) and the resolved `config.yaml` into `--out` (default CKPT/eval-SPLIT-MODE).
The checkpoint is self-contained (its encoder, catalog and tokenizer travel with it); `--data` must be the
prepared dataset it was trained on (same catalog, same train/valid/test users).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmrec.base.atomic import check_output, output_directory
from llmrec.base.config import check_config, option, save_config
from llmrec.data.dataset import ProcessedDataset
from llmrec.base.device import torch_device
from llmrec.encoders.checkpoint import load_encoder
from llmrec.base.errors import ConfigError
from llmrec.evaluation.llm_split import evaluate_split, write_evaluation
from llmrec.fairness.evaluate import ranked_fairness
from llmrec.evaluation.groups import item_groups
from llmrec.fairness.report import ReportEntry, write_report
from llmrec.llm.checkpoint import load_recommender, read_facts
from llmrec.llm.ranking import MAX_NEW_TOKENS

log = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    ckpt: Path | None = option(None, "checkpoint folder written by `llmrec train-llm`")
    data: Path | None = option(None, "processed dataset folder (the catalog the checkpoint was trained on)")
    mode: Literal["score", "generate", "constrained"] = option("score", "ranking mode")
    split: Literal["valid", "test"] = option("test", "which samples to rank")
    out: Path | None = option(None, "output folder for metrics.json (default: CKPT/eval-SPLIT-MODE)")
    encoder: Path | None = option(None, "encoder folder (default: the one recorded in the checkpoint)")
    llm: str | None = option(None, "base model folder for LoRA checkpoints (default: the recorded one)")
    batch_size: int = option(8, "prompts per batch", min=1)
    max_samples: int | None = option(None, "rank a seeded random subset of the split; None: all", min=1)
    max_new_tokens: int = option(MAX_NEW_TOKENS, "generation budget of `generate` mode", min=1)
    score_norm: Literal["sum", "mean"] | None = option(
        None, "how `score` mode ranks the candidates: sum of each answer's token log-probs or their mean (sum / "
              "answer length); None: the rule the checkpoint records (train-llm --score-norm)")
    device: Literal["auto", "cpu", "gpu", "cuda"] = option("auto", "where to run (auto: a GPU if present)")
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "weights dtype")
    seed: int = option(0, "seed of the sample subset", min=0, max=2**32 - 1)


def run_evaluate(config: EvaluateConfig) -> int:
    check_config(config)
    if config.ckpt is None or config.data is None:
        raise ConfigError("evaluate needs --ckpt DIR and --data DIR")
    read_facts(config.ckpt)
    out = Path(config.out) if config.out else Path(config.ckpt) / f"eval-{config.split}-{config.mode}"
    check_output(out, "evaluate")  # before the model runs: never write into a folder that is not ours
    data = ProcessedDataset.load(config.data)
    encoder = load_encoder(config.encoder, data) if config.encoder is not None else None
    lm = load_recommender(config.ckpt, data, encoder, llm=config.llm, device=torch_device(config.device),
                          dtype=config.dtype, score_norm=config.score_norm)
    metrics, ranked = evaluate_split(lm, data, config.split, config.mode, config.batch_size, config.max_samples,
                                     config.seed, config.max_new_tokens)
    if config.mode == "score":
        metrics["score_norm"] = lm.score_norm  # which rule ranked: the checkpoint's or --score-norm
    groups = item_groups(data, "popularity")
    metrics.update(ranked_fairness(ranked, data, groups))
    with output_directory(out, "evaluate") as tmp:
        write_evaluation(tmp, metrics, ranked)
        save_config(config, tmp)
        write_report(tmp, [ReportEntry(f"{Path(config.ckpt).name} ({config.mode})", metrics, str(out),
                                       groups=groups.to_dict())])
    print(json.dumps(metrics, indent=2))
    return 0
