"""Encoder checkpoints: a folder holding `encoder.safetensors`, `config.yaml` and (with faiss) `items.faiss`.

`config.yaml` holds the resolved training config (top-level keys, when the encoder was trained by
`llmrec train-encoder`) and an `encoder:` section with everything needed to rebuild the model without
unpickling anything: format marker, model name, hyperparameters, n_items, the dataset's name / protocol /
seed and its `catalog_fingerprint`. `load_encoder(path, data)` refuses a folder that is not an encoder
checkpoint, and a `data` whose item count or catalog differs from the one the encoder was trained on.
"""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from llmrec.base.atomic import (
    LegacyOutput,
    PreviousOutput,
    atomic_write,
    check_output,
    output_directory,
)
from llmrec.base.config import config_to_dict, save_config
from llmrec.base.weights import read_safetensors, refuse_pickled, tensor_mismatch
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.fingerprint import split_fingerprint, split_mismatch
from llmrec.encoders.base import SequentialEncoder
from llmrec.encoders.facts import CONFIG_FILE, SPEC, EncoderFacts, TrainedOn, read_encoder_facts
from llmrec.encoders.index import INDEX_FILE, ItemIndex, faiss_available
from llmrec.encoders.registry import build_encoder
from llmrec.base.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = SPEC.kind, SPEC.version
WEIGHTS_FILE = "encoder.safetensors"


def encoder_facts(encoder: SequentialEncoder, data: ProcessedDataset | None = None) -> EncoderFacts:
    """The facts of `encoder` (trained on `data`, when given): the `encoder:` section of `config.yaml`."""
    model = getattr(encoder, "model_name", None)
    if model is None:
        raise CheckpointError("this encoder was not made by `build_encoder`, so it cannot be rebuilt from a "
                              "checkpoint; create it with `llmrec.encoders.build_encoder(name, n_items, ...)`")
    trained_on = {}
    if data is not None:
        if data.n_items != encoder.n_items:
            raise CheckpointError(f"encoder has {encoder.n_items} items but the data have {data.n_items}")
        meta = data.meta
        trained_on = {"dataset": TrainedOn(name=meta.get("dataset", meta.get("name", data.root.name if data.root
                                                                              else None)),
                                           protocol=data.protocol, seed=meta.get("seed"),
                                           eval_positions=meta.get("eval_positions"),
                                           path=str(data.root) if data.root else None),
                      "catalog_fingerprint": data.catalog_fingerprint(), "split": split_fingerprint(data)}
    return EncoderFacts(model=str(model), hparams=dict(getattr(encoder, "hparams", {})), n_items=int(encoder.n_items),
                        hidden_size=int(encoder.hidden_size), max_length=int(encoder.max_length), **trained_on)


