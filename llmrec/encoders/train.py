"""`llmrec train-encoder`: train (or count, for MostPop) an encoder, evaluate it and save a checkpoint.

The output folder gets `encoder.safetensors`, `config.yaml` (this resolved config plus the `encoder:`
section `load_encoder` reads), `metrics.json` (valid and test), `items.faiss` (when faiss is installed) and
`logs/` (Lightning CSV and TensorBoard logs). It is written atomically (`llmrec.base.atomic.output_directory`): a
failed or diverged run leaves no half-written folder, an existing `--out` is replaced only if it is itself an
encoder checkpoint, and files a user added to that checkpoint are kept. While training, the state to resume from
is saved to `<out>.resume/` (`llmrec.training.resume`); `--resume` continues an interrupted run from it, and a
finished run removes it.

Several processes (`--devices N`, `--num-nodes M`: Lightning's DDP) split every epoch's batches between them and
each ranks its share of the valid samples (gathered, so every rank keeps the same epoch and stops at the same
time); rank 0 alone then evaluates valid and test and writes the checkpoint (`llmrec.training.distributed`).

The epoch kept is the one with the best VALID metric (`full/ndcg@10` on `loo` data, `candidates/hr@1` on
`llara` data); test metrics are computed once, on that epoch's weights, and never used for any choice.
"""

from __future__ import annotations

import json
import logging
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from llmrec.base.atomic import atomic_write_text
from llmrec.base.config import check_config, option
from llmrec.data.dataset import ProcessedDataset
from llmrec.base.device import check_device, lightning_accelerator
from llmrec.encoders.base import SequentialEncoder
from llmrec.encoders.checkpoint import (
    check_output_dir,
    encoder_output_directory,
    write_encoder_files,
)
from llmrec.encoders.evaluate import HistorySource, monitor_metric
from llmrec.encoders.mostpop import MostPop
from llmrec.encoders.ranker import evaluate_encoder
from llmrec.encoders.registry import build_encoder, encoder_hparam_names
from llmrec.base.errors import ConfigError
from llmrec.training.distributed import (
    check_strategy,
    check_valid_shards,
    on_rank_zero,
    run_facts,
    start_process,
)
from llmrec.training.options import Device, Strategy, TrainerOptions, trainer_option
from llmrec.training.resume import (
    ResumeCheckpoint,
    prepare_resume,
    remove_resume_state,
    resume_config,
    resume_folder,
)

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


@dataclass
class TrainEncoderConfig:
    data: Path | None = option(None, "processed dataset folder written by `llmrec prepare`")
    out: Path | None = option(None, "output folder for the encoder checkpoint (created; must be empty or a "
                                    "previous encoder checkpoint)")
    model: Literal["sasrec", "gru4rec", "caser", "mostpop"] = option("sasrec", "which encoder to train")
    seed: int = trainer_option("seed", 42, "random seed (weights, shuffling, dropout)")
    # --- model hyperparameters (None = the model's own default; see each model's class)
    hidden_size: int | None = option(None, "embedding / hidden size H", min=1)
    num_layers: int | None = option(None, "Transformer blocks (sasrec) or GRU layers (gru4rec)", min=1)
    num_heads: int | None = option(None, "attention heads (sasrec)", min=1)
    ffn_size: int | None = option(None, "feed-forward width (sasrec; default 4 * hidden)", min=1)
    gru_size: int | None = option(None, "GRU state size (gru4rec; default 2 * hidden)", min=1)
    num_horizontal: int | None = option(None, "horizontal filters per height (caser)", min=1)
    num_vertical: int | None = option(None, "vertical filters (caser)", min=1)
    dropout: float | None = option(None, "dropout rate", min=0, max=1, max_exclusive=True)
    attn_dropout: float | None = option(None, "dropout on attention probabilities (sasrec)", min=0, max=1,
                                        max_exclusive=True)
    max_length: int | None = option(None, "history length the encoder reads (most recent items; caser: its "
                                          "window L). Longer histories are truncated to the most recent items",
                                    min=1)
    # --- optimisation
    train_length: int | None = option(None, "training window length (default: max_length; caser: 50)",
                                      min=1)
    loss: Literal["ce", "bce"] = option("ce", "full-softmax cross-entropy, or BCE with sampled negatives")
    num_negatives: int = option(1, "negatives per target for --loss bce", min=1)
    lr: float = option(1e-3, "Adam learning rate", min=0, min_exclusive=True)
    weight_decay: float = option(0.0, "decoupled weight decay (AdamW) when > 0", min=0)
    batch_size: int = option(64, "training windows per batch", min=1)
    max_epochs: int = trainer_option("epochs", 200, "upper bound on training epochs")
    patience: int = option(10, "stop after this many validations without a better VALID metric",
                           min=0)
    min_epochs: int = option(1, "train at least this many epochs", min=1)
    # --- evaluation
    eval_history: HistorySource = option("auto", "history the encoder reads at evaluation: the user's whole "
                                                 "earlier `sequence`, the stored `sample` history, or `auto` "
                                                 "(sequence for loo, sample for llara)")
    exclude_seen: bool = option(True, "exclude the user's earlier items from full ranking")
    eval_batch_size: int = option(128, "samples per evaluation batch (sorted by history length: small "
                                           "batches carry little padding)", min=1)
    # --- machinery
    device: Device = trainer_option("device")
    progress_bar: bool | None = trainer_option("progress_bar")
    resume: bool = trainer_option("resume")
    resume_every: int = trainer_option("resume_every", 500, "save the state to resume from every this many "
                                                            "optimiser steps (and after each epoch's validation)")
    devices: int = trainer_option("devices")
    num_nodes: int = trainer_option("num_nodes")
    strategy: Strategy = trainer_option("strategy")
    accumulate_grad_batches: int = trainer_option("accumulate_grad_batches")

    def trainer_options(self, n_batches: int) -> TrainerOptions:
        """The trainer of this stage: `--max-epochs`, at least `--min-epochs`, deterministic kernels, and a logged
        point every epoch for short epochs (`n_batches` training batches per epoch)."""
        return TrainerOptions.of(self, epochs=self.max_epochs, log_every_n_steps=max(1, min(50, n_batches)),
                                 deterministic=True)


