"""`llmrec train-llm`: fine-tune an LLM recommender with hybrid prompts, curriculum and LoRA (DESIGN.md §5).

    llmrec train-llm --data DIR --encoder DIR --llm {tiny,PATH} [--curriculum linear|step|cosine|constant]
                     [--prompt hybrid|text|hybrid+summary] [--config FILE] --out DIR

Writes a checkpoint folder (see `llmrec.llm.checkpoint`) with only the trained weights, the tokenizer, the
resolved `config.yaml` and `metrics.json` (best valid `hr@1` and the test metrics of the chosen weights in
`score` mode).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from llmrec.atomic import atomic_directory, atomic_write_text, check_replaceable
from llmrec.config import option, save_config
from llmrec.data.dataset import ProcessedDataset
from llmrec.device import lightning_accelerator
from llmrec.encoders.base import SequentialEncoder
from llmrec.errors import CheckpointError, ConfigError
from llmrec.llm import backbone
from llmrec.llm.checkpoint import FACTS, encoder_fingerprint, save_checkpoint
from llmrec.llm.curriculum import CurriculumCallback
from llmrec.llm.datamodule import LLMDataModule
from llmrec.llm.hybrid import HybridLM
from llmrec.llm.lora import DEFAULT_TARGETS, apply_lora
from llmrec.llm.module import LLMRecModule
from llmrec.llm.projector import Projector
from llmrec.llm.prompts import PromptBuilder

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
TINY_CONTEXT = 512  # positions of the tiny Llama: the longest ML-100K llara prompt + answer is ~330 tokens


@dataclass
class TrainLLMConfig:
    data: Path | None = option(None, "processed dataset folder (`llmrec prepare --protocol llara`)")
    encoder: Path | None = option(None, "encoder checkpoint folder (`llmrec train-encoder`); not needed for "
                                        "--prompt text")
    llm: str = option("tiny", "`tiny` (a small Llama built locally) or a local Hugging Face causal-LM folder")
    out: Path | None = option(None, "output checkpoint folder (must not exist or be empty, or be a previous "
                                    "train-llm output)")
    prompt: Literal["hybrid", "text", "hybrid+summary"] = option(
        "hybrid", "item rendering: title + behavioural slot, title + text slot, or hybrid + history summary")
    curriculum: Literal["linear", "step", "cosine", "constant"] = option(
        "linear", "probability of a hybrid training batch over training progress (text -> hybrid)")
    curriculum_constant: float = option(1.0, "hybrid probability of the `constant` schedule")
    finetune: Literal["auto", "lora", "full"] = option(
        "auto", "what of the LLM is trained: LoRA adapters, or all weights (auto: full for tiny, lora otherwise)")
    lora_r: int = option(8, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.1, "LoRA dropout")
    lora_targets: list[str] = option(None, "modules wrapped by LoRA", factory=lambda: list(DEFAULT_TARGETS))
    tiny_layers: int = option(4, "tiny Llama: decoder layers")
    tiny_hidden: int = option(256, "tiny Llama: hidden size")
    tiny_heads: int = option(4, "tiny Llama: attention heads")
    tiny_tokenizer: Literal["word", "bpe"] = option("word", "tiny Llama: word-level or byte-level BPE tokenizer, "
                                                            "trained on the catalog titles and prompt templates")
    tiny_bpe_vocab: int = option(2048, "tiny Llama: vocabulary size of the BPE tokenizer")
    max_length: int | None = option(None, "longest prompt + answer in tokens; oldest history items are dropped "
                                          "beyond (default: the model's context; 512 for tiny)")
    cache_dir: Path = option(Path("data/cache/llm"), "where the tiny backbone is built (once per catalog/size)")
    epochs: int = option(4, "training epochs")
    max_steps: int = option(-1, "stop after this many optimiser steps (-1: no limit)")
    batch_size: int = option(16, "training prompts per batch")
    eval_batch_size: int = option(8, "prompts per ranking batch (x 20 candidates in score mode)")
    lr: float = option(1e-3, "peak learning rate of the LLM's trained weights (warmup + cosine)")
    projector_lr: float | None = option(None, "peak learning rate of the projector (default: --lr)")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup_ratio: float = option(0.05, "share of steps spent in linear warmup")
    val_check_interval: float = option(1.0, "validate every this share of an epoch (<= 1.0)")
    max_train_samples: int | None = option(None, "use a seeded random subset of the training samples")
    max_valid_samples: int | None = option(1000, "rank a seeded random subset of the valid samples (checkpoint "
                                                 "choice); None: all")
    max_test_samples: int | None = option(None, "rank a seeded random subset of the test samples; None: all")
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "weights dtype of the LLM (bf16 on GPU)")
    gradient_checkpointing: bool = option(False, "recompute activations in backward (saves GPU memory)")
    load_in_4bit: bool = option(False, "4-bit NF4 base weights with bitsandbytes (LoRA only; CUDA only)")
    device: Literal["auto", "cpu", "gpu", "cuda"] = option("auto", "where to train (auto: a GPU if present)")
    precision: str = option("32-true", "Lightning precision (e.g. bf16-mixed on a GPU)")
    seed: int = option(0, "random seed (tiny init, templates, shuffling, curriculum coin, subsets)")
    progress_bar: bool = option(False, "show Lightning's progress bar")


_accelerator = lightning_accelerator


def subset(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded random subset of `n` rows (all rows when n is None or >= len)."""
    if n is None or n >= len(df):
        return df
    idx = np.sort(np.random.default_rng(seed).choice(len(df), size=n, replace=False))
    return df.iloc[idx].reset_index(drop=True)


