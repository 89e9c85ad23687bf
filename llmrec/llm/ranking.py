"""Ranking candidates with a trained LLM recommender: one interface, three modes (docs/design.md §5).

- `score`: each candidate's score is the sum of log-probs of its answer tokens (title + terminator) given the
  prompt, or, when the model's `score_norm` is `mean`, that sum divided by the answer's length
  (`normalise_scores`). The prompt runs ONCE; its KV cache is shared (not copied) by the C candidates, whose
  answers are packed into one row per prompt behind a block-diagonal causal mask, so all B*C answers go through
  the model in one pass; the vocabulary projection runs on their real tokens only, a chunk at a time. Gives a
  full ordering; always valid.
- `generate`: greedy decoding of up to 64 tokens, first line, lowercase substring match against each
  candidate's answer text; valid iff exactly one candidate matches (LLaRA's rule). A row stops at the answer's
  terminator, the tokenizer's EOS, or as soon as its first line is complete (`line_complete`): what follows
  cannot change the match, so it is not decoded.
- `constrained`: greedy decoding restricted to a trie over the candidates' answer tokens (the builder's
  `answer_ids`, the very ids training and score mode use); always ends on a candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmrec.evaluation.scores import MODES, Mode
from llmrec.llm.hybrid import (
    SCORE_NORMS,
    HybridLM,
    PromptBatch,
    ScoreNorm,
    cache_keyword,
    position_ids,
    returned_cache,
)
from llmrec.llm.logprobs import (
    additive_mask,
    answer_positions,
    answers_see,
    gather_logprobs,
    head_logprobs,
    pack_answers,
    summed_logprobs,
)

MAX_NEW_TOKENS = 64


@dataclass
class Ranking:
    """Per batch: `scores` [B, C] (score mode; -inf-free) or `chosen` item ids (None = invalid output)."""

    scores: torch.Tensor | None
    chosen: list[int | None]
    texts: list[str] | None = None
    generated: list[list[int]] | None = None  # decoded token ids per row (generate / constrained)


def _last_logits_only(lm: HybridLM) -> dict:
    """`logits_to_keep=1` where the model supports it: the prompt pass needs only its last position's logits."""
    return {"logits_to_keep": 1} if lm.windowed_logits else {}


def normalise_scores(summed: torch.Tensor, lengths: torch.Tensor, how: ScoreNorm = "sum") -> torch.Tensor:
    """[B, C] candidate scores from their summed answer-token log-probs `summed` [B, C] and answer lengths
    `lengths` [B, C] (tokens, terminator included, as `PromptBuilder.answer_table` counts them).

    `sum` returns `summed` unchanged: log pi(answer | prompt), the answer's probability. `mean` returns
    `summed / lengths`, the mean log-prob per answer token: every token of an answer adds a negative term to the
    sum, so summed scores favour short titles whatever the model thinks of the item; dividing by the length
    (length-normalised log-likelihood, the usual remedy in LLM ranking and multiple-choice scoring) removes that
    bias. Preference losses need the sums (`llmrec.llm.logprobs.sequence_logprobs`) and never call this.
    """
    if how == "sum":
        return summed
    if how == "mean":
        return summed / lengths.to(summed.dtype).clamp(min=1)
    raise ValueError(f"unknown score normalisation {how!r}; expected one of {', '.join(SCORE_NORMS)}")


# Causal LMs whose logits are exactly `get_output_embeddings()(get_decoder()(...).last_hidden_state)` (checked in
# their transformers sources: no scaling, soft-capping or bias added after the head), so score mode may run the
# decoder and the head itself. Other models are scored through their own forward (full [B, W, V] logits).
PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2"})


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(decoder, LM head) of a (possibly peft-wrapped) causal LM in `PLAIN_HEAD_MODELS`, else None. A LoRA
    model's adapters live inside the decoder's and head's layers, so calling them directly runs the adapters."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(getattr(base, "config", None), "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    return None if head is None or decoder is base else (decoder, head)


