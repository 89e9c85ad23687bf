"""Hybrid prompts: the causal LM whose slot-token embeddings are replaced by projected behavioural vectors.

LLaRA (Liao et al., SIGIR 2024) represents an item in the prompt by its title tokens followed by one token
whose embedding is `projector(encoder item embedding)`. `HybridLM` composes a Hugging Face causal LM (plain
or LoRA-wrapped), the `Projector` and a frozen `SequentialEncoder`:

    ids [B, T] --embed--> [B, T, H] --fill history/candidate/summary slots in order--> inputs_embeds --LM-->

A text-only batch swaps every behavioural slot for the `<|text|>` token and never calls the projector, so the
projector receives no gradient from it. Padding is on the LEFT (prompts end where the answer starts) with
explicit position ids, so the same code serves training, scoring and decoding.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from llmrec.encoders.base import SequentialEncoder, pad_left
from llmrec.llm.projector import Projector
from llmrec.llm.prompts import Prompt, PromptBuilder

PromptKind = Literal["hybrid", "text", "hybrid+summary"]
PROMPT_KINDS: tuple[str, ...] = ("hybrid", "text", "hybrid+summary")
# how score mode turns a candidate's answer-token log-probs into its score (`llmrec.llm.ranking.normalise_scores`)
ScoreNorm = Literal["sum", "mean"]
SCORE_NORMS: tuple[str, ...] = ("sum", "mean")
IGNORE = -100


@dataclass
class PromptBatch:
    """A collated batch of prompts (and answers, when training). Items are listed in slot order."""

    input_ids: torch.Tensor                 # [B, T] long, left-padded
    attention_mask: torch.Tensor            # [B, T] long, 0 on padding
    history_items: torch.Tensor             # [N_hist] long: the item behind each history slot, row-major
    candidate_items: torch.Tensor           # [N_cand] long: the item behind each candidate slot, row-major
    targets: torch.Tensor                   # [B] long target item ids
    candidates: torch.Tensor                # [B, C] long candidate ids in stored order
    user_id: torch.Tensor                   # [B] long
    position: torch.Tensor                  # [B] long
    labels: torch.Tensor | None = None      # [B, T] long, IGNORE everywhere but the answer tokens
    summary_seq: torch.Tensor | None = None     # [B, L] left-padded histories for the summary slot
    summary_lengths: torch.Tensor | None = None  # [B]
    weights: torch.Tensor | None = None     # [B] per-sample loss weights (e.g. fairness), None = all 1

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(**{f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
                              for f in fields(self)})

    @property
    def target_index(self) -> torch.Tensor:
        """[B] column of each target in `candidates`."""
        return (self.candidates == self.targets.view(-1, 1)).long().argmax(dim=1)


def collate_prompts(prompts: list[Prompt], pad_id: int, targets: list[int], candidates: list[list[int]],
                    user_ids: list[int], positions: list[int], answers: list[list[int]] | None = None,
                    summary_histories: list[list[int]] | None = None, summary_max_length: int = 50) -> PromptBatch:
    """Left-pad prompts (+ answers when given, with labels on the answer tokens only) into a `PromptBatch`."""
    seqs = [p.ids + (answers[i] if answers is not None else []) for i, p in enumerate(prompts)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long) if answers is not None else None
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
        if labels is not None:
            n = len(answers[i])
            labels[i, width - n:] = torch.tensor(answers[i], dtype=torch.long)
    summary_seq = summary_lengths = None
    if summary_histories is not None:
        summary_seq, summary_lengths = pad_left(summary_histories, summary_max_length)
    return PromptBatch(
        input_ids=ids, attention_mask=mask, labels=labels,
        history_items=torch.tensor([i for p in prompts for i in p.history], dtype=torch.long),
        candidate_items=torch.tensor([i for p in prompts for i in p.candidates], dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long), candidates=torch.tensor(candidates, dtype=torch.long),
        user_id=torch.tensor(user_ids, dtype=torch.long), position=torch.tensor(positions, dtype=torch.long),
        summary_seq=summary_seq, summary_lengths=summary_lengths)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] positions counted over real tokens only (left padding gets position 0, masked anyway)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def fill_slots(embeds: torch.Tensor, input_ids: torch.Tensor, slot_id: int, vectors: torch.Tensor) -> torch.Tensor:
    """Replace the embedding at every `slot_id` position by the next row of `vectors`, in row-major order.

    Args:
        embeds: [B, T, H] token embeddings.
        input_ids: [B, T] token ids (locates the slots).
        vectors: [N, H], N = number of `slot_id` tokens in `input_ids`; row n goes to the n-th slot.
    Returns:
        [B, T, H] new tensor (differentiable with respect to `vectors`).
    """
    mask = input_ids == slot_id  # [B, T]
    n = int(mask.sum())
    if n != vectors.shape[0]:
        raise ValueError(f"{n} slot tokens (id {slot_id}) but {vectors.shape[0]} vectors to place")
    if n == 0:
        return embeds
    return embeds.masked_scatter(mask.unsqueeze(-1), vectors.to(embeds.dtype))


def answer_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: the summed next-token cross-entropy over its answer tokens and how many there are.

    Args:
        logits: [B, K, V] logits of the K last positions of the sequence (K = T for the whole sequence).
        labels: [B, K] the same positions' labels, IGNORE outside the answer.
    Returns:
        ([B] float32 sums, [B] token counts).
    """
    target = labels[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE,
                         reduction="none").view(target.shape)  # [B, K-1], 0 where ignored
    return ce.sum(1), (target != IGNORE).sum(1)


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy over the answer tokens: the mean over all answer tokens of the batch, each
    sample's tokens multiplied by its own weight (`weights` [B], e.g. fairness weights) when given.

    Per sample, not per batch: sample i contributes w_i * (its summed token loss) / (answer tokens in the batch),
    so two samples of one batch with different weights pull with different strength; scaling the batch loss by
    the batch's mean weight would not. Without weights this is the usual token-mean loss."""
    sums, counts = answer_token_losses(logits, labels)
    if weights is not None:
        sums = sums * weights.to(sums.dtype)
    return sums.sum() / counts.sum().clamp(min=1)


