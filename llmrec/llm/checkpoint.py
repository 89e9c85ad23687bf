"""Saving and loading a trained LLM recommender: only what training changed, all in safetensors.

A checkpoint folder holds
    checkpoint.json       facts needed to rebuild the model and to refuse mismatches (format marker, base model
                          path, base vocabulary and hidden size, prompt kind, catalog fingerprint, encoder path)
    config.yaml           the resolved training config
    tokenizer/            the tokenizer with the slot tokens (save_pretrained)
    projector.safetensors the projector (absent for text-only prompts)
    adapter/              LoRA adapter + trained slot-token rows (peft, safetensors)     -- finetune: lora
    new_token_rows.safetensors  the slot tokens' initial input/output embedding rows      -- finetune: lora
    model/                full weights (save_pretrained, safetensors)                    -- finetune: full
    metrics.json
Loading never unpickles: safetensors, JSON and YAML only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llmrec.atomic import atomic_write_text
from llmrec.data.dataset import ProcessedDataset
from llmrec.encoders.base import SequentialEncoder
from llmrec.errors import CheckpointError
from llmrec.llm import backbone
from llmrec.llm.hybrid import HybridLM
from llmrec.llm.lora import load_lora
from llmrec.llm.projector import Projector
from llmrec.llm.prompts import PromptBuilder

MARKER = "llmrec-llm-checkpoint"
FORMAT_VERSION = 1
FACTS = "checkpoint.json"
NEW_ROWS = "new_token_rows.safetensors"
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


def save_checkpoint(folder: Path, lm: HybridLM, facts: dict[str, Any]) -> Path:
    """Write the trainable state of `lm` and `facts` into `folder` (which the caller created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lm.builder.tokenizer.save_pretrained(folder / "tokenizer")
    if facts["finetune"] == "lora":
        lm.model.save_pretrained(folder / "adapter", save_embedding_layers=False)
        # the rows `resize_token_embeddings` added for the slot tokens are random: keep them (a few rows) so the
        # logits' normaliser is identical after loading
        base_vocab = facts["base_vocab_size"]
        rows = {"input": embedding_weight(lm.model.get_input_embeddings())[base_vocab:],
                "output": embedding_weight(lm.model.get_output_embeddings())[base_vocab:]}
        save_file({k: v.detach().float().cpu().clone() for k, v in rows.items()},
                  str(folder / NEW_ROWS))
    else:
        lm.model.save_pretrained(folder / "model")
    if lm.projector is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in lm.projector.state_dict().items()},
                  str(folder / "projector.safetensors"))
    atomic_write_text(folder / FACTS, json.dumps({"format": MARKER, "format_version": FORMAT_VERSION, **facts},
                                                 indent=2) + "\n")
    return folder


def read_facts(folder: Path) -> dict[str, Any]:
    folder = Path(folder)
    f = folder / FACTS
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist; train one with `llmrec train-llm`")
    if not f.is_file():
        raise CheckpointError(f"{folder} is not an LLM checkpoint (no {FACTS}); expected a `llmrec train-llm` "
                              f"output folder")
    try:
        facts = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from None
    if facts.get("format") != MARKER or facts.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{f}: not a version-{FORMAT_VERSION} llmrec LLM checkpoint")
    return facts


def check_base_matches(model: torch.nn.Module, facts: dict[str, Any], where: str) -> None:
    """The base model must be the one the checkpoint was trained on: same hidden size and vocabulary."""
    hidden = backbone.hidden_size(model)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    if hidden != facts["llm_hidden"]:
        raise CheckpointError(f"{where}: base model hidden size {hidden} but the checkpoint was trained on hidden "
                              f"size {facts['llm_hidden']} (base {facts['base_model']}); pass the matching --llm")
    if vocab != facts["base_vocab_size"]:
        raise CheckpointError(f"{where}: base model vocabulary {vocab} but the checkpoint was trained on a "
                              f"vocabulary of {facts['base_vocab_size']} (base {facts['base_model']}); pass the "
                              f"matching --llm")


