"""The model card `README.md` of an LLM checkpoint folder: data, protocol, base model, training, metrics, usage.

`write_model_card(folder, facts, config_dict, metrics)` is called by `llmrec train-llm` and `llmrec train-sdpo`
inside their output folder after the checkpoint, `config.yaml` and `metrics.json` are written and before the
output marker, so the card is listed (with its sha256) in the bundle manifest like every other file.

Everything on the card comes from what the folder itself records (checkpoint facts, the resolved config, the
metrics, the bundled encoder's `config.yaml`, the catalog's row count): it describes the bundle, never a
folder elsewhere. It imports nothing from the training stages, so any stage may call it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from llmrec.base.atomic import atomic_write_text
from llmrec.base.errors import CheckpointError
from llmrec.base.markers import find_marker
from llmrec.encoders.facts import CONFIG_FILE, EncoderFacts
from llmrec.encoders.facts import SPEC as ENCODER_SPEC
from llmrec.llm.facts import LLMFacts

CARD_FILE = "README.md"
PROMPTS = {"hybrid": "hybrid (each item: its title + one behavioural token projected from the encoder's item "
                     "embedding; LLaRA)",
           "text": "text only (each item: its title + one learned text token; no encoder)",
           "hybrid+summary": "hybrid, plus one token projected from the encoder's representation of the whole "
                             "history"}

SCORE_RULES = {"sum": "a candidate's score is the sum of its answer's token log-probs",
               "mean": "a candidate's score is the mean of its answer's token log-probs: the sum divided by the "
                       "answer's length in tokens"}


def _encoder_facts(folder: Path) -> EncoderFacts | None:
    """The bundled encoder's facts, None when the folder bundles none (text prompts) or they do not read."""
    path = folder / "encoder" / CONFIG_FILE
    data = find_marker(path, ENCODER_SPEC, check_version=True)
    try:
        return EncoderFacts.from_dict(data, path) if data is not None else None
    except CheckpointError:
        return None


def _catalog_size(folder: Path) -> int | None:
    path = folder / "catalog.parquet"
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    return int(pq.read_metadata(path).num_rows)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _base_model(facts: LLMFacts) -> str:
    tiny = facts.base.tiny
    if tiny:
        return (f"a tiny Llama built locally by llmrec ({tiny.get('layers')} layers, hidden size {tiny.get('hidden')}, "
                f"{tiny.get('heads')} heads, {tiny.get('tokenizer')} tokenizer trained on the catalog titles and "
                f"prompt templates; random initialisation, then trained here)")
    return f"`{facts.base.path}` (Hugging Face causal LM; fingerprint recorded in checkpoint.json)"


def _metric_rows(metrics: dict[str, Any]) -> list[str]:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or value is None:
            continue  # curves (valid/history) and nested values stay in metrics.json
        rows.append(f"| `{key}` | {_fmt(value)} |")
    return rows