def load_encoder_for(path: Path | None, data: ProcessedDataset) -> SequentialEncoder:
    """The frozen encoder of a hybrid run; refuses one trained on another catalog."""
    if path is None:
        raise ConfigError("--encoder is required for hybrid prompts (train one with `llmrec train-encoder`), "
                          "or use --prompt text")
    from llmrec.encoders.checkpoint import load_encoder

    return load_encoder(path, data)


def resolve_llm_path(config: TrainLLMConfig, data: ProcessedDataset) -> tuple[Path, dict[str, Any] | None]:
    """The backbone folder (building the tiny one if asked) and the tiny spec (None for a path)."""
    if config.llm == backbone.TINY:
        spec = backbone.TinySpec(config.tiny_layers, config.tiny_hidden, config.tiny_heads,
                                 config.max_length or TINY_CONTEXT,
                                 config.seed, config.tiny_tokenizer, config.tiny_bpe_vocab)
        return backbone.build_tiny_llm(data.titles(), data.catalog_fingerprint(), config.cache_dir, spec), \
            dict(spec.__dict__)
    return backbone.check_model_folder(Path(config.llm)), None


def build_recommender(config: TrainLLMConfig, data: ProcessedDataset, encoder: SequentialEncoder | None
                      ) -> tuple[HybridLM, dict[str, Any]]:
    """The trainable `HybridLM` for `config` and the facts its checkpoint will record."""
    if config.prompt != "text" and encoder is None:
        raise ConfigError(f"--prompt {config.prompt} needs an encoder (--encoder DIR); use --prompt text without one")
    path, tiny = resolve_llm_path(config, data)
    finetune = config.finetune if config.finetune != "auto" else ("full" if tiny else "lora")
    if config.load_in_4bit and finetune == "full":
        raise ConfigError("--load-in-4bit trains LoRA adapters only; use --finetune lora")
    torch.manual_seed(config.seed)
    model = backbone.load_causal_lm(path, config.dtype, config.gradient_checkpointing, config.load_in_4bit)
    tokenizer = backbone.load_tokenizer(path)
    base_vocab = int(model.get_input_embeddings().weight.shape[0])
    slots = backbone.add_slot_tokens(tokenizer, model)
    context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    if not context and not config.max_length:
        raise ConfigError(f"--llm {path}: its config states no context length (max_position_embeddings); "
                          f"give --max-length")
    max_length = min(config.max_length or context, context or config.max_length)
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    if finetune == "lora":
        model = apply_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_targets,
                           trainable_tokens=[slots.history, slots.candidate, slots.text, slots.summary])
    builder = PromptBuilder(tokenizer, data.titles(), data.domain, slots, max_length,
                            summary=config.prompt == "hybrid+summary", seed=config.seed)
    projector = None
    if config.prompt != "text":
        projector = Projector(encoder.hidden_size, backbone.hidden_size(model))
    lm = HybridLM(model, builder, config.prompt, projector, encoder if config.prompt != "text" else None)
    facts = {"finetune": finetune, "base_model": str(path.resolve()), "tiny": tiny, "base_vocab_size": base_vocab,
             "vocab_size": len(tokenizer), "llm_hidden": backbone.hidden_size(model),
             "encoder_hidden": encoder.hidden_size if projector is not None else None,
             "encoder": str(Path(config.encoder).resolve()) if config.encoder and projector is not None else None,
             "encoder_fingerprint": encoder_fingerprint(encoder) if projector is not None else None,
             "prompt": config.prompt, "domain": data.domain, "catalog_fingerprint": data.catalog_fingerprint(),
             "max_length": max_length, "seed": config.seed, "protocol": data.protocol}
    return lm, facts