@torch.inference_mode()
def score_candidates(lm: HybridLM, batch: PromptBatch, hybrid: bool = True) -> torch.Tensor:
    """[B, C] score per candidate: its answer-token log-probs summed, or averaged when `lm.score_norm` is `mean`
    (`normalise_scores`), with the prompt's KV cache shared by its candidates.

    Two model passes per batch: the prompts (left-padded, logits of the last position only), then all B*C
    answers at once, packed per prompt (`llmrec.llm.logprobs.pack_answers`) on top of the prompts' cache, which
    is neither copied nor repeated per candidate; a block-diagonal causal mask keeps candidates apart. The
    answers' vocabulary logits are computed for their real tokens only (not the row padding of the packed
    layout), a few hundred positions at a time (`llmrec.llm.logprobs.head_logprobs`), when the model's head
    allows it (`decoder_and_head`); they are never held for the whole batch at once.
    With `score_norm` `sum`, equal to `sequence_logprobs(lm, batch, batch.candidates)` (which runs one pass,
    with gradients, and always sums).
    """
    out = lm(batch, hybrid, use_cache=True, **_last_logits_only(lm))
    first = out.logits[:, -1]  # [B, V]: predicts every answer's first token
    packed = pack_answers(lm, batch.candidates)
    if packed.ids.shape[2] == 1:
        return normalise_scores(summed_logprobs(first, None, packed), packed.lengths, lm.score_norm)
    mask = additive_mask(answers_see(batch.attention_mask, packed), lm.weight_dtype)
    inputs = {"input_ids": packed.fed, "attention_mask": mask, "use_cache": True,
              "position_ids": answer_positions(batch.attention_mask, packed)}
    split = decoder_and_head(lm.model)
    if split is None:
        logits = lm.model(**inputs, **{lm.cache_keyword: returned_cache(out)}).logits  # [B, W, V]
        return normalise_scores(gather_logprobs(first, logits, packed), packed.lengths, lm.score_norm)
    decoder, head = split
    hidden = decoder(**inputs, **{cache_keyword(decoder): returned_cache(out)}).last_hidden_state  # [B, W, H]
    summed = summed_logprobs(first, head_logprobs(hidden, head, packed), packed)
    return normalise_scores(summed, packed.lengths, lm.score_norm)


def line_complete(text: str) -> bool:
    """Whether decoded `text` already holds the whole first line LLaRA's rule reads (`parse_generation`): a
    newline after some non-blank text. Leading blank lines do not count, since the rule strips them."""
    return "\n" in text.lstrip()


class CandidateTrie:
    """Prefix tree over the candidates' answer ids; a path ends (at the terminator) on one candidate."""

    def __init__(self, answers: dict[int, list[int]]):
        self.root: dict = {}
        for item, ids in answers.items():
            node = self.root
            for t in ids:
                node = node.setdefault(t, {})
            node.setdefault(None, item)  # first of identical answers wins

    @staticmethod
    def allowed(node: dict) -> list[int]:
        return [t for t in node if t is not None]


