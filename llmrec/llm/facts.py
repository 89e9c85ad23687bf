"""The facts of an LLM checkpoint (`checkpoint.json`): typed, frozen, read and written through `llmrec.base.markers`.

`llmrec train-llm` builds them (`llmrec.llm.train.build_recommender`), `llmrec train-sdpo` derives its own from
the SFT's (`SdpoFacts` added, `stage` "sdpo"), loading, serving, evaluation, re-ranking and the model card read
them by attribute. On disk the JSON is exactly what earlier llmrec versions wrote (same keys, same values):

    {"format": "llmrec-llm-checkpoint", "format_version": 2, "finetune": ..., "prompt": ..., "score_norm": ...,
     "domain": ..., "max_length": ..., "seed": ..., "protocol": ..., "catalog_fingerprint": ..., "split": {...},
     "n_candidates": ..., "max_history": ..., "base": {"path", "relative", "tiny", "fingerprint"},
     "first_new_row": ..., "embedding_rows": ..., "vocab_size": ..., "llm_hidden": ..., "encoder_hidden": ...,
     "encoder_fingerprint": ...[, "llm_layers": K][, "stage": "sdpo", "sdpo": {...}][, "prompt_format": "chat"]}

Keys older checkpoints lack get their documented defaults (`score_norm` "sum", `domain` "generic", `stage`
"sft", `prompt_format` "plain", `llm_layers` None = every layer of the base); `stage` and `sdpo` are written only
for an S-DPO checkpoint, as before, `prompt_format` only when it is `chat` and `llm_layers` only for a model cut to
its first K decoder layers (`train-llm --llm-layers K`), so a plain full-stack checkpoint's file is what earlier
versions wrote.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmrec.base.errors import CheckpointError
from llmrec.base.markers import INTERNAL, OMIT_IF, Advice, MarkerSpec, from_dict, read_marker, to_dict

FACTS_FILE = "checkpoint.json"
SPEC = MarkerSpec(kind="llmrec-llm-checkpoint", version=2, what="an LLM checkpoint",
                  writer="`llmrec train-llm` or `llmrec train-sdpo`")
RETRAIN = "retrain it with `llmrec train-llm`"


@dataclass(frozen=True)
class BaseModelFacts:
    """The base model: where it was (absolute, and relative to the checkpoint), the tiny spec when llmrec built
    it, its fingerprint (`llmrec.llm.backbone.base_fingerprint`), and, for a base made from a preset name or a
    `.gguf` file, that `--llm` value (`source`), from which a machine without the dequantised folder rebuilds it."""

    path: str
    fingerprint: dict[str, Any]
    relative: str | None = None
    tiny: dict[str, Any] | None = None
    source: str | None = None
    # the built tiny base's folder while saving a LoRA checkpoint (copied into it as `base/`); never written
    tiny_folder: str | None = field(default=None, metadata={INTERNAL: True})

    def to_dict(self) -> dict[str, Any]:
        out = {"path": self.path, "relative": self.relative, "tiny": self.tiny, "fingerprint": self.fingerprint}
        if self.source is not None:  # only bases made from a preset or a GGUF file have one (older files unchanged)
            out["source"] = self.source
        return out


@dataclass(frozen=True)
class SdpoFacts:
    """How an S-DPO checkpoint was preference-trained (`llmrec train-sdpo` options) and from which SFT folder."""

    sft: str
    loss: str
    negatives: int
    negatives_option: int | str | None = None
    beta: float | None = None
    beta_prime: float | None = None
    beta_rho: float | None = None
    beta_alpha: float | None = None
    alpha: float | None = None
    gamma_beta_ratio: float | None = None
    seed: int | None = None
    fairness_weights: str | None = None


@dataclass(frozen=True)
class LLMFacts:
    """Everything needed to rebuild an LLM checkpoint's model and to refuse a mismatch (see the module docstring)."""

    finetune: Literal["full", "lora"]
    prompt: Literal["text", "hybrid", "hybrid+summary"]
    max_length: int
    seed: int
    protocol: str
    catalog_fingerprint: str
    base: BaseModelFacts
    first_new_row: int
    embedding_rows: int
    vocab_size: int
    score_norm: Literal["sum", "mean"] = "sum"      # absent before the ranking rule was recorded
    domain: str = "generic"
    split: dict[str, Any] | None = None             # None: an older checkpoint without a split fingerprint
    n_candidates: int | None = None
    max_history: int | None = None
    llm_hidden: int | None = None
    encoder_hidden: int | None = None               # None for text prompts
    encoder_fingerprint: str | None = None          # None for text prompts
    # the first K decoder layers of the base were kept (`train-llm --llm-layers K`); None: all of them. A LoRA
    # checkpoint's base is loaded whole, fingerprinted, then cut to K before the adapter goes on
    llm_layers: int | None = field(default=None, metadata={OMIT_IF: None})
    stage: Literal["sft", "sdpo"] = field(default="sft", metadata={OMIT_IF: "sft"})
    sdpo: SdpoFacts | None = field(default=None, metadata={OMIT_IF: None})
    # `chat`: prompts are the user turn of the tokenizer's chat template; absent (`plain`) before it was an option
    prompt_format: Literal["plain", "chat"] = field(default="plain", metadata={OMIT_IF: "plain"})

    # the order `llmrec train-llm` has always written the keys in
    _ORDER = ("finetune", "prompt", "score_norm", "domain", "max_length", "seed", "protocol", "catalog_fingerprint",
              "split", "n_candidates", "max_history", "base", "first_new_row", "embedding_rows", "vocab_size",
              "llm_hidden", "encoder_hidden", "encoder_fingerprint", "llm_layers", "stage", "sdpo", "prompt_format")

    @property
    def hybrid(self) -> bool:
        """Whether prompts carry encoder tokens (the checkpoint bundles an encoder and a projector)."""
        return self.prompt != "text"

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | os.PathLike = FACTS_FILE, advice: Advice = RETRAIN
                  ) -> LLMFacts:
        """The facts in `data` (the contents of `path`); `CheckpointError` in the marker format when a field is
        missing or of the wrong type."""
        return from_dict(cls, data, path, spec=SPEC, error=CheckpointError, advice=advice)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object `checkpoint.json` holds, `format` and `format_version` first."""
        values = to_dict(self)
        values["base"] = self.base.to_dict()
        return {"format": SPEC.kind, "format_version": SPEC.version, **{k: values[k] for k in self._ORDER
                                                                       if k in values}}


def read_llm_facts(folder: str | os.PathLike) -> LLMFacts:
    """The facts of LLM checkpoint folder `folder`; one-line `CheckpointError` when it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist; train one with `llmrec train-llm`")
    path = folder / FACTS_FILE
    return LLMFacts.from_dict(read_marker(path, SPEC, error=CheckpointError, advice=_advice), path)


def _advice(problem: str) -> str | None:
    return None if problem in ("missing", "kind") else RETRAIN  # `expected ...` already says what to give