def load_recommender(folder: Path, data: ProcessedDataset, encoder: SequentialEncoder | None = None,
                     llm: str | Path | None = None, device: str | torch.device = "cpu",
                     dtype: str = "float32") -> HybridLM:
    """Rebuild the `HybridLM` saved in `folder` for `data` (same catalog), on `device`, in eval mode.

    `encoder` must be given for hybrid prompts (see `llmrec.llm.train.load_encoder_for`); `llm` overrides the
    base model path recorded in the checkpoint (for LoRA checkpoints whose base moved).
    """
    folder = Path(folder)
    facts = read_facts(folder)
    if facts["catalog_fingerprint"] != data.catalog_fingerprint():
        raise CheckpointError(f"{folder} was trained on another catalog than {data.root} (catalog fingerprints "
                              f"differ); evaluate it on the dataset it was trained on")
    tokenizer = backbone.load_tokenizer(folder / "tokenizer")
    given = llm is not None and str(llm) != backbone.TINY
    if facts["finetune"] == "full":
        if given:
            log.warning("--llm %s ignored: %s holds all weights of its model (full fine-tuning)", llm, folder)
        model = backbone.load_causal_lm(folder / "model", dtype=dtype)
    else:
        base = backbone.check_model_folder(Path(llm)) if given else Path(facts["base_model"])
        if not given and facts.get("tiny") and not base.exists():  # the tiny base is deterministic: rebuild it
            spec = backbone.TinySpec(**facts["tiny"])
            base = backbone.build_tiny_llm(data.titles(), data.catalog_fingerprint(), base.parent, spec)
        model = backbone.load_causal_lm(base, dtype=dtype)
        check_base_matches(model, facts, f"--llm {base}")
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        rows = load_file(str(folder / NEW_ROWS))
        with torch.no_grad():
            for key, emb in (("input", model.get_input_embeddings()), ("output", model.get_output_embeddings())):
                w = embedding_weight(emb)
                w[facts["base_vocab_size"]:] = rows[key].to(w.dtype)
        model = load_lora(model, folder / "adapter")
    if len(tokenizer) != facts["vocab_size"] or model.get_input_embeddings().weight.shape[0] != len(tokenizer):
        raise CheckpointError(f"{folder}: tokenizer has {len(tokenizer)} tokens, model embeddings "
                              f"{model.get_input_embeddings().weight.shape[0]}, checkpoint records "
                              f"{facts['vocab_size']}; the folder is inconsistent")
    slots = backbone.add_slot_tokens(tokenizer)  # already present: returns their ids
    builder = PromptBuilder(tokenizer, data.titles(), facts["domain"], slots, facts["max_length"],
                            summary=facts["prompt"] == "hybrid+summary", seed=facts["seed"])
    projector = None
    if facts["prompt"] != "text":
        if encoder is None:
            raise CheckpointError(f"{folder}: {facts['prompt']} prompts need the encoder it was trained with")
        if encoder.hidden_size != facts["encoder_hidden"]:
            raise CheckpointError(f"{folder}: trained with an encoder of hidden size {facts['encoder_hidden']}, "
                                  f"given one of {encoder.hidden_size}")
        if facts.get("encoder_fingerprint") and encoder_fingerprint(encoder) != facts["encoder_fingerprint"]:
            raise CheckpointError(f"{folder}: given encoder's weights differ from those it was trained with "
                                  f"({facts.get('encoder')}); pass that encoder folder (--encoder), not a "
                                  f"retrained or other one")
        projector = Projector(facts["encoder_hidden"], facts["llm_hidden"])
        state = load_file(str(folder / "projector.safetensors"))
        try:
            projector.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"{folder / 'projector.safetensors'}: does not fit the model ({e})") from None
    lm = HybridLM(model, builder, facts["prompt"], projector, encoder)
    return lm.to(device).eval()