def _validate(config: TrainEncoderConfig) -> None:
    if config.data is None:
        raise ConfigError("--data is required: a folder written by `llmrec prepare`")
    if config.out is None:
        raise ConfigError("--out is required: the folder to write the encoder checkpoint to")
    check_config(config)  # every option's declared range (the Python API skips resolve_config)
    check_device(config.device)
    check_strategy(config.strategy, lightning_accelerator(config.device), config.devices, config.num_nodes)


def model_hparams(config: TrainEncoderConfig) -> dict[str, Any]:
    """The hyperparameters given in `config` that `config.model` accepts (unset ones keep model defaults)."""
    names = encoder_hparam_names(config.model)
    given = {n: getattr(config, n) for n in names if hasattr(config, n) and getattr(config, n) is not None}
    ignored = [f"--{f.replace('_', '-')}" for f in ("hidden_size", "num_layers", "num_heads", "ffn_size", "gru_size",
                                                    "num_horizontal", "num_vertical", "dropout", "attn_dropout")
               if getattr(config, f) is not None and f not in names]
    if ignored:
        log.warning("%s ignores %s", config.model, ", ".join(ignored))
    return given


def fit_encoder(encoder: SequentialEncoder, data: ProcessedDataset, config: TrainEncoderConfig,
                log_dir: Path | None = None, resume: ResumeCheckpoint | None = None) -> dict[str, Any]:
    """Train `encoder` in place, restoring the best-VALID epoch's weights. Returns training facts. `resume` saves
    (and, when it holds a state, restores) the state to resume from."""
    from pytorch_lightning.callbacks import EarlyStopping

    from llmrec.encoders.datamodule import EncoderDataModule
    from llmrec.encoders.module import EncoderModule
    from llmrec.training.trainer import fit_keeping_best

    train_length = config.train_length or (50 if config.model == "caser" else encoder.max_length)
    if config.model == "sasrec" and train_length > encoder.max_length:
        raise ConfigError(f"--train-length {train_length} exceeds sasrec's --max-length {encoder.max_length} "
                          f"(it has no position embedding beyond that)")
    dm = EncoderDataModule(data, encoder.max_length, train_length, config.batch_size, config.eval_batch_size,
                           config.seed, config.eval_history, config.exclude_seen)
    monitor = monitor_metric(data.protocol)
    module = EncoderModule(encoder, dm.valid_set, monitor, config.lr, config.weight_decay, config.loss,
                           config.num_negatives)
    n_batches = -(-len(dm.windows) // config.batch_size)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")  # raised inside Lightning itself with recent torch
    # early stopping decides right after each validation (not at the epoch's end), so a resume state saved after a
    # validation already holds its decision
    early_stopping = EarlyStopping(monitor=f"valid/{monitor}", mode="max", patience=config.patience,
                                   check_on_train_epoch_end=False)
    start = time.perf_counter()
    keep_best, trainer = fit_keeping_best(module, dm, config.trainer_options(n_batches), f"valid/{monitor}",
                                          [early_stopping], log_dir=log_dir, resume=resume, what="train-encoder",
                                          divergence_hint=f"lower --lr (it is {config.lr:g})")
    # a resumed run reports its whole training time, the processes before the resume included
    seconds = time.perf_counter() - start + (resume.seconds_before if resume is not None else 0.0)
    encoder.cpu()
    history = [{"epoch": h["epoch"], **{k.removeprefix("valid/"): v for k, v in h.items() if k.startswith("valid/")}}
               for h in keep_best.history]
    return {"best_epoch": keep_best.best_epoch, "epochs": trainer.current_epoch, "train_seconds": seconds,
            "seconds_to_best_epoch": keep_best.seconds_to_best, "monitor": f"valid/{monitor}",
            "n_train_targets": dm.n_train_targets, "n_train_windows": len(dm.windows),
            "train_length": train_length, "valid_history": history}


def run_train_encoder(config: TrainEncoderConfig) -> int:
    _validate(config)
    assert config.data is not None and config.out is not None
    rank, threads = start_process(config.devices, lightning_accelerator(config.device))
    data = ProcessedDataset.load(config.data)
    if config.model != "mostpop":  # MostPop only counts, in one process
        check_valid_shards(len(data.split("valid")), None, config.eval_batch_size, config.devices, config.num_nodes)
    out = Path(config.out)
    check_output_dir(out)
    # MostPop only counts: it has nothing to resume
    state = prepare_resume(out, "train-encoder", config, config.resume and config.model != "mostpop")
    if data.protocol == "llara" and data.meta.get("eval_positions") == "last":
        log.warning("%s has one valid sample per valid user (%d in all): too few to choose an epoch by; "
                    "prepare with `--eval-positions all` for a reliable choice", data.root, len(data.split("valid")))
    import pytorch_lightning as pl

    pl.seed_everything(config.seed, workers=True, verbose=False)
    encoder = build_encoder(config.model, data.n_items, **model_hparams(config))
    # only rank 0 builds the output folder; the other ranks (None) write nothing and end with the training
    with on_rank_zero(rank, lambda: encoder_output_directory(out)) as tmp:
        if isinstance(encoder, MostPop):
            start = time.perf_counter()
            sequences = data.train_sequences()
            encoder.fit(sequences)
            facts: dict[str, Any] = {"best_epoch": 0, "epochs": 0, "train_seconds": time.perf_counter() - start,
                                     "seconds_to_best_epoch": 0.0, "monitor": f"valid/{monitor_metric(data.protocol)}",
                                     "n_train_targets": int(sum(len(s) for s in sequences))}
        else:
            resume = ResumeCheckpoint(resume_folder(out), "train-encoder", resume_config(config),
                                      config.resume_every, state)
            facts = fit_encoder(encoder, data, config, log_dir=tmp, resume=resume)
        if tmp is None:
            return 0  # not rank 0: rank 0 alone evaluates valid and test and writes the checkpoint
        encoder.eval()
        results = {}
        for split in ("valid", "test"):
            results[split] = evaluate_encoder(encoder, data, split, config.eval_history, config.exclude_seen,
                                              config.eval_batch_size)
        history = facts.pop("valid_history", None)
        metrics = {**results, **facts, "seed": config.seed, "protocol": data.protocol,
                   "eval_positions": data.meta.get("eval_positions"), "model": config.model,
                   "mode": "full" if data.protocol == "loo" else "candidates",
                   "n_samples": results["test"]["n_samples"], "torch_threads": torch.get_num_threads(),
                   "machine": platform.platform(),
                   **{k: v for k, v in run_facts(config.batch_size, config.devices, config.num_nodes,
                                                 config.accumulate_grad_batches, threads).items()
                      if k != "torch_threads"}}
        write_encoder_files(encoder, tmp, data, config)
        atomic_write_text(tmp / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
        if history:
            atomic_write_text(tmp / "logs" / "valid_history.json", json.dumps(history, indent=1) + "\n")
    remove_resume_state(out)
    monitor = facts["monitor"].removeprefix("valid/")
    keys = [k for k in ("full/hr@10", "full/ndcg@10", "candidates/hr@1", "candidates/ndcg@5",
                        "candidates/hr@1_last") if k in results["test"]]
    print(f"{config.model} on {data.root} ({data.protocol}); best epoch {facts['best_epoch']} by valid "
          f"{monitor}, trained {facts['train_seconds']:.1f}s; checkpoint: {out}")
    for split in ("valid", "test"):
        print(f"  {split:5s} " + "  ".join(f"{k}={results[split][k]:.4f}" for k in keys))
    return 0