def answer_window(labels: torch.Tensor) -> int:
    """How many LAST positions of a left-padded [B, T] batch are needed for the answer loss: the answer tokens
    (they end every row) plus the one position before the earliest answer token, whose logits predict it."""
    labelled = (labels != IGNORE).any(dim=0)  # [T]
    if not bool(labelled.any()):
        raise ValueError("a training batch without answer labels")
    first = int(labelled.float().argmax())
    return min(labels.shape[1] - first + 1, labels.shape[1])


def _forward_parameters(model: nn.Module) -> Mapping[str, inspect.Parameter]:
    """The keyword parameters of the (possibly peft-wrapped) causal LM's own `forward`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inspect.signature(base.forward).parameters


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the (possibly peft-wrapped) causal LM can compute logits for the last positions only."""
    return "logits_to_keep" in _forward_parameters(model)


def cache_keyword(model: nn.Module) -> str:
    """The keyword under which the (possibly peft-wrapped) causal LM takes a KV cache.

    transformers 5.24 renamed `past_key_values` to `cache` (the old name warns, and goes in 5.40); earlier releases,
    which `setup.cfg` admits (>= 4.56), and models not yet converted know only `past_key_values`.
    """
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The KV cache a Hugging Face forward pass returned (called with `use_cache=True`), under either name."""
    cache = getattr(output, "cache", None)  # transformers >= 5.24; reading `past_key_values` there warns
    return cache if cache is not None else output.past_key_values


def embedding_weight(module: nn.Module) -> torch.Tensor:
    """The plain weight under peft's wrappers (trainable-token or LoRA layers) of an embedding or LM head.

    Never `module.weight` on a wrapper: peft's trainable-token layer answers it by building a fresh copy of the
    whole matrix with the trained rows put in (113 MB for SmolLM2-135M), on every access."""
    if hasattr(module, "token_adapter"):
        module = module.token_adapter.base_layer
    while hasattr(module, "base_layer"):
        module = module.base_layer
    return module.weight


class HybridLM(nn.Module):
    """Causal LM + projector + frozen encoder; builds `inputs_embeds` for hybrid or text-only prompts.

    Args:
        model: a Hugging Face causal LM (possibly a peft model) whose vocabulary holds the slot tokens.
        builder: the `PromptBuilder` (slot ids, answer ids) used for this model's prompts.
        prompt: `hybrid`, `text` (never uses encoder or projector) or `hybrid+summary`.
        projector: maps encoder vectors to the LM's hidden size (None for `text`).
        encoder: the frozen behavioural encoder (None for `text`); it is not part of this module's state.
        score_norm: how score mode ranks candidates (`llmrec.llm.ranking.normalise_scores`): `sum` of the answer
            tokens' log-probs, or their `mean` (divided by the answer's length); every ranking of this model
            (validation, evaluation, serving) uses it. Preference losses always use the sums.
    """

    def __init__(self, model: nn.Module, builder: PromptBuilder, prompt: PromptKind = "hybrid",
                 projector: Projector | None = None, encoder: SequentialEncoder | None = None,
                 score_norm: ScoreNorm = "sum"):
        super().__init__()
        if prompt not in PROMPT_KINDS:
            raise ValueError(f"prompt {prompt!r}: expected one of {PROMPT_KINDS}")
        if score_norm not in SCORE_NORMS:
            raise ValueError(f"score_norm {score_norm!r}: expected one of {SCORE_NORMS}")
        if prompt != "text" and (projector is None or encoder is None):
            raise ValueError(f"{prompt} prompts need a projector and an encoder")
        self.model, self.builder, self.prompt, self.projector = model, builder, prompt, projector
        self.score_norm: ScoreNorm = score_norm
        self._windowed_logits = accepts_logits_to_keep(model)
        self.cache_keyword = cache_keyword(model)  # `cache` or `past_key_values`, as this model's forward names it
        # Kept outside the module tree: the encoder is frozen and saved in its own folder, never with the LLM.
        self._encoder = [encoder] if encoder is not None else []
        if encoder is not None:
            encoder.requires_grad_(False).eval()
            self.register_buffer("item_table", encoder.item_embeddings().detach().float(), persistent=False)
        else:
            self.item_table = None

    @property
    def encoder(self) -> SequentialEncoder | None:
        return self._encoder[0] if self._encoder else None

    @property
    def windowed_logits(self) -> bool:
        """Whether the LM can compute logits for its last positions only (`logits_to_keep`)."""
        return self._windowed_logits

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype of the LM's weights (that of its input embedding), read without copying them."""
        return embedding_weight(self.model.get_input_embeddings()).dtype

    @property
    def uses_slots(self) -> bool:
        return self.prompt != "text"

    def _apply(self, fn, *args, **kwargs):  # keep the frozen encoder on the same device as the module
        if self._encoder:
            self._encoder[0]._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def inputs_embeds(self, batch: PromptBatch, hybrid: bool = True) -> torch.Tensor:
        """[B, T, H] input embeddings; hybrid fills the behavioural slots, text-only swaps them for `<|text|>`."""
        embed = self.model.get_input_embeddings()
        if not (hybrid and self.uses_slots):
            return embed(self.builder.to_text_only(batch.input_ids))
        slots = self.builder.slots
        embeds = embed(batch.input_ids)  # [B, T, H]
        embeds = fill_slots(embeds, batch.input_ids, slots.history, self.projector(self.item_table[batch.history_items]))
        embeds = fill_slots(embeds, batch.input_ids, slots.candidate,
                            self.projector(self.item_table[batch.candidate_items]))
        if self.prompt == "hybrid+summary":
            with torch.no_grad():
                seq_repr = self.encoder(batch.summary_seq, batch.summary_lengths)  # [B, H_enc]
            seq_repr = seq_repr.to(self.item_table.dtype)
            embeds = fill_slots(embeds, batch.input_ids, slots.summary, self.projector(seq_repr))
        return embeds

    def forward(self, batch: PromptBatch, hybrid: bool = True, **kwargs):
        """Run the LM on the batch; returns the Hugging Face output (logits and, with `use_cache`, the KV cache:
        `returned_cache`)."""
        return self.model(inputs_embeds=self.inputs_embeds(batch, hybrid), attention_mask=batch.attention_mask,
                          position_ids=position_ids(batch.attention_mask), **kwargs)

    def answer_logits(self, batch: PromptBatch, hybrid: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels of the positions the answer loss needs ([B, K, V], [B, K]).

        Only the last `answer_window` positions get logits: the answers end every left-padded row, and the
        vocabulary projection of the ~300 prompt positions would be thrown away (it cost ~27% of a CPU training
        step of the tiny model)."""
        if not self._windowed_logits:
            return self(batch, hybrid, use_cache=False).logits, batch.labels
        k = answer_window(batch.labels)
        return self(batch, hybrid, use_cache=False, logits_to_keep=k).logits, batch.labels[:, -k:]

    def loss(self, batch: PromptBatch, hybrid: bool = True, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy on the answer (target title + terminator) tokens only; `weights` [B] per sample."""
        return answer_loss(*self.answer_logits(batch, hybrid), weights)

    def sample_losses(self, batch: PromptBatch, hybrid: bool = True) -> torch.Tensor:
        """[B] each sample's mean cross-entropy over its own answer tokens."""
        sums, counts = answer_token_losses(*self.answer_logits(batch, hybrid))
        return sums / counts.clamp(min=1)