def model_card(folder: str | os.PathLike, facts: LLMFacts, config_dict: dict[str, Any],
               metrics: dict[str, Any]) -> str:
    """The card's Markdown text (see `write_model_card`)."""
    folder = Path(folder)
    stage = facts.stage
    split = facts.split or {}
    encoder = _encoder_facts(folder)
    n_items = _catalog_size(folder)
    command = "llmrec train-sdpo" if stage == "sdpo" else "llmrec train-llm"
    lines = [f"# LLM recommender `{folder.name}`", ""]
    if stage == "sdpo":
        sdpo = facts.sdpo
        lines.append(f"A next-item recommender preference-trained by `{command}` ({sdpo and sdpo.loss}, "
                     f"{sdpo and sdpo.negatives} negative(s) per prompt, beta {sdpo and sdpo.beta}) from the SFT "
                     f"checkpoint `{Path(str(sdpo and sdpo.sft)).name}`.")
    else:
        lines.append(f"A next-item recommender fine-tuned by `{command}` (supervised: the answer is the target's "
                     f"title).")
    dataset = encoder.dataset if encoder is not None else None
    name = (dataset.name if dataset is not None else None) or Path(str(config_dict.get("data"))).name
    size = f", {n_items} items" if n_items is not None else ""
    lines += ["", "## Data", "",
              f"- dataset: `{name}` ({facts.domain} domain{size})",
              (f"- protocol: `{facts.protocol}` (split seed {split.get('seed')}, evaluation positions "
               f"`{split.get('eval_positions')}`); users are split 8:1:1 into train/valid/test, the model saw train "
               f"users only"),
              (f"- catalog fingerprint: `{facts.catalog_fingerprint[:16]}...` (sha256 over item ids "
               f"and titles; `catalog.parquet` travels with the model)"),
              ""]
    lora = (f" (r {config_dict.get('lora_r')}, alpha {config_dict.get('lora_alpha')})"
            if facts.finetune == "lora" and config_dict.get("lora_r") else "")
    lines += ["## Model", "",
              f"- base model: {_base_model(facts)}",
              f"- fine-tuning: {'all weights' if facts.finetune == 'full' else 'LoRA adapters'}{lora}",
              (f"- prompts: {PROMPTS.get(facts.prompt, facts.prompt)}; at most "
               f"{facts.max_length} tokens (prompt + answer), oldest history items dropped beyond")]
    if encoder:
        lines.append(f"- encoder (frozen, bundled in `encoder/`): {encoder.model} with hidden size "
                     f"{encoder.hidden_size} and histories of up to {encoder.max_length} items")
    lines += ["", "## Training", "", f"Resolved options of `{command}` (also in `config.yaml`):", "", "```yaml",
              yaml.safe_dump(config_dict, sort_keys=False, allow_unicode=True).rstrip(), "```", ""]
    rows = _metric_rows(metrics)
    rule = SCORE_RULES[facts.score_norm]
    lines += ["## Metrics", "",
              (f"`test/...` ranks each test sample's stored candidates in `score` mode ({rule}; `score_norm` in "
               f"checkpoint.json, used by every later ranking of this model); `hr@1` = correct / all samples; "
               f"`valid/hr@1` chose the kept weights. Keys as in docs/design.md §8."),
              ""]
    lines += (["| metric | value |", "| --- | --- |", *rows] if rows else ["(no metrics recorded)"]) + [""]
    lines += ["## Use", "", "```python", "from llmrec.serving import Recommender", "",
              f"rec = Recommender.from_pretrained(\"{folder.name}\")  # checks every file against the manifest",
              "rec.recommend([1, 2, 3], k=10)  # item ids or exact titles, oldest first", "```", "",
              "```sh", f"llmrec predict --ckpt {folder.name} --history 1,2,3 --k 10",
              f"llmrec serve --ckpt {folder.name}   # http://127.0.0.1:8000/docs", "```", "",
              "## Files", "",
              ("`checkpoint.json` (facts to rebuild the model), `config.yaml`, `metrics.json`, `catalog.parquet`, "
               "`tokenizer/`, the weights (safetensors only: nothing is unpickled), `encoder/` for hybrid prompts. "
               "`.llmrec-output.json` lists every file with its size and sha256; loading for serving checks them "
               "and names any missing or altered file."),
              ""]
    return "\n".join(lines)


def write_model_card(folder: str | os.PathLike, facts: LLMFacts, config_dict: dict[str, Any],
                     metrics: dict[str, Any]) -> Path:
    """Write `README.md` into the checkpoint folder `folder` (atomically); returns its path.

    `facts`: the checkpoint facts (those given to `save_checkpoint`);
    `config_dict`: `llmrec.base.config.config_to_dict(config)`; `metrics`: what `metrics.json` holds.
    """
    text = model_card(folder, facts, config_dict, metrics)
    return atomic_write_text(Path(folder) / CARD_FILE, text)
