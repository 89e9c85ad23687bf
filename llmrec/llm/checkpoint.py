"""Saving and loading a trained LLM recommender: a self-contained folder that can be moved or copied.

A checkpoint folder holds
    checkpoint.json       facts needed to rebuild the model and to refuse mismatches (`llmrec.llm.facts.LLMFacts`):
                          format marker, prompt kind, catalog and split fingerprints, the base model's fingerprint
                          (config, tokenizer, weight probe) and where it was, embedding rows, encoder fingerprint,
                          the score-mode ranking rule `score_norm` (`sum` or `mean`; absent in older checkpoints:
                          `sum`), the prompt format `prompt_format` (`chat`; absent: `plain`)
    config.yaml           the resolved training config
    catalog.parquet       item ids, titles (and genres) the prompts are built from, with the prompt domain
    tokenizer/            the tokenizer with the slot tokens (save_pretrained)
    encoder/              a copy of the frozen encoder's checkpoint (weights, config, faiss index) -- hybrid prompts
    projector.safetensors the projector                                                  -- hybrid prompts
    model/                all weights of the fine-tuned LM (save_pretrained, safetensors)  -- finetune: full
    adapter/              LoRA adapter + trained slot-token rows (peft, safetensors)        -- finetune: lora
    new_token_rows.safetensors  input/output embedding rows from the first slot token on    -- finetune: lora
    base/                 the tiny Llama's base weights (a few MB)                           -- finetune: lora, --llm tiny
A model trained on the first K decoder layers of its base (`train-llm --llm-layers K`, `llm_layers` in the facts)
saves the cut model (full fine-tuning) or the adapter of the cut model (LoRA): loading then finds the WHOLE base,
checks its fingerprint (always that of the base as it is on disk) and keeps its first K layers before the adapter
goes on.
    metrics.json
Nothing refers to a path outside the folder except the base model of a LoRA checkpoint on a real LLM, which is
too large to copy: it is found at `--llm PATH`, else at its recorded path, else at its recorded path relative
to the checkpoint folder, and it must have the recorded fingerprint. Loading never unpickles: safetensors,
JSON, YAML and parquet only. `checkpoint.json` is read once per load: callers that already hold the facts pass
them (`load_recommender(..., facts=...)`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmrec.base.markers import write_marker
from llmrec.data.catalog import Catalog
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.fingerprint import split_mismatch
from llmrec.encoders.base import SequentialEncoder
from llmrec.encoders.checkpoint import load_encoder
from llmrec.base.errors import CheckpointError, ConfigError
from llmrec.llm import backbone
from llmrec.llm.backbone_presets import PRESETS
from llmrec.llm.facts import FACTS_FILE, SPEC, LLMFacts, read_llm_facts
from llmrec.llm.hybrid import SCORE_NORMS, HybridLM, ScoreNorm
from llmrec.llm.lora import load_lora
from llmrec.llm.recommender import assemble_recommender

MARKER, FORMAT_VERSION, FACTS = SPEC.kind, SPEC.version, FACTS_FILE
NEW_ROWS = "new_token_rows.safetensors"
PROJECTOR = "projector.safetensors"
ENCODER_DIR, BASE_DIR, MODEL_DIR, ADAPTER_DIR, TOKENIZER_DIR = "encoder", "base", "model", "adapter", "tokenizer"
ENCODER_FILES = ("encoder.safetensors", "config.yaml", "items.faiss", "metrics.json")
log = logging.getLogger(__name__)


def embedding_weight(module: torch.nn.Module) -> torch.Tensor:
    """The plain weight under peft's wrappers (trainable-token or LoRA layers) of an embedding or LM head."""
    if hasattr(module, "token_adapter"):
        module = module.token_adapter.base_layer
    while hasattr(module, "base_layer"):
        module = module.base_layer
    return module.weight


