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
JSON, YAML and parquet only, whether or not the bundle manifest was checked first (`--no-verify`): a pickled
stand-in for a weights file (`pytorch_model.bin`, `adapter_model.bin`) is refused naming it, a damaged weights
file is one `CheckpointError` naming it (`llmrec.base.weights`), and every weights file must hold exactly the
tensors of its part of the model (base or fine-tuned LM, adapter, slot-token rows, projector, encoder), so a
file without them never leaves randomly initialised weights behind. `checkpoint.json` is read once per load:
callers that already hold the facts pass them (`load_recommender(..., facts=...)`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from llmrec.base.markers import write_marker
from llmrec.data.catalog import Catalog
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.fingerprint import split_mismatch
from llmrec.encoders.base import SequentialEncoder
from llmrec.encoders.checkpoint import load_encoder
from llmrec.base.errors import CheckpointError, ConfigError
from llmrec.base.weights import check_tensors, read_safetensors, refuse_pickled, safetensors_shapes
from llmrec.llm import backbone
from llmrec.llm.backbone_presets import PRESETS
from llmrec.llm.facts import FACTS_FILE, SPEC, LLMFacts, read_llm_facts
from llmrec.llm.hybrid import SCORE_NORMS, HybridLM, ScoreNorm, embedding_weight
from llmrec.llm.lora import load_lora
from llmrec.llm.projector import Projector
from llmrec.llm.recommender import assemble_recommender

MARKER, FORMAT_VERSION, FACTS = SPEC.kind, SPEC.version, FACTS_FILE
NEW_ROWS = "new_token_rows.safetensors"
PROJECTOR = "projector.safetensors"
ENCODER_DIR, BASE_DIR, MODEL_DIR, ADAPTER_DIR, TOKENIZER_DIR = "encoder", "base", "model", "adapter", "tokenizer"
ENCODER_FILES = ("encoder.safetensors", "config.yaml", "items.faiss", "metrics.json")
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"  # peft's file names
log = logging.getLogger(__name__)


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
    if not (path.exists() or path.is_symlink()):
        refuse_pickled(path.parent, path.name)
        raise CheckpointError(f"{path} is missing; the checkpoint folder {path.parent} is incomplete")
    return read_safetensors(path)


def _shapes(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in tensors.items()}


# warnings of peft's adapter loading that are not shown: missing tensors (refused instead, naming the file), and
# transformers' deprecation of the property peft reads (nothing a user can act on)
PEFT_NOISE = ("Found missing adapter keys", "`is_gradient_checkpointing` is deprecated")


@contextmanager
def _unshown(texts: tuple[str, ...]) -> Iterator[None]:
    """Warnings whose message contains one of `texts` are not shown during the block; the others are, as usual.

    `warnings.showwarning` is swapped for the block rather than a filter added: adding and removing a filter
    resets Python's record of warnings already shown, so every library warning seen before would be shown again."""
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None,
             line: str | None = None) -> None:
        if not any(text in str(message) for text in texts):
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _load_adapter(model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
    """`load_lora`, reading safetensors only and strictly: peft would read a pickled `adapter_model.bin` in place
    of a missing `adapter_model.safetensors`, and loads an adapter file lacking some of its tensors with a
    warning (the missing LoRA weights then keep their initial values); both are refused here, naming the file."""
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not (weights.exists() or weights.is_symlink()):
        refuse_pickled(adapter_dir, ADAPTER_WEIGHTS)
    saved = safetensors_shapes(weights)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"{adapter_dir / ADAPTER_CONFIG} is missing; the checkpoint folder "
                              f"{adapter_dir.parent} is incomplete")
    from peft import get_peft_model_state_dict

    try:
        with _unshown(PEFT_NOISE):  # peft warns of missing tensors and goes on: refused below instead
            model = load_lora(model, adapter_dir)
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        reason = f"no tensor {e.args[0]}" if isinstance(e, KeyError) and e.args else " ".join(str(e).split())[:300]
        raise CheckpointError(f"{weights} does not fit the base model ({reason}); the file is damaged or belongs "
                              f"to another model: copy the checkpoint folder again") from None
    expected = _shapes(get_peft_model_state_dict(model, save_embedding_layers=False))  # what save_pretrained wrote
    check_tensors(weights, expected, saved, "the LoRA adapter")
    return model


def _check_projector(path: Path, state: dict[str, torch.Tensor], encoder_hidden: int, llm_hidden: int) -> None:
    """Refuse a projector file that does not hold exactly the projector's tensors, naming the file."""
    with torch.device("meta"):  # shapes only: no values, no draw from the random generator
        expected = _shapes(Projector(encoder_hidden, llm_hidden).state_dict())
    check_tensors(path, expected, _shapes(state), "the projector")


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


def check_is_folder(folder: Path) -> None:
    """A checkpoint path that exists but is a file (`--ckpt /etc/passwd`) is named as what it is, not as missing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        kind = "a file" if folder.is_file() else "not a folder"
        raise CheckpointError(f"checkpoint folder {folder} is {kind}; expected the folder that `llmrec train-llm` "
                              f"or `llmrec train-sdpo` wrote (holding {FACTS})")


def read_facts(folder: Path) -> LLMFacts:
    """The facts (`checkpoint.json`) of LLM checkpoint `folder`; one-line `CheckpointError` when it is not one."""
    check_is_folder(folder)
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
                     dtype: str = "float32", score_norm: ScoreNorm | None = None, facts: LLMFacts | None = None,
                     merge_adapters: bool = True) -> HybridLM:
    """Rebuild the `HybridLM` saved in `folder`, on `device`, in eval mode.

    Everything comes from the folder itself: catalog, tokenizer (with its chat template), encoder copy, weights,
    the prompt format, the score-mode ranking rule. `data`, when given, must be the catalog and split the model was trained on. `encoder` overrides the
    bundled encoder (it must be the same weights); `llm` gives the base model folder of a LoRA checkpoint whose
    base moved; `score_norm` overrides the recorded ranking rule (None: the checkpoint's). `facts` are the
    folder's facts when the caller already read them (`read_facts`), so `checkpoint.json` is read once.

    `merge_adapters` (for inference, the default) folds a LoRA checkpoint's adapters and trained slot-token rows
    into the base weights once (peft `merge_and_unload`), leaving a plain model: unmerged, every forward runs the
    adapters beside each projection and peft's trainable-token layer rebuilds the whole embedding matrix (and the
    tied LM head) on every call: SmolLM2-135M ranked 1.19-1.35x faster merged here (`bench/serving.py merge`).
    Scores move by float rounding only (tested). Pass False to train the loaded adapters further (`train-sdpo`
    does)."""
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
        targets = {"input": embedding_weight(model.get_input_embeddings()),
                   "output": embedding_weight(model.get_output_embeddings())}
        check_tensors(folder / NEW_ROWS, {k: tuple(w[facts.first_new_row:].shape) for k, w in targets.items()},
                      _shapes(saved), "the slot-token embedding rows")
        with torch.no_grad():
            for key, w in targets.items():
                w[facts.first_new_row:] = saved[key].to(w.dtype)
        model = _load_adapter(model, folder / ADAPTER_DIR)
        if merge_adapters:
            with _unshown(PEFT_NOISE):
                model = model.merge_and_unload()
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
    if projector is not None:
        _check_projector(folder / PROJECTOR, projector, encoder.hidden_size, backbone.hidden_size(model))
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
