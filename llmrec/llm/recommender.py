"""Assembling an LLM recommender: tokenizer -> slot tokens -> prompt builder -> projector -> `HybridLM`.

Training (`llmrec.llm.train.build_recommender`) and loading (`llmrec.llm.checkpoint.load_recommender`) both end
here, so a loaded model is put together exactly as the trained one was: same slot ids, same prompt builder
(templates, seed, length budget, prompt format), same projector shape, same score-mode ranking rule (`score_norm`).
"""

from __future__ import annotations

import torch

from llmrec.data.catalog import Catalog
from llmrec.encoders.base import SequentialEncoder
from llmrec.base.errors import CheckpointError, ConfigError
from llmrec.llm import backbone
from llmrec.llm.hybrid import HybridLM, PromptKind, ScoreNorm
from llmrec.llm.projector import Projector
from llmrec.llm.prompts import PromptBuilder, PromptFormat


def assemble_recommender(model: torch.nn.Module, tokenizer, catalog: Catalog, prompt: PromptKind,
                         encoder: SequentialEncoder | None, max_length: int, seed: int,
                         projector_state: dict[str, torch.Tensor] | None = None,
                         llm_hidden: int | None = None, score_norm: ScoreNorm = "sum",
                         prompt_format: PromptFormat = "plain") -> HybridLM:
    """The `HybridLM` over `model` (plain or peft-wrapped), whose embeddings already hold the slot rows.

    `projector_state` loads a trained projector (else it is freshly initialised); `llm_hidden` is the LM's
    hidden size when `model` is not yet the final module (defaults to its input embedding width); `score_norm`
    is how score mode ranks candidates (`llmrec.llm.ranking.normalise_scores`); `prompt_format` is `plain` text
    or the tokenizer's `chat` template around it (`llmrec.llm.prompts`).
    """
    slots = backbone.add_slot_tokens(tokenizer)  # present already: returns their ids
    rows = backbone.embedding_rows(model)
    if max(slots.history, slots.candidate, slots.text, slots.summary) >= rows:
        raise CheckpointError(f"the model has {rows} embedding rows but the slot tokens have ids up to "
                              f"{max(slots.history, slots.candidate, slots.text, slots.summary)}")
    builder = PromptBuilder(tokenizer, catalog.titles(), catalog.domain, slots, max_length,
                            summary=prompt == "hybrid+summary", seed=seed, prompt_format=prompt_format)
    projector = None
    if prompt != "text":
        if encoder is None:
            raise ConfigError(f"--prompt {prompt} needs an encoder (--encoder DIR); use --prompt text without one")
        projector = Projector(encoder.hidden_size, llm_hidden or backbone.hidden_size(model))
        if projector_state is not None:
            try:
                projector.load_state_dict(projector_state)
            except RuntimeError as e:
                raise CheckpointError(f"projector weights do not fit the model ({' '.join(str(e).split())[:300]})"
                                      ) from None
    return HybridLM(model, builder, prompt, projector, encoder if prompt != "text" else None, score_norm)