def encoder_fingerprint(encoder: SequentialEncoder) -> str:
    """sha256 of the encoder's weights (names, shapes, float32 values): the projector was trained on THIS encoder's
    vector space, so a checkpoint refuses any other one, even of the same shape (another seed, a retrained model)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(values.shape)};".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint folder {path.parent} is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: damaged or not a safetensors file ({e}); re-run the command that wrote "
                              f"{path.parent}") from None


def save_checkpoint(folder: Path, lm: HybridLM, facts: LLMFacts, catalog: Catalog,
                    encoder_dir: Path | None = None) -> Path:
    """Write the trainable state of `lm`, `facts` and copies of what loading needs into `folder`.

    `facts` comes from `llmrec.llm.train.build_recommender`; `encoder_dir` is the encoder checkpoint folder of
    a hybrid model (copied into `encoder/`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lm.builder.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
    catalog.save(folder)
    if facts.finetune == "lora":
        lm.model.save_pretrained(folder / ADAPTER_DIR, save_embedding_layers=False)
        # rows from the first slot token to the end of the (possibly padded) matrix: the slot tokens' initial
        # rows (their trained values live in the adapter) and, for a padded vocabulary, the padding rows, so
        # the logits' normaliser is identical after loading
        first = facts.first_new_row
        rows = {"input": embedding_weight(lm.model.get_input_embeddings())[first:],
                "output": embedding_weight(lm.model.get_output_embeddings())[first:]}
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in rows.items()}, str(folder / NEW_ROWS))
        if facts.base.tiny_folder:
            shutil.copytree(facts.base.tiny_folder, folder / BASE_DIR)
    else:
        lm.model.save_pretrained(folder / MODEL_DIR)
    if lm.projector is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in lm.projector.state_dict().items()},
                  str(folder / PROJECTOR))
        if encoder_dir is None:
            raise CheckpointError("a hybrid checkpoint needs the encoder folder it was trained with")
        (folder / ENCODER_DIR).mkdir()
        for name in ENCODER_FILES:
            if (Path(encoder_dir) / name).is_file():
                shutil.copy2(Path(encoder_dir) / name, folder / ENCODER_DIR / name)
    write_marker(folder / FACTS, SPEC, facts.to_dict())
    return folder


def read_facts(folder: Path) -> LLMFacts:
    """The facts (`checkpoint.json`) of LLM checkpoint `folder`; one-line `CheckpointError` when it is not one."""
    return read_llm_facts(folder)


def is_llm_checkpoint(folder: Path) -> bool:
    try:
        read_facts(folder)
        return True
    except CheckpointError:
        return False


def check_data_matches(folder: Path, facts: LLMFacts, data: ProcessedDataset) -> None:
    """The data must be the catalog and the split the checkpoint was trained on."""
    if facts.catalog_fingerprint != data.catalog_fingerprint():
        raise CheckpointError(f"{folder} was trained on another catalog than {data.root} (catalog fingerprints "
                              f"differ); evaluate it on the dataset it was trained on")
    why = split_mismatch(facts.split, data)
    if why:
        raise CheckpointError(f"{folder} cannot be used with {data.root}: {why}; use the prepared dataset it was "
                              f"trained on, or train a model on {data.root} (`llmrec train-llm --data {data.root}`)")


def base_folder(folder: Path, facts: LLMFacts, llm: str | Path | None) -> Path:
    """Where the base model of a LoRA checkpoint is: --llm, the bundled tiny base, the recorded path, or the
    recorded path relative to the checkpoint folder (a checkpoint and its base moved together), or, for a base made
    from a preset or a GGUF file, that source dequantised again (into the default cache)."""
    if llm is not None and str(llm) != backbone.TINY:
        return backbone.resolve_backbone(llm)
    if (folder / BASE_DIR / "config.json").is_file():
        return folder / BASE_DIR
    base = facts.base
    for candidate in (Path(base.path), (folder / base.relative) if base.relative else None):
        if candidate is not None and (candidate / "config.json").is_file():
            return candidate
    if base.source is not None and (base.source in PRESETS or Path(base.source).is_file()):
        # a preset or a GGUF file: dequantise it again here (the fingerprint check that follows proves it is the same)
        return backbone.resolve_backbone(base.source)
    raise CheckpointError(f"{folder}: its base model {base.path} is not there (nor at {base.relative} "
                          f"relative to the checkpoint); pass the base model with --llm (its folder, .gguf file "
                          f"or preset name{f': it was made from {base.source}' if base.source else ''})")


