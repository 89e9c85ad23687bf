"""`llmrec evaluate`: rank the stored candidates of a split with a trained model (docs/design.md §8), through the one
evaluator (`llmrec.evaluation.evaluator`).

    llmrec evaluate --ckpt DIR --data DIR [--mode {score,generate,constrained}] [--split test] [--out DIR]
    llmrec evaluate --ckpt DIR --data DIR --devices 2            # the samples split over 2 processes (Lightning DDP)

`--ckpt` is an LLM checkpoint (`train-llm`, `train-sdpo`) or an encoder checkpoint (`train-encoder`: SASRec,
GRU4Rec, Caser or MostPop). Writes `metrics.json`, `scores.parquet` (every ranked sample's candidates and scores
or choice, with the mode and split: `llmrec.evaluation.scores`), the fairness `report.md` and the resolved
`config.yaml` into `--out` (default CKPT/eval-SPLIT-MODE).

- LLM checkpoint: any mode; metrics keys in `llmrec.evaluation.ranked_metrics` (accuracy and fairness over
  popularity groups); in `score` mode also `score_norm`, the rule that ranked (the checkpoint's, or
  `--score-norm`). The checkpoint is self-contained (its encoder, catalog and tokenizer travel with it).
  `--quantize int8` (CPU) ranks with dynamic int8 linear layers (`llmrec.llm.quantize`), recorded as `quantize`.
- Encoder checkpoint: `score` mode only (an encoder scores; it does not decode). The stored candidates are scored
  and, since an encoder can, the whole catalog is ranked: metrics.json holds the same keys as an LLM's plus every
  key `train-encoder` reports for a split (`full/...`, `candidates/mgu@k`, ..., `llmrec.evaluation.evaluator`)
  and `model`, with exactly train-encoder's numbers for the whole split: the encoder reads the history, excludes
  seen items and batches as its recorded config.yaml says (`eval_history`, `exclude_seen`, `eval_batch_size`);
  `--batch-size`, `--encoder`, `--llm`, `--score-norm` and `--quantize` are LLM options.
`--data` must be the prepared dataset the checkpoint was trained on (same catalog, same train/valid/test users).

Several processes (LLM checkpoints, every mode): `--devices N [--num-nodes M] [--strategy ddp]` splits the
samples over N x M processes with Lightning's predict loop (`llmrec.training.sharding`: its own launcher re-runs
this command line in N-1 child processes; torchrun and SLURM work too): each process ranks whole batches of
`--batch-size` consecutive samples (the batches one process ranks), none twice, and the rankings are gathered in
sample order, so metrics.json and scores.parquet are those of a one-process run (the same rows in the same order,
the same scores up to float rounding; only `seconds` and `users_per_second` differ). Only rank 0 writes `--out`.
On a CPU, each of the N processes of a machine uses its share of the cores unless `--threads` is given. Encoder
checkpoints rank in one process (a whole-catalog ranking is fast there): `--devices` > 1 is refused for them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from llmrec.base.atomic import check_output, output_directory
from llmrec.base.config import check_config, load_yaml_mapping, option, save_config
from llmrec.base.device import torch_device
from llmrec.base.errors import ConfigError
from llmrec.data.dataset import ProcessedDataset
from llmrec.encoders.checkpoint import is_encoder_checkpoint, load_encoder
from llmrec.encoders.evaluate import FAIRNESS_GROUPS
from llmrec.encoders.ranker import EncoderRanker
from llmrec.evaluation.evaluator import catalog_metrics, rank_split, ranking_metrics
from llmrec.evaluation.groups import ItemGroups, item_groups
from llmrec.evaluation.ranked_metrics import ranked_fairness
from llmrec.evaluation.scores import write_evaluation
from llmrec.fairness.report import ReportEntry, write_report
from llmrec.llm.checkpoint import is_llm_checkpoint, load_recommender, read_facts
from llmrec.llm.facts import LLMFacts
from llmrec.llm.quantize import check_quantize, quantized
from llmrec.llm.ranker import evaluate_split
from llmrec.llm.ranking import MAX_NEW_TOKENS
from llmrec.training.distributed import set_process_threads
from llmrec.training.options import Strategy, trainer_option
from llmrec.training.sharding import Launch, check_launch

log = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    # the help texts are those of the README's generated command reference (an encoder checkpoint works too)
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
    quantize: Literal["none", "int8"] = option(
        "none", "LLM checkpoints, CPU only: rank with dynamic int8 linear layers (LoRA adapters merged first); "
                "metrics.json records it")
    devices: int = trainer_option("devices", help="processes per machine the samples are split over (LLM "
                                                  "checkpoints; CPU: gloo processes, GPU: one per GPU); the "
                                                  "outputs equal a one-process run's")
    num_nodes: int = trainer_option("num_nodes")
    strategy: Strategy = trainer_option("strategy", help="Lightning's distribution strategy (auto: ddp when more "
                                                         "than one process; fsdp/deepspeed are refused: every "
                                                         "process holds the whole model)")


def _evaluate_llm(config: EvaluateConfig, data: ProcessedDataset, facts: LLMFacts
                  ) -> tuple[dict[str, Any], pd.DataFrame, ItemGroups]:
    check_quantize(config.quantize, torch_device(config.device), config.dtype)  # before the slow load
    encoder = load_encoder(config.encoder, data) if config.encoder is not None else None
    lm = load_recommender(config.ckpt, data, encoder, llm=config.llm, device=_launch(config).torch_device(),
                          dtype=config.dtype, score_norm=config.score_norm, facts=facts)
    lm = quantized(lm, config.quantize)
    metrics, ranked = evaluate_split(lm, data, config.split, config.mode, config.batch_size, config.max_samples,
                                     config.seed, config.max_new_tokens, launch=_launch(config))
    if config.mode == "score":
        metrics["score_norm"] = lm.score_norm  # which rule ranked: the checkpoint's or --score-norm
    if config.quantize != "none":
        metrics["quantize"] = config.quantize
    groups = item_groups(data, "popularity")
    metrics.update(ranked_fairness(ranked, data, groups))
    return metrics, ranked, groups


def _evaluate_encoder(config: EvaluateConfig, data: ProcessedDataset) -> tuple[dict[str, Any], pd.DataFrame,
                                                                               ItemGroups]:
    assert config.ckpt is not None
    if config.mode != "score":
        raise ConfigError(f"{config.ckpt} is an encoder checkpoint: it ranks in `score` mode only (generate and "
                          f"constrained are LLM decoding modes); pass --mode score")
    given = [f"--{n.replace('_', '-')}" for n in ("encoder", "llm", "score_norm") if getattr(config, n) is not None]
    given += ["--quantize"] if config.quantize != "none" else []
    if given:
        raise ConfigError(f"{config.ckpt} is an encoder checkpoint: {', '.join(given)} apply to LLM checkpoints only")
    encoder = load_encoder(config.ckpt, data, map_location=torch_device(config.device))
    # the options train-encoder evaluated with, so that the numbers are train-encoder's
    trained = load_yaml_mapping(Path(config.ckpt) / "config.yaml")
    ranker = EncoderRanker(encoder, data, history=str(trained.get("eval_history") or "auto"),  # type: ignore[arg-type]
                           exclude_seen=bool(trained.get("exclude_seen", True)),
                           batch_size=int(trained.get("eval_batch_size") or 128))
    evaluation = rank_split(ranker, data, config.split, config.max_samples, config.seed)
    groups = item_groups(data, "popularity", n_groups=min(FAIRNESS_GROUPS, data.n_items))
    metrics = ranking_metrics(evaluation, data, config.seed)
    if len({len(c) for c in evaluation.table["candidates"]}) == 1:  # (rows with different numbers: no K fits all)
        metrics.update(ranked_fairness(evaluation.table, data, groups))
    metrics.update({**catalog_metrics(evaluation, data, groups), "model": getattr(encoder, "model_name", None)})
    return metrics, evaluation.table, groups


def _launch(config: EvaluateConfig) -> Launch:
    return Launch(config.device, config.devices, config.num_nodes, config.strategy)


def run_evaluate(config: EvaluateConfig) -> int:
    check_config(config)
    if config.ckpt is None or config.data is None:
        raise ConfigError("evaluate needs --ckpt DIR and --data DIR")
    encoder_ckpt = not is_llm_checkpoint(config.ckpt) and is_encoder_checkpoint(config.ckpt)
    launch = _launch(config)
    if launch.sharded:
        if encoder_ckpt:
            raise ConfigError(f"{config.ckpt} is an encoder checkpoint: it ranks in one process (--devices 1, "
                              f"--num-nodes 1); --devices and --num-nodes split an LLM checkpoint's samples")
        check_launch(launch, "evaluate")  # one line before the slow load (FSDP on CPU, ...)
        set_process_threads(launch.local_processes)
    # read once: a clear error first when it is neither kind of checkpoint
    facts = None if encoder_ckpt else read_facts(config.ckpt)
    out = Path(config.out) if config.out else Path(config.ckpt) / f"eval-{config.split}-{config.mode}"
    check_output(out, "evaluate")  # before the model runs: never write into a folder that is not ours
    data = ProcessedDataset.load(config.data)
    if facts is None:
        metrics, ranked, groups = _evaluate_encoder(config, data)
    else:
        metrics, ranked, groups = _evaluate_llm(config, data, facts)
    if launch.rank != 0:  # every process holds the whole table; rank 0 alone writes it
        return 0
    with output_directory(out, "evaluate") as tmp:
        write_evaluation(tmp, metrics, ranked)
        save_config(config, tmp)
        if "mgu@1" in metrics:
            write_report(tmp, [ReportEntry(f"{Path(config.ckpt).name} ({config.mode})", metrics, str(out),
                                           groups=groups.to_dict())])
    print(json.dumps(metrics, indent=2))
    return 0