def fit(lm: HybridLM, data: ProcessedDataset, config: TrainLLMConfig) -> LLMRecModule:
    """Train with Lightning; the best trainable weights by valid hr@1 are restored at the end."""
    import pytorch_lightning as pl

    pl.seed_everything(config.seed, workers=True, verbose=False)
    train = subset(data.split("train"), config.max_train_samples, config.seed)
    valid = subset(data.split("valid"), config.max_valid_samples, config.seed + 1)
    dm = LLMDataModule(train, valid, lm.builder, config.batch_size, config.eval_batch_size,
                       summary_max_length=getattr(lm.encoder, "max_length", 50), seed=config.seed)
    module = LLMRecModule(lm, config.lr, config.projector_lr, config.weight_decay, config.warmup_ratio, config.seed)
    callbacks = [CurriculumCallback(config.curriculum, config.curriculum_constant)] if lm.uses_slots else []
    trainer = pl.Trainer(accelerator=_accelerator(config.device), devices=1, precision=config.precision,
                         max_epochs=config.epochs, max_steps=config.max_steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=config.progress_bar,
                         enable_model_summary=False, callbacks=callbacks, num_sanity_val_steps=0,
                         val_check_interval=config.val_check_interval, log_every_n_steps=10,
                         deterministic=False)
    lm.train()  # from_pretrained returns eval-mode models; the frozen encoder is not a submodule and stays eval
    trainer.fit(module, datamodule=dm)
    if not module.history or module.history[-1]["step"] < trainer.global_step:
        trainer.validate(module, datamodule=dm, verbose=False)  # stopped mid-epoch (max_steps): judge the end too
    if lm.builder.n_truncated:
        log.warning("%d prompts were truncated (oldest history items dropped) to fit %d tokens",
                    lm.builder.n_truncated, lm.builder.max_length)
    module.restore_best()
    return module


def _check_out(path: Path) -> None:
    check_replaceable(path, lambda p: (p / FACTS).is_file(), "a `llmrec train-llm` output", CheckpointError)


def run_train_llm(config: TrainLLMConfig) -> int:
    from llmrec.llm.evaluate import evaluate_split

    if config.data is None or config.out is None:
        raise ConfigError("train-llm needs --data DIR and --out DIR")
    if not 0 < config.val_check_interval <= 1.0:
        raise ConfigError(f"--val-check-interval {config.val_check_interval}: expected a share in (0, 1]")
    out = Path(config.out)
    _check_out(out)
    data = ProcessedDataset.load(config.data)
    encoder = load_encoder_for(config.encoder, data) if config.prompt != "text" else None
    lm, facts = build_recommender(config, data, encoder)
    started = time.time()
    module = fit(lm, data, config)
    train_seconds = time.time() - started
    lm.eval()
    test = evaluate_split(lm, data, "test", "score", config.eval_batch_size, config.max_test_samples, config.seed)
    metrics = {"valid/hr@1": module.best_hr1, "valid/history": module.history, "train_seconds": train_seconds,
               "device": _accelerator(config.device), **{f"test/{k}": v for k, v in test.items()}}
    with atomic_directory(out) as tmp:
        save_checkpoint(tmp, lm.cpu(), facts)
        save_config(config, tmp)
        atomic_write_text(tmp / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    log.info("saved %s: valid hr@1 %.4f, test hr@1 %.4f", out, module.best_hr1, test["hr@1"])
    print(json.dumps({k: v for k, v in metrics.items() if k != "valid/history"}, indent=2))
    return 0


