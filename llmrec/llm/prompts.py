"""Prompt templates and their assembly into token ids (DESIGN.md §5).

An item is rendered as its title followed by ONE slot token: a behavioural slot (`<|hist|>` for a history
item, `<|cand|>` for a candidate) whose embedding is later replaced by `projector(encoder item embedding)`,
or, in text-only prompts, the `<|text|>` slot that is kept as a learned token. An optional `<|summary|>` slot
after the history carries `projector(encoder seq_repr)`.

Prompts are assembled at the token-id level from pieces tokenized once: each template's literal text, the
item separator, and each item's title. An item's title ids are computed ONCE (`PromptBuilder.title_ids`) and
its answer ids are the same title ids plus the terminator (`PromptBuilder.answer_ids`), so training, scoring
and decoding all see exactly the same tokens for an item, whatever the tokenizer (a BPE tokenizer may split
" Title" and "Title" differently; here there is only one way). Prompts are built with the behavioural slots;
a text-only batch swaps every slot id for the text slot id (`to_text_only`), which keeps lengths identical.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmrec.errors import ConfigError, DataError

log = logging.getLogger(__name__)

HISTORY_SLOT, CANDIDATE_SLOT, TEXT_SLOT, SUMMARY_SLOT = "<|hist|>", "<|cand|>", "<|text|>", "<|summary|>"
SLOT_TOKENS: tuple[str, ...] = (HISTORY_SLOT, CANDIDATE_SLOT, TEXT_SLOT, SUMMARY_SLOT)

# Written for this project. Each template holds {history} and {candidates}, and {summary} right after the
# history (empty unless the prompt kind is `hybrid+summary`); the answer follows the template's last word.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "movies": (
        ("A viewer watched these films in order: {history}.{summary} Which one of these films will they "
         "watch next: {candidates}? Answer with one title. Next film:"),
        ("Movie log, oldest first: {history}.{summary} Candidates for the next movie: {candidates}. Pick "
         "exactly one of the candidates. Pick:"),
        ("This person has seen {history}.{summary} From the list {candidates}, the movie they will see "
         "next is:"),
    ),
    "games": (
        ("A player played these games in order: {history}.{summary} Which one of these games will they "
         "play next: {candidates}? Answer with one title. Next game:"),
        ("Game library history, oldest first: {history}.{summary} Candidates for the next game: "
         "{candidates}. Pick exactly one of the candidates. Pick:"),
        ("This gamer has played {history}.{summary} From the list {candidates}, the game they will play "
         "next is:"),
    ),
    "music": (
        ("A listener played these artists in order: {history}.{summary} Which one of these artists will "
         "they listen to next: {candidates}? Answer with one name. Next artist:"),
        ("Listening history, oldest first: {history}.{summary} Candidates for the next artist: "
         "{candidates}. Pick exactly one of the candidates. Pick:"),
        ("This person listened to {history}.{summary} From the list {candidates}, the artist they will "
         "play next is:"),
    ),
    "generic": (
        ("A user interacted with these items in order: {history}.{summary} Which one of these items will "
         "they choose next: {candidates}? Answer with one title. Next item:"),
        ("Interaction history, oldest first: {history}.{summary} Candidates for the next item: "
         "{candidates}. Pick exactly one of the candidates. Pick:"),
        ("This user chose {history}.{summary} From the list {candidates}, the item they will choose next "
         "is:"),
    ),
}
SUMMARY_TEXT = " Their taste in one token:"  # followed by the summary slot and "."
ITEM_SEPARATOR = ","
_FIELDS = {"history", "candidates", "summary"}


def templates_for(domain: str) -> tuple[str, ...]:
    """The templates of a domain; unknown domains use the generic wording."""
    return TEMPLATES.get(domain, TEMPLATES["generic"])


def template_corpus() -> list[str]:
    """Every literal word the prompts can contain, for training a tokenizer."""
    texts = [SUMMARY_TEXT, ITEM_SEPARATOR, "."]
    for group in TEMPLATES.values():
        for t in group:
            texts.append(t.format(history="", candidates="", summary=""))
    return texts


@dataclass(frozen=True)
class SlotIds:
    """Token ids of the four slot tokens in a tokenizer."""

    history: int
    candidate: int
    text: int
    summary: int

    @property
    def behavioural(self) -> tuple[int, int, int]:
        return (self.history, self.candidate, self.summary)


@dataclass
class Prompt:
    """One assembled prompt (no answer): ids and the items whose slots it holds, in slot order."""

    ids: list[int]
    history: list[int]          # history items kept after truncation, oldest -> newest (one slot each)
    candidates: list[int]       # candidate items in prompt order (one slot each)
    dropped: int                # oldest history items dropped to fit the model's length


def choose_template(n_templates: int, seed: int, user_id: int, position: int) -> int:
    """Seeded per sample: the same sample always gets the same template for a given seed."""
    return int(np.random.default_rng([seed, int(user_id), int(position)]).integers(n_templates))


class PromptBuilder:
    """Assembles prompts as token ids for one tokenizer, catalog and domain.

    Args:
        tokenizer: a Hugging Face tokenizer that already holds the slot tokens.
        titles: titles indexed by item id (index 0 = padding, unused).
        domain: chooses the template wording (`movies`, `games`, `music`, `generic`).
        slots: ids of the slot tokens in `tokenizer`.
        max_length: the longest prompt + answer the model may see.
        summary: add the sequence-summary slot after the history.
        seed: template choice is seeded per (seed, user, position).
    """

    def __init__(self, tokenizer, titles: Sequence[str], domain: str, slots: SlotIds, max_length: int,
                 summary: bool = False, seed: int = 0):
        if tokenizer.eos_token_id is None:
            raise ConfigError("the tokenizer has no end-of-sequence token; the answer terminator needs one")
        self.tokenizer, self.slots, self.max_length, self.summary, self.seed = (
            tokenizer, slots, max_length, summary, seed)
        self.eos = int(tokenizer.eos_token_id)
        self.bos = [int(tokenizer.bos_token_id)] if tokenizer.bos_token_id is not None else []
        self._piece_cache: dict[str, list[int]] = {}
        encoded = tokenizer([" " + t for t in titles[1:]], add_special_tokens=False)["input_ids"]
        self.title_ids: list[list[int]] = [[]] + [list(map(int, ids)) for ids in encoded]
        for item, (title, ids) in enumerate(zip(titles[1:], self.title_ids[1:]), start=1):
            if not ids:
                raise DataError(f"item {item}: title {title!r} tokenizes to nothing; every item needs at least "
                                f"one title token (fix the title in items.parquet)")
        self.answer_ids: list[list[int]] = [[]] + [ids + [self.eos] for ids in self.title_ids[1:]]
        self.max_answer_length = max((len(a) for a in self.answer_ids), default=1)
        self._answer_tables: dict[str, tuple] = {}
        self._answer_texts: dict[int, str] = {}
        self.templates = [self._parse(t) for t in templates_for(domain)]
        self.n_truncated = 0

    # ------------------------------------------------------------------ pieces
    def _piece(self, text: str) -> list[int]:
        if text not in self._piece_cache:
            self._piece_cache[text] = list(map(int, self.tokenizer(text, add_special_tokens=False)["input_ids"]))
        return self._piece_cache[text]

    def _parse(self, template: str) -> list[tuple[str, str | None]]:
        parts = []
        for literal, field, _, _ in string.Formatter().parse(template):
            if field is not None and field not in _FIELDS:
                raise ConfigError(f"prompt template field {{{field}}} is unknown; expected {sorted(_FIELDS)}")
            parts.append((literal, field))
        return parts

    def _items(self, items: Sequence[int], slot: int) -> list[int]:
        out: list[int] = []
        sep = self._piece(ITEM_SEPARATOR)
        for k, item in enumerate(items):
            if k:
                out += sep
            out += self.title_ids[int(item)] + [slot]
        return out

    def _assemble(self, template: int, history: Sequence[int], candidates: Sequence[int]) -> list[int]:
        ids = list(self.bos)
        for literal, field in self.templates[template]:
            if literal:
                ids += self._piece(literal)
            if field == "history":
                ids += self._items(history, self.slots.history)
            elif field == "candidates":
                ids += self._items(candidates, self.slots.candidate)
            elif field == "summary" and self.summary:
                ids += self._piece(SUMMARY_TEXT) + [self.slots.summary] + self._piece(".")
        return ids

    # ------------------------------------------------------------------ prompts
    def build(self, history: Sequence[int], candidates: Sequence[int], user_id: int = 0,
              position: int = 0) -> Prompt:
        """The prompt for one sample; the oldest history items are dropped until prompt + the longest answer
        in the catalog fit `max_length` (the same budget in training and ranking, so both truncate alike)."""
        template = choose_template(len(self.templates), self.seed, user_id, position)
        history = [int(i) for i in history]
        for start in range(len(history)):
            ids = self._assemble(template, history[start:], candidates)
            if len(ids) + self.max_answer_length <= self.max_length:
                if start:
                    self.n_truncated += 1
                    if self.n_truncated == 1:
                        log.warning("prompt for user %s at position %s is longer than the %d-token limit "
                                "(--max-length, at most the model's context): dropped its %d oldest history "
                                "item(s) (further truncations are counted, not logged)", user_id, position,
                                self.max_length, start)
                return Prompt(ids, history[start:], [int(c) for c in candidates], start)
        raise DataError(f"user {user_id} position {position}: even with one history item the prompt "
                        f"({len(self._assemble(template, history[-1:], candidates))} tokens) plus an answer "
                        f"({self.max_answer_length}) exceeds max length {self.max_length}; raise --max-length "
                        f"or use a model with a longer context")

    def to_text_only(self, ids):
        """Swap every behavioural slot id for the text slot id (works on lists and tensors)."""
        import torch

        if isinstance(ids, torch.Tensor):
            is_slot = torch.isin(ids, torch.tensor(self.slots.behavioural, device=ids.device))
            return torch.where(is_slot, torch.full_like(ids, self.slots.text), ids)
        return [self.slots.text if i in self.slots.behavioural else i for i in ids]

    def answer_text(self, item: int) -> str:
        """The item's title as the tokenizer decodes its answer ids: what generated text is matched against."""
        item = int(item)
        if item not in self._answer_texts:  # decoded once per item, not at every ranking call
            self._answer_texts[item] = self.tokenizer.decode(self.title_ids[item], skip_special_tokens=True).strip()
        return self._answer_texts[item]

    def answer_table(self, device=None):
        """`answer_ids` as tensors, built once per device: [n_items + 1, A] ids right-padded with the terminator
        (A = the longest answer) and [n_items + 1] lengths (0 for the padding item 0)."""
        import torch

        key = str(device or "cpu")
        if key not in self._answer_tables:
            ids = torch.full((len(self.answer_ids), self.max_answer_length), self.eos, dtype=torch.long)
            for item, a in enumerate(self.answer_ids):
                ids[item, :len(a)] = torch.tensor(a, dtype=torch.long)
            lengths = torch.tensor([len(a) for a in self.answer_ids], dtype=torch.long)
            self._answer_tables[key] = (ids.to(device or "cpu"), lengths.to(device or "cpu"))
        return self._answer_tables[key]
