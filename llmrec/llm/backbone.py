"""Backbones: a tiny Llama built locally, or any Hugging Face causal LM in a local folder (DESIGN.md §5).

`--llm tiny` builds a small randomly initialised Llama (`LlamaConfig`, seeded) and a word-level (default) or
byte-level BPE tokenizer trained on the catalog's titles and the prompt templates (`llmrec.llm.tokenizer`), saves both with
`save_pretrained` into a folder named by the catalog fingerprint and the model size (so it is built once per
catalog and size), and from then on loads it through the same path code as `--llm /path/to/model`:
`AutoModelForCausalLM` / `AutoTokenizer` from a local folder (Llama, Qwen2, Mistral, GPT-2 ...). Nothing is
ever downloaded: `local_files_only=True`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from llmrec.atomic import atomic_directory
from llmrec.errors import CheckpointError, ConfigError
from llmrec.llm.prompts import SLOT_TOKENS, SlotIds, template_corpus
from llmrec.llm.tokenizer import train_tokenizer

log = logging.getLogger(__name__)
hf_logging.disable_progress_bar()  # "Loading weights" bars for a 2-layer model are noise in logs and tests
TINY = "tiny"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TinySpec:
    """Shape of the locally built Llama. Defaults suit real CPU/GPU runs; tests use hidden 32, 2 layers."""

    layers: int = 4
    hidden: int = 256
    heads: int = 4
    max_length: int = 512
    seed: int = 0
    tokenizer: str = "word"
    bpe_vocab: int = 2048

    def folder_name(self, fingerprint: str) -> str:
        kind = f"-bpe{self.bpe_vocab}" if self.tokenizer == "bpe" else ""  # word-level keeps its original name
        return (f"tiny-llama-{fingerprint[:16]}-l{self.layers}-h{self.hidden}-a{self.heads}"
                f"-p{self.max_length}-s{self.seed}{kind}")


def build_tiny_llm(titles: list[str], fingerprint: str, cache_dir: Path, spec: TinySpec = TinySpec()) -> Path:
    """Build (once) and return the folder of a tiny random Llama + its tokenizer for this catalog."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(cache_dir) / spec.folder_name(fingerprint)
    if (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file():
        return folder
    if spec.hidden % spec.heads:
        raise ConfigError(f"--tiny-hidden {spec.hidden} must be a multiple of --tiny-heads {spec.heads}")
    log.info("building tiny Llama (%d layers x %d hidden) and its tokenizer in %s", spec.layers, spec.hidden,
             folder)
    tokenizer = train_tokenizer(spec.tokenizer, [t for t in titles if t] + template_corpus(), spec.max_length,
                                spec.bpe_vocab)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden, intermediate_size=(spec.hidden * 8 // 3 + 31) // 32 * 32,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_length, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    with atomic_directory(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "llmrec_tiny.json").write_text(json.dumps({"catalog_fingerprint": fingerprint,
                                                          **spec.__dict__}, indent=2) + "\n")
    return folder


def check_model_folder(path: Path) -> Path:
    """A clear error for a missing path or a folder that is not a Hugging Face model."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--llm {path}: no such folder; give `tiny` or a local Hugging Face model folder "
                          f"(one with config.json, weights and tokenizer files)")
    if not path.is_dir():
        raise ConfigError(f"--llm {path}: is a file, expected a Hugging Face model folder")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"--llm {path}: not a Hugging Face model folder (no config.json); expected the "
                              f"output of `save_pretrained` with config.json, weights and tokenizer files")
    return path


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: could not load a tokenizer ({str(e).splitlines()[0]}); the folder needs "
                              f"tokenizer files written by `save_pretrained`") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padded positions are always masked out
    return tok


def load_causal_lm(path: Path, dtype: str = "float32", gradient_checkpointing: bool = False,
                   load_in_4bit: bool = False) -> torch.nn.Module:
    """`AutoModelForCausalLM` from a local folder, with the GPU options of DESIGN.md §10."""
    from transformers import AutoModelForCausalLM

    path = check_model_folder(path)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    kwargs: dict = {"dtype": DTYPES[dtype], "local_files_only": True}
    if load_in_4bit:
        kwargs["quantization_config"] = four_bit_config(DTYPES[dtype])
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"--llm {path}: could not load a causal LM ({str(e).splitlines()[0]}); expected "
                              f"a folder written by `save_pretrained` (config.json + *.safetensors)") from None
    if gradient_checkpointing:
        enable_checkpointing(model)
        model.config.use_cache = False
    return model


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Activation (gradient) checkpointing, non-reentrant so gradients reach LoRA weights although the frozen
    embeddings do not require grad. transformers 5 renamed the method; older releases only have the old name."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def four_bit_config(compute_dtype: torch.dtype):
    """NF4 base weights via bitsandbytes, imported only when asked for."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("--load-in-4bit needs the `bitsandbytes` package (pip install bitsandbytes) and a "
                          "CUDA GPU; it is not installed")
    if not torch.cuda.is_available():
        raise ConfigError("--load-in-4bit needs a CUDA GPU; none is available")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def add_slot_tokens(tokenizer, model: torch.nn.Module | None = None) -> SlotIds:
    """Add the four slot tokens (idempotent) and resize the model's embeddings to the tokenizer."""
    tokenizer.add_tokens(list(SLOT_TOKENS), special_tokens=True)  # special: never split, skipped in decode
    if model is not None and model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    ids = tokenizer.convert_tokens_to_ids(list(SLOT_TOKENS))
    return SlotIds(*map(int, ids))


def hidden_size(model: torch.nn.Module) -> int:
    return int(model.get_input_embeddings().weight.shape[1])
