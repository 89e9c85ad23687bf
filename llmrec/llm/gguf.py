"""A GGUF file as a plain Hugging Face model folder: dequantised once, cached as safetensors by its sha256.

transformers reads a GGUF file (`from_pretrained(folder, gguf_file=...)`, with the `gguf` package): it
dequantises every tensor to float32, undoes llama.cpp's rotary layout of the query/key projections, and
builds the tokenizer from the file's `tokenizer.ggml.*` section. Reading the 98 MB SmolLM2 file that way takes
about a minute on 2 CPU cores, and the model it returns refuses `save_pretrained` ("quantized with gguf and is
not serializable"). So the dequantised weights are handed, once, to a plain causal LM of the config's class
built from the same config (without its `quantization_config`), which saves normally: the cache folder
`<cache_dir>/gguf-<sha256[:16]>/` then holds config.json, model.safetensors and the tokenizer, and every later
run (and the rest of the pipeline) loads an ordinary model folder in seconds. Nothing is unpickled: the GGUF
reader maps the file with numpy, the cache is safetensors and JSON.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from llmrec.base.atomic import atomic_directory
from llmrec.base.files import file_sha256
from llmrec.base.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)
CACHE_MARKER = "llmrec_gguf.json"  # written last into the cache folder: what it was made from
GGUF_MAGIC = b"GGUF"


def cache_folder(cache_dir: Path, sha256: str) -> Path:
    """Where the dequantised copy of the GGUF file with this sha256 lives."""
    return Path(cache_dir) / f"gguf-{sha256[:16]}"


def check_gguf_file(path: Path) -> Path:
    """A clear error for a missing file or one that is not GGUF (its first 4 bytes are `GGUF`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--llm {path}: no such GGUF file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise CheckpointError(f"--llm {path}: not a GGUF file (it starts with {magic!r}, expected {GGUF_MAGIC!r})")
    return path


def gguf_folder(path: Path, cache_dir: Path, expected_sha256: str | None = None) -> Path:
    """The cached Hugging Face folder of the GGUF file `path`, dequantising it on first use.

    `expected_sha256` (a named preset's pinned digest) refuses any other file before anything is read into
    the model. The cache is keyed by the file's content, not its name or place: a copied or renamed file
    reuses it, a changed file gets its own folder.
    """
    path = check_gguf_file(path)
    digest = file_sha256(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise CheckpointError(f"{path}: sha256 {digest}, expected {expected_sha256}; the file is damaged or "
                              f"another version (reinstall the package that ships it)")
    folder = cache_folder(cache_dir, digest)
    if _cache_is_complete(folder, digest):
        return folder
    log.info("dequantising %s into %s (once; later runs load the cached safetensors)", path, folder)
    with atomic_directory(folder) as tmp:
        facts = dequantise(path, tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps({"gguf_file": path.name, "sha256": digest,
                                                    "bytes": path.stat().st_size, **facts}, indent=2) + "\n")
    return folder


def _cache_is_complete(folder: Path, digest: str) -> bool:
    """The folder was written to the end (the marker is written last) for a file with this exact digest."""
    marker = folder / CACHE_MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8")).get("sha256")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False  # damaged: rebuilt, atomically replacing the folder
    return recorded == digest and (folder / "config.json").is_file()


def dequantise(path: Path, out: Path) -> dict[str, Any]:
    """Read the GGUF file with transformers and save a plain float32 causal LM and its tokenizer into `out`.

    Returns facts for the cache marker (model type and class, parameter count)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    where = {"gguf_file": path.name, "local_files_only": True}
    try:
        # the config is parsed once and passed on: each parse of a 49k-token vocabulary takes ~10 s
        gguf_config = AutoConfig.from_pretrained(str(path.parent), **where)
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), config=gguf_config, dtype=torch.float32,
                                                      **where)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **where)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"--llm {path}: transformers could not read it as a causal LM "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); expected a GGUF "
                              f"file of an architecture transformers supports (llama, mistral, qwen2 ...)") from None
    # the loaded model carries a GGUF quantizer that refuses save_pretrained: the same weights in a plain model
    settings = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    config = type(loaded.config).from_dict(settings)
    config.name_or_path = ""
    with torch.device("meta"):  # no random init (seconds for 135M parameters) and no second copy in memory
        plain = type(loaded)(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"--llm {path}: its tensors do not fit {type(plain).__name__} (missing "
                              f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    if config.tie_word_embeddings:
        plain.tie_weights()
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"model_type": config.model_type, "model_class": type(plain).__name__,
            "parameters": sum(p.numel() for p in plain.parameters())}