def load_recommender(folder: Path, data: ProcessedDataset | None = None, encoder: SequentialEncoder | None = None,
                     llm: str | Path | None = None, device: str | torch.device = "cpu",
                     dtype: str = "float32", score_norm: ScoreNorm | None = None, facts: LLMFacts | None = None
                     ) -> HybridLM:
    """Rebuild the `HybridLM` saved in `folder`, on `device`, in eval mode.

    Everything comes from the folder itself: catalog, tokenizer (with its chat template), encoder copy, weights,
    the prompt format, the score-mode ranking rule. `data`, when given, must be the catalog and split the model was trained on. `encoder` overrides the
    bundled encoder (it must be the same weights); `llm` gives the base model folder of a LoRA checkpoint whose
    base moved; `score_norm` overrides the recorded ranking rule (None: the checkpoint's). `facts` are the
    folder's facts when the caller already read them (`read_facts`), so `checkpoint.json` is read once.
    """
    folder = Path(folder)
    facts = facts if facts is not None else read_facts(folder)
    if score_norm is not None and score_norm not in SCORE_NORMS:
        raise ConfigError(f"option --score-norm: got {score_norm!r}, expected one of {', '.join(SCORE_NORMS)}")
    if data is not None:
        check_data_matches(folder, facts, data)
    catalog = Catalog.load(folder)
    if catalog.fingerprint() != facts.catalog_fingerprint:
        raise CheckpointError(f"{folder / 'catalog.parquet'} was altered: its fingerprint differs from the one in "
                              f"{FACTS}")
    tokenizer = backbone.load_tokenizer(folder / TOKENIZER_DIR)
    if facts.finetune == "full":
        if llm is not None and str(llm) != backbone.TINY:
            log.warning("--llm %s ignored: %s holds all weights of its model (full fine-tuning)", llm, folder)
        model = backbone.load_causal_lm(folder / MODEL_DIR, dtype=dtype)  # saved already cut (--llm-layers)
        kept = len(backbone.decoder_layers(model)) if facts.llm_layers is not None else None
        if kept is not None and kept != facts.llm_layers:
            raise CheckpointError(f"{folder / MODEL_DIR} has {kept} decoder layers but {FACTS} records llm_layers "
                                  f"{facts.llm_layers}; the folder is inconsistent")
    else:
        base_dir = base_folder(folder, facts, llm)
        model = backbone.load_causal_lm(base_dir, dtype=dtype)
        why = backbone.fingerprint_mismatch(facts.base.fingerprint,
                                            backbone.base_fingerprint(base_dir, model,
                                                                      backbone.load_tokenizer(base_dir)))
        if why:
            raise CheckpointError(f"base model {base_dir} does not fit {folder}: {why} ({facts.base.path}); "
                                  f"pass that base model with --llm PATH")
        if facts.llm_layers is not None:  # the fingerprint is the whole base's; the adapter fits its first K layers
            backbone.keep_first_layers(model, facts.llm_layers, f"base model {base_dir}")
        rows = facts.embedding_rows
        if backbone.embedding_rows(model) < rows:  # never shrink: a padded vocabulary keeps its padding rows
            model.resize_token_embeddings(rows, mean_resizing=False)
        saved = _safetensors(folder / NEW_ROWS)
        with torch.no_grad():
            for key, emb in (("input", model.get_input_embeddings()), ("output", model.get_output_embeddings())):
                w = embedding_weight(emb)
                w[facts.first_new_row:] = saved[key].to(w.dtype)
        model = load_lora(model, folder / ADAPTER_DIR)
    if len(tokenizer) != facts.vocab_size or backbone.embedding_rows(model) != facts.embedding_rows:
        raise CheckpointError(f"{folder}: tokenizer has {len(tokenizer)} tokens and the model "
                              f"{backbone.embedding_rows(model)} embedding rows, the checkpoint records "
                              f"{facts.vocab_size} and {facts.embedding_rows}; the folder is inconsistent")
    if facts.hybrid:
        if encoder is None:
            encoder = load_encoder(folder / ENCODER_DIR, data)
        if encoder_fingerprint(encoder) != facts.encoder_fingerprint:
            raise CheckpointError(f"{folder}: the given encoder's weights differ from those it was trained with "
                                  f"(bundled in {folder / ENCODER_DIR}); leave --encoder out to use the bundled one")
    projector = _safetensors(folder / PROJECTOR) if facts.hybrid else None
    lm = assemble_recommender(model, tokenizer, catalog, facts.prompt, encoder, facts.max_length,
                              facts.seed, projector, score_norm=score_norm or facts.score_norm,
                              prompt_format=facts.prompt_format)
    return lm.to(device).eval()


def relative_path(target: Path, start: Path) -> str | None:
    """`target` relative to `start` (None across drives)."""
    try:
        return os.path.relpath(Path(target).resolve(), Path(start).resolve())
    except ValueError:
        return None
