"""`llmrec evaluate`: rank the stored candidates of a split with a trained LLM recommender (DESIGN.md §8).

    llmrec evaluate --ckpt DIR --data DIR --mode {score,generate,constrained} [--split test] [--out DIR]

metrics.json keys: `hr@1` (correct / all samples), `hr@1_valid` (correct / valid outputs), `valid_ratio`,
`candidates/ndcg@5`, `n_samples`, `seed`, `protocol`, `mode`, `split`, and `hr@1_last` when the split holds
several samples per user (an `--eval-positions all` set): hr@1 over each user's latest (max-position) sample,
which is the `last` protocol's sample for that user.
`score` gives a full ordering, so `candidates/hr@k` and `candidates/ndcg@k` for k in 1, 5, 10 are reported.
`generate` and `constrained` make one choice per sample: the chosen item is ranked first and nothing else is
ranked, so for them `candidates/ndcg@5` equals `hr@1`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from llmrec.atomic import atomic_write_text
from llmrec.config import option, save_config
from llmrec.data.dataset import ProcessedDataset
from llmrec.errors import ConfigError
from llmrec.evaluation.metrics import candidate_metrics, choice_metrics, target_ranks
from llmrec.llm.checkpoint import load_recommender, read_facts
from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.hybrid import HybridLM
from llmrec.llm.ranking import MAX_NEW_TOKENS, Mode, rank

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
    batch_size: int = option(8, "prompts per batch")
    max_samples: int | None = option(None, "rank a seeded random subset of the split; None: all")
    max_new_tokens: int = option(MAX_NEW_TOKENS, "generation budget of `generate` mode")
    device: Literal["auto", "cpu", "gpu", "cuda"] = option("auto", "where to run (auto: a GPU if present)")
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "weights dtype")
    seed: int = option(0, "seed of the sample subset")


def evaluate_split(lm: HybridLM, data: ProcessedDataset, split: str, mode: Mode = "score", batch_size: int = 8,
                   max_samples: int | None = None, seed: int = 0,
                   max_new_tokens: int = MAX_NEW_TOKENS) -> dict[str, Any]:
    """Rank every (or a seeded subset of) sample of `split` and return the metrics of DESIGN.md §8."""
    from llmrec.llm.train import subset

    samples = subset(data.split(split), max_samples, seed)
    device = next(lm.parameters()).device
    loader = prompt_loader(samples, lm.builder, batch_size, with_answer=False,
                           summary_max_length=getattr(lm.encoder, "max_length", 50))
    chosen: list[int | None] = []
    ranks: list[torch.Tensor] = []
    started = time.time()
    lm.eval()
    for batch in loader:
        batch = batch.to(device)
        result = rank(lm, batch, mode, max_new_tokens=max_new_tokens)
        chosen += result.chosen
        if result.scores is not None:
            ranks.append(target_ranks(result.scores, batch.target_index).cpu())
    targets = samples["target"].astype(int).tolist()
    if mode == "score":
        r = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
        m = candidate_metrics(r)
        hits = (r == 0).numpy()
        metrics = {"hr@1": m["candidates/hr@1"], "hr@1_valid": m["candidates/hr@1"], "valid_ratio": 1.0, **m}
    else:
        metrics = choice_metrics(chosen, targets)
        hits = np.array([c is not None and c == t for c, t in zip(chosen, targets)])
        metrics["candidates/ndcg@5"] = metrics["hr@1"]
    users = samples["user_id"].to_numpy()
    if len(np.unique(users)) < len(users):
        last = samples.groupby("user_id")["position"].transform("max").to_numpy() == samples["position"].to_numpy()
        metrics["hr@1_last"] = float(hits[last].mean())
        metrics["n_users_last"] = int(last.sum())
    metrics.update({"n_samples": len(samples), "seed": seed, "protocol": data.protocol, "mode": mode,
                    "split": split, "seconds": time.time() - started,
                    "eval_positions": data.meta.get("eval_positions")})
    return metrics


def run_evaluate(config: EvaluateConfig) -> int:
    from llmrec.llm.train import _accelerator, load_encoder_for

    if config.ckpt is None or config.data is None:
        raise ConfigError("evaluate needs --ckpt DIR and --data DIR")
    facts = read_facts(config.ckpt)
    data = ProcessedDataset.load(config.data)
    encoder = None
    if facts["prompt"] != "text":
        path = config.encoder or (Path(facts["encoder"]) if facts.get("encoder") else None)
        encoder = load_encoder_for(path, data)
    device = "cuda" if _accelerator(config.device) == "gpu" else "cpu"
    lm = load_recommender(config.ckpt, data, encoder, llm=config.llm, device=device, dtype=config.dtype)
    metrics = evaluate_split(lm, data, config.split, config.mode, config.batch_size, config.max_samples,
                             config.seed, config.max_new_tokens)
    out = Path(config.out) if config.out else Path(config.ckpt) / f"eval-{config.split}-{config.mode}"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    save_config(config, out)
    print(json.dumps(metrics, indent=2))
    return 0