def write_encoder_files(encoder: SequentialEncoder, folder: Path, data: ProcessedDataset | None = None,
                        config: Any = None, index: bool = True) -> None:
    """Write weights, config.yaml and (if faiss is installed and `index`) items.faiss into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    facts = encoder_facts(encoder, data)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={
        "format": FORMAT, "model": facts.model}))
    extra = {"encoder": facts.to_dict(), "versions": {"torch": str(torch.__version__)}}
    if config is not None:
        save_config(config, folder, CONFIG_FILE, extra=extra)
    else:
        atomic_write(folder / CONFIG_FILE, lambda tmp: tmp.write_text(
            yaml.safe_dump(config_to_dict(extra), sort_keys=False, allow_unicode=True), encoding="utf-8"))
    if index:
        if faiss_available():
            with torch.no_grad():
                ItemIndex.build(encoder.item_embeddings()).save(folder / INDEX_FILE)
        else:
            log.warning("faiss is not installed: %s has no %s (build it later with ItemIndex.build)",
                        folder, INDEX_FILE)


def is_encoder_checkpoint(path: str | os.PathLike) -> bool:
    try:
        read_encoder_facts(Path(path))
        return True
    except CheckpointError:
        return False


OUTPUT_COMMAND = "train-encoder"
# encoder checkpoints written before `.llmrec-output.json`: proven by config.yaml's `encoder:` section
LEGACY_OUTPUT = LegacyOutput(is_encoder_checkpoint, (WEIGHTS_FILE, CONFIG_FILE, "metrics.json", INDEX_FILE, "logs"))


def check_output_dir(path: Path) -> PreviousOutput | None:
    """Refuse an output path that exists and is neither empty nor an encoder checkpoint (never deletes it)."""
    return check_output(path, OUTPUT_COMMAND, legacy=LEGACY_OUTPUT, what="an encoder checkpoint",
                        error=CheckpointError)


def encoder_output_directory(path: Path) -> AbstractContextManager[Path]:
    """`llmrec.base.atomic.output_directory` for an encoder checkpoint: yields the temporary folder to fill."""
    return output_directory(path, OUTPUT_COMMAND, legacy=LEGACY_OUTPUT, what="an encoder checkpoint",
                            error=CheckpointError)


def save_encoder(encoder: SequentialEncoder, folder: str | os.PathLike, data: ProcessedDataset | None = None,
                 config: Any = None, index: bool = True) -> Path:
    """Write an encoder checkpoint folder atomically (replacing only a previous encoder checkpoint, and
    keeping the files a user added to it: see `llmrec.base.atomic`)."""
    folder = Path(folder)
    with encoder_output_directory(folder) as tmp:
        write_encoder_files(encoder, tmp, data, config, index)
    return folder


def load_encoder(path: str | os.PathLike, data: ProcessedDataset | None = None,
                 map_location: str | torch.device = "cpu") -> SequentialEncoder:
    """Rebuild the encoder saved in `path` (in eval mode) and check it fits `data`.

    Raises CheckpointError when `path` is not an encoder checkpoint, its weights do not match its config, or
    `data` has a different item count or catalog (item ids/titles) than the data it was trained on.
    """
    path = Path(path)
    facts = read_encoder_facts(path)
    if data is not None:
        if facts.n_items != data.n_items:
            raise CheckpointError(f"encoder checkpoint {path} was trained on {facts.n_items} items but the "
                                  f"data {data.root or ''} have {data.n_items}; use the same prepared dataset")
        fp = facts.catalog_fingerprint
        if fp is not None and fp != data.catalog_fingerprint():
            raise CheckpointError(f"encoder checkpoint {path} was trained on another catalog (item ids/titles "
                                  f"differ from {data.root or 'the data'}: catalog fingerprint mismatch); "
                                  f"use the dataset it was trained on or retrain it")
        why = split_mismatch(facts.split, data)
        if why:
            raise CheckpointError(f"encoder checkpoint {path} cannot be used with {data.root or 'the data'}: {why}; "
                                  f"train an encoder on it: `llmrec train-encoder --data {data.root or 'DATA'} "
                                  f"--out DIR`")
    weights = path / WEIGHTS_FILE
    if not (weights.exists() or weights.is_symlink()):
        refuse_pickled(path, WEIGHTS_FILE)  # never unpickled: a `.pt`/`.bin` stand-in is named and refused
        raise CheckpointError(f"{path}: {WEIGHTS_FILE} is missing")
    try:
        encoder = build_encoder(facts.model, facts.n_items, **facts.hparams)
    except ConfigError as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: {e}") from None
    state = read_safetensors(weights, device=str(map_location))  # a damaged file: one line naming it
    why = tensor_mismatch({k: tuple(v.shape) for k, v in encoder.state_dict().items()},
                          {k: tuple(v.shape) for k, v in state.items()})
    if why:
        raise CheckpointError(f"{weights} does not match the {facts.model} described in {CONFIG_FILE}: {why}")
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{weights} does not match the {facts.model} described in {CONFIG_FILE}: "
                              f"{' '.join(str(e).split())[:400]}") from None
    return encoder.to(map_location).eval()