@torch.inference_mode()
def greedy_decode(lm: HybridLM, batch: PromptBatch, max_new_tokens: int = MAX_NEW_TOKENS,
                  constrained: bool = False, hybrid: bool = True, stop_at_line_end: bool = True
                  ) -> tuple[list[list[int]], list[int | None]]:
    """Greedy decoding with a KV cache; stops a row at the answer's terminator or the tokenizer's EOS (the same
    token unless a chat template ends turns with its own) and, in free decoding with `stop_at_line_end`, once its
    decoded text (special tokens skipped, as `rank` decodes it) completes a first line (`line_complete`).
    Finished rows leave the batch (`Cache.batch_select_indices`), so the steps after a row's answer cost nothing.

    Returns the generated ids per row and, when `constrained`, the candidate each row's path ended on.
    `max_new_tokens` bounds free decoding only: constrained decoding always runs until every row has completed a
    candidate's answer (at most the longest candidate answer), so it always returns a candidate.
    """
    B = batch.input_ids.shape[0]
    eos = lm.builder.terminator
    stops = {eos, lm.builder.eos}
    tok = lm.builder.tokenizer
    mask = batch.attention_mask
    out = lm(batch, hybrid, use_cache=True, **_last_logits_only(lm))
    logits, cache = out.logits[:, -1].float(), returned_cache(out)
    pos = position_ids(mask)[:, -1:]
    tries = nodes = None
    steps = max_new_tokens
    if constrained:
        tries = [CandidateTrie({int(c): lm.builder.answer_ids[int(c)] for c in row})
                 for row in batch.candidates.tolist()]
        nodes = [t.root for t in tries]
        steps = max(len(lm.builder.answer_ids[int(c)]) for c in batch.candidates.flatten().tolist())
    generated: list[list[int]] = [[] for _ in range(B)]
    chosen: list[int | None] = [None] * B
    done = [False] * B
    rows = list(range(B))  # the batch row behind each row still decoded (of logits, cache, mask, pos)
    for _ in range(steps):
        if constrained:
            allowed = torch.full_like(logits, float("-inf"))
            for r, b in enumerate(rows):
                if not done[b]:
                    allowed[r, CandidateTrie.allowed(nodes[b])] = 0.0
            logits = logits + allowed
        next_ids = logits.argmax(-1)  # [R]
        for r, b in enumerate(rows):
            if done[b]:
                continue
            t = int(next_ids[r])
            generated[b].append(t)
            if constrained:
                nodes[b] = nodes[b][t]
                if None in nodes[b]:
                    chosen[b], done[b] = nodes[b][None], True
            elif t in stops or (stop_at_line_end and line_complete(
                    tok.decode(generated[b], skip_special_tokens=True))):
                done[b] = True
        if all(done):
            break
        keep = [r for r, b in enumerate(rows) if not done[b]]
        if len(keep) < len(rows) and hasattr(cache, "batch_select_indices"):
            # finished rows leave the batch (their cache too): a step costs the rows still decoding, not B
            index = torch.tensor(keep, device=next_ids.device)
            cache.batch_select_indices(index)
            next_ids, mask, pos, rows = next_ids[index], mask[index], pos[index], [rows[r] for r in keep]
        else:
            next_ids = torch.where(torch.tensor([done[b] for b in rows], device=next_ids.device), eos, next_ids)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos + 1
        out = lm.model(input_ids=next_ids[:, None], attention_mask=mask, position_ids=pos, use_cache=True,
                       **{lm.cache_keyword: cache})
        logits, cache = out.logits[:, -1].float(), returned_cache(out)
    return generated, chosen


def parse_generation(text: str, candidate_texts: list[str]) -> int | None:
    """LLaRA's rule: the first line of the output, lowercased; the index of the ONE candidate whose (lowercased)
    answer text is a substring of it, or None when no candidate or several candidates match (invalid)."""
    line = text.strip().split("\n", 1)[0].strip().lower()
    hits = [i for i, c in enumerate(candidate_texts) if c.strip() and c.strip().lower() in line]
    return hits[0] if len(hits) == 1 else None


def rank(lm: HybridLM, batch: PromptBatch, mode: Mode = "score", max_new_tokens: int = MAX_NEW_TOKENS,
         hybrid: bool = True, stop_at_line_end: bool = True) -> Ranking:
    """Rank one batch of prompts in `mode` (`stop_at_line_end`: see `greedy_decode`; the choices are the same
    either way, only the decoding after the first line is saved)."""
    if mode == "score":
        scores = score_candidates(lm, batch, hybrid)
        best = scores.argmax(1)
        return Ranking(scores, [int(batch.candidates[b, best[b]]) for b in range(len(best))])
    if mode == "constrained":
        generated, chosen = greedy_decode(lm, batch, max_new_tokens, constrained=True, hybrid=hybrid)
        return Ranking(None, chosen, generated=generated)
    if mode == "generate":
        generated, _ = greedy_decode(lm, batch, max_new_tokens, constrained=False, hybrid=hybrid,
                                     stop_at_line_end=stop_at_line_end)
        tok = lm.builder.tokenizer
        texts = tok.batch_decode(generated, skip_special_tokens=True)
        chosen = []
        for text, row in zip(texts, batch.candidates.tolist()):
            k = parse_generation(text, [lm.builder.answer_text(c) for c in row])
            chosen.append(None if k is None else int(row[k]))
        return Ranking(None, chosen, texts, generated)
    raise ValueError(f"unknown ranking mode {mode!r}; expected one of {', '.join(MODES)}")
