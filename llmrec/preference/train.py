"""`llmrec train-sdpo`: preference-train an SFT recommender with S-DPO or a DPO-family variant (docs/design.md §6).

    llmrec train-sdpo --sft DIR --data DIR --out DIR [--negatives 3|all] [--loss sdpo|dr-sdpo|beta-sdpo|alpha-sdpo]
                      [--beta 1.0] [--config FILE]

1. Loads the SFT checkpoint (`llmrec train-llm` output) and refuses data of another catalog or split.
2. Draws N negatives per training sample from its other stored candidates, fixed per (seed, user, position)
   (`llmrec.preference.negatives`); `--negatives 1` with `--loss sdpo` is the DPO baseline.
3. Measures the SFT model's valid `hr@1` (the start), then computes the reference log-probs of every sample's
   chosen answer and negatives ONCE with that model (eval mode, no gradients) and stores them
   (`reference_logprobs.safetensors`); the same model then becomes the policy: one model resident. Both are
   done at the start of the fit (`PreferenceStart`, before a resumed state is loaded), where the processes of
   a multi-process run exist: each rank computes its share and the results are gathered.
4. Trains with Lightning (one prompt pass per sample for all 1 + N answers), keeping the best round on valid
   `hr@1` (the SFT start is measured but is not a candidate: the output is always preference-trained).
5. Writes a regular LLM checkpoint folder (`llmrec.llm.checkpoint`: weights, tokenizer, catalog, encoder copy),
   so `llmrec evaluate` works on it unchanged, with `config.yaml`, `metrics.json` (best valid `hr@1`, the SFT
   start's valid `hr@1`, reference and training time, test metrics in `score` mode), `eval-test-score/`,
   `logs/` (loss and `rewards/*` curves) and the stored reference log-probs. While training, the state to resume
   from is saved to `<out>.resume/` (`llmrec.training.resume`); `--resume` continues an interrupted run from it
   (the reference log-probs are recomputed: they are deterministic), and a finished run removes it.

Per-sample loss weights (`--fairness-weights popularity|genre`, docs/design.md §7) enter every loss per sample.
Every ranking (SFT start, validation, test) and the output checkpoint use the SFT checkpoint's score-mode rule
(`score_norm`: summed or length-normalised answer log-probs) unless `--score-norm` overrides it; the losses
always compare summed log-probs.
Defaults follow S-DPO's authors (beta 1, N = 3, 3 epochs, no weight decay) except the learning rate: they used
1e-5 for LoRA on a 7B Llama; 1e-4 suits the small models this project trains on a CPU.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

from llmrec.base.atomic import check_output, output_directory
from llmrec.base.config import check_config, option
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.sampling import subset
from llmrec.base.device import lightning_accelerator, torch_device
from llmrec.base.errors import CheckpointError, ConfigError
from llmrec.evaluation.fairness_weights import training_sample_weights
from llmrec.llm.checkpoint import (
    BASE_DIR,
    ENCODER_DIR,
    base_folder,
    check_data_matches,
    load_recommender,
    read_facts,
    relative_path,
)
from llmrec.llm.facts import LLMFacts, SdpoFacts
from llmrec.evaluation.metrics import hit_ratio_at_k, target_ranks
from llmrec.llm.hybrid import HybridLM
from llmrec.llm.ranking import score_candidates
from llmrec.llm.ranker import evaluate_split
from llmrec.llm.train import close_llm_run, warn_truncated
from llmrec.preference.datamodule import PreferenceDataModule, PreferenceDataset
from llmrec.preference.losses import PREFERENCE_LOSSES
from llmrec.preference.module import (
    PreferenceModule,
    PreferenceSettings,
    disable_dropout,
    set_trainable,
)
from llmrec.preference.negatives import (
    ALL,
    NegativeSetting,
    check_negatives,
    preference_items,
)
from llmrec.preference.reference import (
    REFERENCE_FILE,
    compute_reference_sharded,
    save_reference,
)
from llmrec.training.keep_best import KeepBest
from llmrec.training.distributed import (
    check_strategy,
    check_valid_shards,
    gather_in_order,
    on_rank_zero,
    positions_of,
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
INDEX_COLUMN = "sample_index"  # a training sample's row in the FULL train split: the reference file's key


class NegativeCount(str):
    """Type of `--negatives` on the command line: the flag's text, which `TrainSDPOConfig` turns into an integer
    >= 1 or the string `all` (a YAML file or Python code may give the integer directly)."""


def parse_negatives(value: Any) -> NegativeSetting:
    """`3`, `"3"` -> 3; `"all"` -> `"all"`; anything else (0, -1, 2.5, "x") -> one-line ConfigError."""
    if isinstance(value, str) and value.strip().lower() == ALL:
        return ALL
    n = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and value.strip().lstrip("+").isdigit():
        n = int(value.strip())
    if n is None or n < 1:
        raise ConfigError(f"option --negatives: got {str(value)!r}, expected an integer >= 1 or all")
    return n


@dataclass
class TrainSDPOConfig:
    sft: Path | None = option(None, "the SFT checkpoint folder to start from (a `llmrec train-llm` output); its "
                                    "frozen copy is the reference model")
    data: Path | None = option(None, "processed dataset folder the SFT model was trained on")
    out: Path | None = option(None, "output checkpoint folder (must not exist or be empty, or be a previous "
                                    "train-sdpo output)")
    negatives: NegativeCount = option(3, "negatives per sample, drawn from its other stored candidates and fixed "
                                         "per sample and seed: an integer >= 1 (1 = DPO) or `all`")
    loss: str = option("sdpo", "sdpo (softmax DPO), dr-sdpo (distributionally robust batch aggregation), "
                               "beta-sdpo (dynamic beta + filtering) or alpha-sdpo (adaptive margin)",
                       choices=tuple(PREFERENCE_LOSSES))  # the choices ARE the registry: no name without a loss
    beta: float = option(1.0, "beta of the implicit reward (S-DPO's authors: 1; alpha-DPO's: 2.5)", min=0,
                         min_exclusive=True)
    beta_prime: float = option(1.0, "dr-sdpo: beta' of the robust aggregation (large values give the plain mean)",
                               min=0, min_exclusive=True)
    beta_rho: float = option(0.2, "beta-sdpo: share of each batch dropped by beta-guided filtering", min=0, max=1,
                             max_exclusive=True)
    beta_alpha: float = option(0.6, "beta-sdpo: how strongly beta follows the batch's mean margin (the paper's a)",
                               min=0)
    alpha: float = option(0.2, "alpha-sdpo: weight of the adaptive reward margin (0 gives SimPO)", min=0)
    gamma_beta_ratio: float = option(0.6, "alpha-sdpo: target reward margin gamma / beta", min=0)
    epochs: int = trainer_option("epochs", 3)
    max_steps: int = trainer_option("max_steps")
    batch_size: int = option(8, "training prompts per batch (each with 1 + N answers)", min=1)
    eval_batch_size: int = option(8, "prompts per ranking / reference batch", min=1)
    lr: float = option(1e-4, "peak learning rate (warmup + cosine), projector included", min=0, min_exclusive=True)
    weight_decay: float = option(0.0, "AdamW weight decay", min=0)
    warmup_ratio: float = option(0.05, "share of steps spent in linear warmup", min=0, max=1)
    val_check_interval: float = trainer_option("val_check_interval")
    max_train_samples: int | None = option(None, "use a seeded random subset of the training samples", min=1)
    max_valid_samples: int | None = option(1000, "rank a seeded random subset of the valid samples (checkpoint "
                                                 "choice); None: all", min=1)
    max_test_samples: int | None = option(None, "rank a seeded random subset of the test samples; None: all", min=1)
    score_norm: Literal["sum", "mean"] | None = option(
        None, "how score mode ranks the candidates (validation, SFT start, test, and the output checkpoint): sum of "
              "each answer's token log-probs or their mean (sum / answer length); None: the SFT checkpoint's rule. "
              "The preference losses always use the sums")
    fairness_weights: Literal["none", "popularity", "genre"] = option(
        "none", "per-sample loss weights from item groups (IFairLRS, docs/design.md §7): each training sample's loss is "
                "multiplied by its target group's weight, normalised to mean 1 over the training set")
    llm: str | None = option(None, "base model folder of a LoRA SFT checkpoint whose base moved (default: the "
                                   "recorded one)")
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "weights dtype of the LLM (bf16 on GPU)")
    device: Device = trainer_option("device")
    precision: str = trainer_option("precision")
    seed: int = trainer_option("seed", 0, "random seed (negatives, shuffling, subsets, beta-sdpo's filter)")
    progress_bar: bool | None = trainer_option("progress_bar")
    resume: bool = trainer_option("resume")
    resume_every: int = trainer_option("resume_every")
    devices: int = trainer_option("devices")
    num_nodes: int = trainer_option("num_nodes")
    strategy: Strategy = trainer_option("strategy")
    accumulate_grad_batches: int = trainer_option("accumulate_grad_batches")

    def __post_init__(self) -> None:
        self.negatives = parse_negatives(self.negatives)  # type: ignore[assignment]

    def settings(self) -> PreferenceSettings:
        return PreferenceSettings(self.loss, self.beta, self.beta_prime, self.beta_rho, self.beta_alpha, self.alpha,
                                  self.gamma_beta_ratio)


def training_weights(config: TrainSDPOConfig, data: ProcessedDataset, train: pd.DataFrame) -> np.ndarray | None:
    """[M] per-sample loss weights of the training samples `train` (rows of the train split), or None for all 1.

    The hook of fairness reweighting (docs/design.md §7): weights are computed over the FULL train split (normalising
    over a subset or a batch would make a sample's weight depend on its neighbours) and picked by
    `train[INDEX_COLUMN]`; they reach the loss per sample through `PromptBatch.weights`.
    """
    if config.fairness_weights == "none":
        return None
    return training_sample_weights(data, config.fairness_weights)[train[INDEX_COLUMN].to_numpy()]


def _check_out(out: Path, sft: Path) -> None:
    if out.resolve() == sft.resolve():
        raise ConfigError(f"--out {out} is the --sft folder; write the preference-trained model to another folder")
    check_output(out, "train-sdpo", error=CheckpointError)


def output_facts(sft: Path, facts: LLMFacts, out: Path, config: TrainSDPOConfig, negatives: int) -> LLMFacts:
    """The checkpoint facts of the S-DPO output: the SFT's (same model layout, prompts and prompt format, data
    fingerprints), where
    the base model of a LoRA checkpoint is found from `out`, the score-mode ranking rule (`--score-norm`, else the
    SFT's), `"stage": "sdpo"` and the S-DPO options."""
    base = facts.base
    if facts.finetune == "lora":
        base_dir = base_folder(sft, facts, config.llm)
        if base_dir == sft / BASE_DIR:  # the tiny base bundled in the SFT folder: copied into the new one
            base = replace(base, tiny_folder=str(base_dir))
        else:
            base = replace(base, path=str(base_dir.resolve()), relative=relative_path(base_dir, out))
    sdpo = SdpoFacts(sft=str(sft.resolve()), loss=config.loss, negatives=negatives, negatives_option=config.negatives,
                     beta=config.beta, beta_prime=config.beta_prime, beta_rho=config.beta_rho,
                     beta_alpha=config.beta_alpha, alpha=config.alpha, gamma_beta_ratio=config.gamma_beta_ratio,
                     seed=config.seed, fairness_weights=config.fairness_weights)
    return replace(facts, score_norm=config.score_norm or facts.score_norm, base=base, stage="sdpo", sdpo=sdpo)


class PreferenceStart(pl.Callback):
    """At the start of the fit, with the SFT weights (before `ResumeCheckpoint` loads a resumed state, which comes
    later in the callbacks): the SFT model's valid `hr@1` (`start`), then the reference log-probs of the training
    samples, written into `train_set.reference` (its loader reads them from the first batch on).

    One process: the start is `evaluate_split` of the valid subset, as `llmrec evaluate` ranks it. Several
    processes: each rank ranks its share of the valid loader (the validation rounds' ranking) and computes its
    share of the reference batches; both are gathered, so every rank holds all of them. The global RNGs are
    left as they were (the training that follows draws what it would have drawn without this).
    """

    def __init__(self, data: ProcessedDataset, train: pd.DataFrame, items: np.ndarray, train_set: PreferenceDataset,
                 config: TrainSDPOConfig):
        self.data, self.train, self.items, self.train_set, self.config = data, train, items, train_set, config
        self.start: float = float("nan")
        self.reference_seconds = self.seconds = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import random

        lm: HybridLM = pl_module.lm
        started = time.perf_counter()
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            was_training = lm.training
            self.start = self._start_hr1(trainer, pl_module)
            lm.train(was_training)
            log.info("SFT start: valid hr@1 %.4f", self.start)
            reference_started = time.perf_counter()
            reference = compute_reference_sharded(pl_module, lm, self.train, self.items, self.config.eval_batch_size)
            self.train_set.reference.copy_(reference)
            self.reference_seconds = time.perf_counter() - reference_started
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        log.info("reference log-probs of %d samples x %d answers in %.1fs", len(self.train), self.items.shape[1],
                 self.reference_seconds)
        self.seconds = time.perf_counter() - started

    def _start_hr1(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        config = self.config
        if trainer.world_size == 1:
            start, _ = evaluate_split(pl_module.lm, self.data, "valid", "score", config.eval_batch_size,
                                      config.max_valid_samples, config.seed + 1)  # the validation rounds' subset
            return float(start["hr@1"])
        loader = trainer.datamodule.val_dataloader()
        pl_module.lm.eval()
        ranks = []
        with torch.no_grad():
            for batch in loader:
                scores = score_candidates(pl_module.lm, batch.to(pl_module.device), hybrid=True)
                ranks.append(target_ranks(scores, batch.target_index).cpu())
        positions, total = positions_of(loader)
        return float(hit_ratio_at_k(gather_in_order(pl_module, torch.cat(ranks), positions, total), 1))


def fit_preference(lm: HybridLM, data: ProcessedDataset, train_set: PreferenceDataset, config: TrainSDPOConfig,
                   log_dir: Path | None = None, resume: ResumeCheckpoint | None = None,
                   callbacks: Sequence[pl.Callback] = ()) -> tuple[PreferenceModule, KeepBest]:
    """Train the policy `lm` (already trainable) with Lightning; the best valid round's weights are restored.
    `resume` saves (and, when it holds a state, restores) the state to resume from; `callbacks` run before it."""
    import pytorch_lightning as pl

    pl.seed_everything(config.seed, workers=True, verbose=False)
    valid = subset(data.split("valid"), config.max_valid_samples, config.seed + 1)
    dm = PreferenceDataModule(train_set, valid, config.batch_size, config.eval_batch_size,
                              summary_max_length=getattr(lm.encoder, "max_length", 50), seed=config.seed)
    module = PreferenceModule(lm, config.settings(), config.lr, config.weight_decay, config.warmup_ratio, config.seed)
    options = TrainerOptions.of(config, log_every_n_steps=1)  # rewards/* every step
    lm.train()
    keep_best, _ = fit_keeping_best(module, dm, options, "valid/hr@1", callbacks, log_dir=log_dir, resume=resume,
                                    what="train-sdpo", divergence_hint=f"lower --lr (it is {config.lr:g}) or --beta")
    warn_truncated(lm)
    return module, keep_best


def run_train_sdpo(config: TrainSDPOConfig) -> int:
    check_config(config)
    if config.sft is None or config.data is None or config.out is None:
        raise ConfigError("train-sdpo needs --sft DIR (a `llmrec train-llm` output), --data DIR and --out DIR")
    check_strategy(config.strategy, lightning_accelerator(config.device), config.devices, config.num_nodes)
    rank, threads = start_process(config.devices, lightning_accelerator(config.device))
    sft, out = Path(config.sft), Path(config.out)
    try:
        facts = read_facts(sft)  # refuses a missing folder or one that is not an LLM checkpoint
    except CheckpointError as e:
        raise CheckpointError(f"option --sft: {e}") from None
    _check_out(out, sft)
    state = prepare_resume(out, "train-sdpo", config, config.resume)
    data = ProcessedDataset.load(config.data)
    check_data_matches(sft, facts, data)
    check_valid_shards(len(data.split("valid")), config.max_valid_samples, config.eval_batch_size, config.devices,
                       config.num_nodes)
    full_train = data.split("train")
    full_train = full_train.assign(**{INDEX_COLUMN: np.arange(len(full_train), dtype=np.int64)})
    n_negatives = check_negatives(config.negatives, full_train, str(data.root))
    train = subset(full_train, config.max_train_samples, config.seed)
    weights = training_weights(config, data, train)
    items = preference_items(train, config.negatives, config.seed)  # [M, 1+N], chosen first

    lm = load_recommender(sft, data, llm=config.llm, device=torch_device(config.device), dtype=config.dtype,
                          score_norm=config.score_norm, facts=facts, merge_adapters=False)  # trained further
    new_facts = output_facts(sft, facts, out, config, n_negatives)
    # only rank 0 builds the output folder (the bundle manifest: hash_all); the other ranks write nothing
    with on_rank_zero(rank, lambda: output_directory(out, "train-sdpo", error=CheckpointError, hash_all=True)) as tmp:
        set_trainable(lm, facts.finetune)
        disable_dropout(lm)
        # the reference log-probs are filled in at the start of the fit (PreferenceStart), with the SFT weights
        train_set = PreferenceDataset(train, lm.builder, items, torch.zeros(items.shape, dtype=torch.float32),
                                      train[INDEX_COLUMN].to_numpy(), weights)
        start = PreferenceStart(data, train, items, train_set, config)
        started = time.time()
        resume = ResumeCheckpoint(resume_folder(out), "train-sdpo", resume_config(config), config.resume_every, state)
        _, keep_best = fit_preference(lm, data, train_set, config, log_dir=tmp, resume=resume, callbacks=[start])
        train_seconds = time.time() - started - start.seconds + resume.seconds_before  # resumed: the whole
        if tmp is None:
            return 0  # not rank 0: rank 0 alone ranks the test split and writes the output folder
        save_reference(tmp / REFERENCE_FILE, train[INDEX_COLUMN].to_numpy(), items, train_set.reference,
                       {"sft": str(sft.resolve()), "negatives": str(n_negatives), "seed": str(config.seed)})
        encoder_dir = sft / ENCODER_DIR if lm.projector is not None else None
        metrics, test = close_llm_run(tmp, lm, data, config, new_facts, encoder_dir, keep_best,
                                      {"sft/valid/hr@1": start.start, "reference_seconds": start.reference_seconds,
                                       "train_seconds": train_seconds, "n_train_samples": len(train),
                                       "negatives": n_negatives, "loss": config.loss,
                                       **run_facts(config.batch_size, config.devices, config.num_nodes,
                                                   config.accumulate_grad_batches, threads)})
    remove_resume_state(out)
    log.info("saved %s: valid hr@1 %.4f (SFT start %.4f), test hr@1 %.4f", out, keep_best.best_score, start.start,
             test["hr@1"])
    print(json.dumps({k: v for k, v in metrics.items() if k != "valid/history"}, indent=2))
    return 0
