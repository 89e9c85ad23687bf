"""Prompt templates, rendered as text and tokenized in one call (docs/design.md §5).

An item is rendered as its title, a space and ONE slot token: a behavioural slot (`<|hist|>` for a history
item, `<|cand|>` for a candidate) whose embedding is later replaced by `projector(encoder item embedding)`,
or, in text-only prompts, the `<|text|>` slot that is kept as a learned token. An optional `<|summary|>` slot
after the history carries `projector(encoder seq_repr)`. A prompt reads as a person would write it:

    A viewer watched these films in order: Toy Story (1995) <|hist|>, Fire Moon (2000) <|hist|>. Which one of
    these films will they watch next: Heat (1995) <|cand|>, Babe (1995) <|cand|>? Answer with one title. Next film:

`PromptBuilder.render` writes that text and `PromptBuilder.build` tokenizes it in ONE tokenizer call, so a
pretrained tokenizer sees exactly the text (no double spaces, no stray word-start markers before punctuation).
The slot tokens are special tokens of the tokenizer (`llmrec.llm.backbone.add_slot_tokens`): they are never
split, each is one id, and the items behind them are found by id, in order.

The answer follows the template's last word ("Next film:") after one space (in `chat` format: right after the
template's generation prompt, see below). An item's answer ids are built ONCE (`title_ids` + the terminator =
`answer_ids`; the terminator is the EOS, or a chat template's end-of-turn token) and reused by training, scoring
and decoding. They are what the tokenizer produces for " <title>" in that position, i.e.

    tokenize(prompt_text + " " + title) == prompt_ids + title_ids

which holds for word-level tokenizers, byte-level BPE with a GPT-2/Llama-3/Qwen2 pre-tokenizer (words are split
before the space that starts the answer) and SentencePiece BPE with a Metaspace pre-tokenizer (Llama-2, Mistral:
no piece spans a word boundary). Where a tokenizer cannot give this, the builder says so when it is built:
- a tokenizer with a piece spanning the prompt's last word and the answer's first (e.g. ":▁"): no fixed answer
  ids can match every prompt. Every item is checked after the end of every template; the mismatching items are
  logged and listed in `answer_mismatches`, and keep the ids their title gets after the FIRST template's ending
  (or, where appending the title changes the prompt's own ids, the ids of " <title>" alone);
- a word-level tokenizer keeps no spacing: its ids are those of the rendered text's words, but it decodes them
  joined by one space ("Toy Story ( 1995 ) <|hist|> ,");
- a SentencePiece tokenizer loaded with `legacy: true` (Metaspace prepend_scheme "always") starts the text after
  every special token with a word-start marker, so the model sees "<|hist|> ▁, Fire" for "<|hist|>, Fire"; the
  builder logs it (`marks_text_after_slots`) and leaves the model's tokenizer as it is.

Titles are rendered with their whitespace collapsed to single spaces. The tokenizer's own `add_special_tokens`
behaviour decides the BOS (Llama adds `<s>`, Qwen2 and GPT-2 add nothing); an EOS that a tokenizer would append
is not added, since the answer must follow the prompt directly. A text-only batch swaps every behavioural slot
id for the text slot id (`to_text_only`): all slots are single special tokens, so lengths stay identical.

Prompt format (`--prompt-format`, recorded in the checkpoint): `plain` (the default) is the text above. `chat`
wraps it as the user turn of the tokenizer's own chat template (`apply_chat_template(..., tokenize=False,
add_generation_prompt=True)`), so an instruct model sees the turn structure it was tuned on; for SmolLM2:

    <|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n<|im_start|>user\nA viewer
    watched ... Next film:<|im_end|>\n<|im_start|>assistant\n

The answer is then the assistant turn's content, the title with no leading space, followed by the template's
end-of-turn token (`ChatWrap.terminator`: what the model emits to close its turn; for SmolLM2 `<|im_end|>`, which
is also its EOS), not by the text the template writes after it (a newline that starts the next turn). The
wrapping is found once from the template (`chat_wrap`) as the text before and after the user's content, and
checked on real prompts, so rendering stays one string concatenation and truncation works as in `plain`. The
template's own start tokens are in its text; the tokenizer's BOS is not added again (as `apply_chat_template`
tokenizes). Slot tokens are special tokens in the text and pass through the template unchanged.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from llmrec.base.errors import ConfigError, DataError

log = logging.getLogger(__name__)

HISTORY_SLOT, CANDIDATE_SLOT, TEXT_SLOT, SUMMARY_SLOT = "<|hist|>", "<|cand|>", "<|text|>", "<|summary|>"
SLOT_TOKENS: tuple[str, ...] = (HISTORY_SLOT, CANDIDATE_SLOT, TEXT_SLOT, SUMMARY_SLOT)
PromptFormat = Literal["plain", "chat"]
PROMPT_FORMATS: tuple[str, ...] = ("plain", "chat")

# Written for this project. Each template holds {history} and {candidates}, and {summary} right after the
# history's full stop (empty unless the prompt kind is `hybrid+summary`); the answer follows the template's last
# word after one space.
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
SUMMARY_TEXT = " Their taste in one token:"  # followed by " <|summary|>."
ITEM_SEPARATOR = ", "
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


def clean_title(title: str) -> str:
    """A title as it is rendered: whitespace runs collapsed to one space, none at either end."""
    return " ".join(str(title).split())


def render_items(titles: Sequence[str], slot: str) -> str:
    """`"<title> <slot>, <title> <slot>"`: each item its title, a space and one slot token."""
    return ITEM_SEPARATOR.join(f"{t} {slot}" for t in titles)


def render_prompt(template: str, history_titles: Sequence[str], candidate_titles: Sequence[str],
                  summary: bool = False, history_slot: str = HISTORY_SLOT, candidate_slot: str = CANDIDATE_SLOT,
                  summary_slot: str = SUMMARY_SLOT) -> str:
    """The prompt text of one template (no answer): history oldest -> newest, candidates in the given order."""
    return template.format(history=render_items(history_titles, history_slot),
                           candidates=render_items(candidate_titles, candidate_slot),
                           summary=f"{SUMMARY_TEXT} {summary_slot}." if summary else "")


def check_template(template: str) -> str:
    """The text after `{candidates}` that the answer follows; refuses templates the builder cannot use."""
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise ConfigError(f"prompt template field {{{unknown[0]}}} is unknown; expected {sorted(_FIELDS)}")
    if sorted(fields) != sorted(_FIELDS):
        raise ConfigError(f"prompt template {template[:40]!r}...: needs each of {{history}}, {{candidates}} and "
                          f"{{summary}} exactly once")
    tail = template.rsplit("{candidates}", 1)[1]
    if "{" in tail or not tail.strip() or tail != tail.rstrip() or "  " in template:
        raise ConfigError(f"prompt template {template[:40]!r}...: must end with words after {{candidates}} (the "
                          f"answer follows them after one space), no trailing or double spaces")
    return tail


@dataclass(frozen=True)
class ChatWrap:
    """A chat template as seen by the prompt builder: the prompt text is `prefix + user text + suffix` (the suffix
    ends with the generation prompt, where the assistant's answer starts) and the answer ends with `terminator`."""

    prefix: str
    suffix: str
    terminator: int  # the end-of-turn token that closes the assistant's answer

    def wrap(self, text: str) -> str:
        return self.prefix + text + self.suffix


_USER, _ANSWER = "LLMRECUSERTEXT", "LLMRECANSWERTEXT"  # sentinels: one word each, so a template's trim keeps them


def _special_ids(tokenizer) -> set[int]:
    ids = {int(i) for i in tokenizer.all_special_ids}
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return ids | {int(i) for i, t in decoder.items() if getattr(t, "special", False)}


def chat_wrap(tokenizer) -> ChatWrap:
    """The tokenizer's chat template as a `ChatWrap`; `ConfigError` (one line) when it has none or when its
    rendering of a user turn is not a fixed text around the user's content.

    The terminator is the first token of what the template writes after an assistant's content when that token
    is a special token (ChatML's `<|im_end|>`, Llama-3's `<|eot_id|>`): the token the model was tuned to emit at
    the end of its turn, hence what training teaches, score mode scores and decoding stops at. A template that
    closes the turn with plain text (or not at all) ends the answer with the tokenizer's EOS, as `plain` does."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("--prompt-format chat: this tokenizer has no chat template (no chat_template in its "
                          "tokenizer_config.json nor a chat_template.jinja beside it); use --prompt-format plain")
    user = [{"role": "user", "content": _USER}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": _ANSWER}], tokenize=False)
    if not isinstance(prompt, str) or prompt.count(_USER) != 1:
        raise ConfigError("--prompt-format chat: the tokenizer's chat template does not render the user's text "
                          "once, as given; use --prompt-format plain")
    if not full.startswith(prompt + _ANSWER):
        raise ConfigError("--prompt-format chat: the tokenizer's chat template does not put the assistant's answer "
                          "right after its generation prompt (add_generation_prompt=True); use --prompt-format plain")
    prefix, suffix = prompt.split(_USER)
    after = full[len(prompt + _ANSWER):].lstrip()
    ids = list(map(int, tokenizer(after, add_special_tokens=False)["input_ids"])) if after else []
    terminator = ids[0] if ids and ids[0] in _special_ids(tokenizer) else int(tokenizer.eos_token_id)
    return ChatWrap(prefix, suffix, terminator)


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
    template: int = 0           # index of the template in `PromptBuilder.templates`


def choose_template(n_templates: int, seed: int, user_id: int, position: int) -> int:
    """Seeded per sample: the same sample always gets the same template for a given seed."""
    return int(np.random.default_rng([seed, int(user_id), int(position)]).integers(n_templates))


class PromptBuilder:
    """Renders prompts as text and tokenizes them, for one tokenizer, catalog and domain.

    Args:
        tokenizer: a Hugging Face tokenizer that already holds the slot tokens as special tokens.
        titles: titles indexed by item id (index 0 = padding, unused).
        domain: chooses the template wording (`movies`, `games`, `music`, `generic`).
        slots: ids of the slot tokens in `tokenizer`.
        max_length: the longest prompt + answer the model may see.
        summary: add the sequence-summary slot after the history.
        seed: template choice is seeded per (seed, user, position).
        prompt_format: `plain` text, or `chat`: the text as the user turn of the tokenizer's chat template.
    """

    def __init__(self, tokenizer, titles: Sequence[str], domain: str, slots: SlotIds, max_length: int,
                 summary: bool = False, seed: int = 0, prompt_format: PromptFormat = "plain"):
        if tokenizer.eos_token_id is None:
            raise ConfigError("the tokenizer has no end-of-sequence token; the answer terminator needs one")
        if prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"prompt format {prompt_format!r} is unknown; expected one of {', '.join(PROMPT_FORMATS)}")
        self.tokenizer, self.slots, self.max_length, self.summary, self.seed = (
            tokenizer, slots, max_length, summary, seed)
        self.prompt_format: PromptFormat = prompt_format
        self.eos = int(tokenizer.eos_token_id)
        self.chat: ChatWrap | None = chat_wrap(tokenizer) if prompt_format == "chat" else None
        # what ends every answer: the EOS after plain text, the template's end-of-turn token in a chat
        self.terminator = self.chat.terminator if self.chat is not None else self.eos
        # what separates the prompt's last word from the answer: one space, or nothing after a chat's generation prompt
        self.answer_separator = "" if self.chat is not None else " "
        self.templates: tuple[str, ...] = tuple(templates_for(domain))
        tails = [check_template(t) for t in self.templates]
        self.titles: list[str] = [""] + [clean_title(t) for t in list(titles)[1:]]
        for item, title in enumerate(self.titles[1:], start=1):
            if any(s in title for s in SLOT_TOKENS):
                raise DataError(f"item {item}: title {title!r} contains a slot token {SLOT_TOKENS}; rename the "
                                f"item in items.parquet")
        if self.chat is not None:
            self._check_chat()
        self._backend = self._fast_backend()
        self.bos = self._bos() if self.chat is None else []  # a chat template writes its own start tokens
        self._check_slots()
        self.marks_text_after_slots = self._marks_text_after_slots()
        self.title_ids, self.answer_mismatches = self._title_ids(list(titles), tails)
        self.answer_ids: list[list[int]] = [[]] + [ids + [self.terminator] for ids in self.title_ids[1:]]
        self.max_answer_length = max((len(a) for a in self.answer_ids), default=1)
        self._answer_tables: dict[str, tuple] = {}
        self._answer_texts: dict[int, str] = {}
        self.n_truncated = 0

    # ------------------------------------------------------------------ tokenizer
    def _fast_backend(self):
        """The Rust tokenizer behind a fast HF tokenizer, when calling it directly gives the same ids as the HF
        call (it skips ~100 us of Python per call); None otherwise. Never used when the tokenizer file enables
        truncation or padding, which the HF call turns off but a direct call would apply."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None) if getattr(self.tokenizer, "is_fast", False) \
            else None
        if backend is None or backend.truncation is not None or backend.padding is not None:
            return None
        some = self.titles[1:4] or ["Heat (1995)"]
        probes = [self._wrap(render_prompt(t, some, some[::-1], summary=True)) for t in self.templates]
        slow = self.tokenizer(probes, add_special_tokens=False)["input_ids"]
        fast = [e.ids for e in backend.encode_batch(probes, add_special_tokens=False)]
        return backend if [list(map(int, s)) for s in slow] == fast else None

    def _wrap(self, text: str) -> str:
        """The prompt text as the model reads it: `text` itself, or the chat template's user turn holding it."""
        return text if self.chat is None else self.chat.wrap(text)

    def _check_chat(self) -> None:
        """The chat wrapping must be exactly what the template renders for real prompts (a template that trims,
        escapes or rewrites the content could not be rendered by concatenation)."""
        for template in self.templates:
            text = render_prompt(template, ["Heat (1995)", "Babe (1995)"], ["Heat (1995)"], summary=True)
            rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                          add_generation_prompt=True)
            if rendered != self._wrap(text):
                raise ConfigError(f"--prompt-format chat: the tokenizer's chat template changes the prompt text "
                                  f"({rendered[:80]!r}...); use --prompt-format plain")

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (one batched tokenizer call)."""
        if not texts:
            return []
        if self._backend is not None:
            return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]
        return [list(map(int, ids)) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def _encode_one(self, text: str) -> list[int]:
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return list(map(int, self.tokenizer(text, add_special_tokens=False)["input_ids"]))

    def _bos(self) -> list[int]:
        """The ids the tokenizer itself puts before a text (Llama: [<s>]; Qwen2, GPT-2: none). What it would
        put after the text (an EOS, for `add_eos_token=True` tokenizers) is left out: the answer follows."""
        probe = "Heat (1995)"
        plain = list(map(int, self.tokenizer(probe, add_special_tokens=False)["input_ids"]))
        full = list(map(int, self.tokenizer(probe, add_special_tokens=True)["input_ids"]))
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return full[:start]
        raise ConfigError(f"tokenizer {type(self.tokenizer).__name__}: adding its special tokens changes the "
                          f"text's own tokens ({plain} -> {full}); expected special tokens only around the text")

    def _check_slots(self) -> None:
        """Every slot must be ONE special token found by id; a tokenizer without them would split the text."""
        probe = render_prompt(self.templates[0], ["Heat (1995)", "Babe (1995)"], ["Heat (1995)"], summary=True)
        ids = self._encode_one(self._wrap(probe))
        counts = [ids.count(self.slots.history), ids.count(self.slots.candidate), ids.count(self.slots.summary)]
        if counts != [2, 1, 1] or self._encode_one(TEXT_SLOT) != [self.slots.text]:
            raise ConfigError(f"the slot tokens {SLOT_TOKENS} are not single special tokens of this tokenizer (found "
                              f"{counts} of [2, 1, 1] slots in a probe prompt); add them with "
                              f"`llmrec.llm.backbone.add_slot_tokens` and pass the ids it returns")

    def _marks_text_after_slots(self) -> bool:
        """Whether the tokenizer starts the text after a special token with a word-start marker that the same text
        would not get mid-sentence, e.g. a Llama-2 / Mistral tokenizer loaded with `legacy: true` (Metaspace
        prepend_scheme "always"): then "<|hist|>, Fire" is tokenized as "<|hist|>", "▁,", "▁Fire" and decodes
        as "<|hist|> , Fire" whatever the text says. Logged, not changed: the tokenizer is the model's own. Not
        checked for tokenizers that do not give back spacing at all (word-level)."""
        plain, slotted = "Heat, Heat", f"Heat{HISTORY_SLOT}, Heat"

        def round_trip(text: str) -> str:
            return self.tokenizer.decode(self._encode_one(text), skip_special_tokens=False,
                                         clean_up_tokenization_spaces=False)

        if round_trip(plain) != plain or round_trip(slotted) == slotted:
            return False
        log.warning("this tokenizer adds a word-start marker to the text after every special token (%r decodes as "
                    "%r; a SentencePiece tokenizer saved with `legacy: true`), so prompts read \"<|hist|> , \" "
                    "after each slot; set \"legacy\": false in the model's tokenizer_config.json to tokenize "
                    "them as written", slotted, round_trip(slotted))
        return True

    def _title_ids(self, raw_titles: list[str], tails: list[str]) -> tuple[list[list[int]], list[int]]:
        """Each title's ids as the tokenizer produces them right after a prompt's end and the answer separator
        (one space after the last word; nothing after a chat's generation prompt), taken after the first
        template's ending; items whose ids differ after another template's ending (or whose prompt ids change
        when the title is appended) are returned as mismatches."""
        # the prompt's last segment, exactly as rendered (a chat's suffix included)
        contexts = [CANDIDATE_SLOT + tail + (self.chat.suffix if self.chat is not None else "") for tail in tails]
        context_ids = self.encode(contexts)
        n = len(contexts)
        for item, title in enumerate(self.titles[1:], start=1):
            if not title:
                raise DataError(f"item {item}: title {raw_titles[item]!r} tokenizes to nothing; every item needs a "
                                f"non-blank title (fix the title in items.parquet)")
        sep = self.answer_separator
        encoded = self.encode([c + sep + t for t in self.titles[1:] for c in contexts])
        title_ids: list[list[int]] = [[]]
        mismatches: list[int] = []
        for item, title in enumerate(self.titles[1:], start=1):
            after = []
            for k, ctx in enumerate(context_ids):
                full = encoded[(item - 1) * n + k]
                after.append(full[len(ctx):] if full[:len(ctx)] == ctx else None)
            ids = after[0] if after[0] is not None else self._encode_one(sep + title)
            if not ids:
                raise DataError(f"item {item}: title {raw_titles[item]!r} tokenizes to nothing; every item needs at "
                                f"least one title token (fix the title in items.parquet)")
            if any(a != ids for a in after):
                mismatches.append(item)
            title_ids.append(ids)
        if mismatches:
            item = mismatches[0]
            log.warning("this tokenizer merges a prompt's last word with the answer: for %d of %d items (e.g. item "
                        "%d %r) the title's tokens after some template's ending are not %s; those items' answers "
                        "use the ids they get after the first template's ending", len(mismatches),
                        len(self.titles) - 1, item, self.titles[item], title_ids[item])
        return title_ids, mismatches

    # ------------------------------------------------------------------ prompts
    def render(self, history: Sequence[int], candidates: Sequence[int], template: int, text_only: bool = False
               ) -> str:
        """The prompt text for items `history` (oldest -> newest) and `candidates` with template number
        `template`; `text_only` writes the `<|text|>` slot instead of the behavioural ones."""
        slot = {"history_slot": TEXT_SLOT, "candidate_slot": TEXT_SLOT, "summary_slot": TEXT_SLOT} if text_only else {}
        return self._wrap(render_prompt(self.templates[template], [self.titles[int(i)] for i in history],
                                        [self.titles[int(i)] for i in candidates], self.summary, **slot))

    def _fits(self, ids: list[int]) -> bool:
        return len(ids) + self.max_answer_length <= self.max_length

    def build(self, history: Sequence[int], candidates: Sequence[int], user_id: int = 0,
              position: int = 0) -> Prompt:
        """The prompt for one sample; the oldest history items are dropped until prompt + the longest answer
        in the catalog fit `max_length` (the same budget in training and ranking, so both truncate alike)."""
        template = choose_template(len(self.templates), self.seed, user_id, position)
        history, candidates = [int(i) for i in history], [int(c) for c in candidates]
        ids = self.bos + self._encode_one(self.render(history, candidates, template))
        if self._fits(ids):
            return Prompt(ids, history, candidates, 0, template)
        return self._truncated(template, history, candidates, ids, user_id, position)

    def build_many(self, histories: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]],
                   user_ids: Sequence[int], positions: Sequence[int]) -> list[Prompt]:
        """`build` for many samples at once: one batched tokenizer call (parallel in Rust for fast tokenizers)
        for all untruncated prompts; equal, prompt for prompt, to calling `build` on each sample."""
        rows = [([int(i) for i in h], [int(c) for c in cs], choose_template(len(self.templates), self.seed, u, p))
                for h, cs, u, p in zip(histories, candidates, user_ids, positions, strict=True)]
        encoded = self.encode([self.render(h, cs, t) for h, cs, t in rows])
        out = []
        for (h, cs, t), ids, u, p in zip(rows, encoded, user_ids, positions):
            ids = self.bos + ids
            out.append(Prompt(ids, h, cs, 0, t) if self._fits(ids) else self._truncated(t, h, cs, ids, u, p))
        return out

    def _truncated(self, template: int, history: list[int], candidates: list[int], full: list[int], user_id: int,
                   position: int) -> Prompt:
        """Drop the fewest oldest history items that make the prompt fit (`full` = the ids with none dropped).

        The history slots' positions in `full` give each item's token count, hence a guess of how many to drop;
        the guess is checked (and the one before it), with a binary search over the rest when it was wrong
        (dropping items never lengthens a prompt): about 2 tokenizer calls per truncated prompt, at most
        ~log2(len(history)) + 3, never one per dropped item."""
        found: dict[int, list[int]] = {0: full}

        def fits(dropped: int) -> bool:
            if dropped not in found:
                text = self.render(history[dropped:], candidates, template)
                found[dropped] = self.bos + self._encode_one(text)
            return self._fits(found[dropped])

        n = len(history)
        slots = [k for k, t in enumerate(full) if t == self.slots.history]  # one per history item, in order
        excess = len(full) + self.max_answer_length - self.max_length
        guess = next((d for d in range(1, n) if slots[d] - slots[0] >= excess), n - 1)
        if n >= 2 and fits(guess):
            lo, hi = 1, guess
        else:
            lo, hi = guess + 1, n - 1
            if n < 2 or lo > hi or not fits(hi):
                tokens = len(found.get(max(n - 1, 0), full))
                raise DataError(f"user {user_id} position {position}: even with one history item the prompt "
                                f"({tokens} tokens) plus an answer ({self.max_answer_length}) exceeds max length "
                                f"{self.max_length}; raise --max-length or use a model with a longer context")
        if hi > lo:  # the guess is usually exact: then dropping one fewer does not fit
            if fits(hi - 1):
                hi -= 1
            else:
                lo = hi
        while lo < hi:  # invariant: `hi` fits, fewer than `lo` does not
            mid = (lo + hi) // 2
            if fits(mid):
                hi = mid
            else:
                lo = mid + 1
        self.n_truncated += 1
        if self.n_truncated == 1:
            log.warning("prompt for user %s at position %s is longer than the %d-token limit (--max-length, at most "
                        "the model's context): dropped its %d oldest history item(s) (further truncations are "
                        "counted, not logged)", user_id, position, self.max_length, lo)
        return Prompt(found[lo], history[lo:], candidates, lo, template)

    def to_text_only(self, ids):
        """Swap every behavioural slot id for the text slot id (works on lists and tensors)."""
        import torch

        if isinstance(ids, torch.Tensor):
            is_slot = torch.isin(ids, torch.tensor(self.slots.behavioural, device=ids.device))
            return torch.where(is_slot, torch.full_like(ids, self.slots.text), ids)
        return [self.slots.text if i in self.slots.behavioural else i for i in ids]

    # ------------------------------------------------------------------ answers
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
            ids = torch.full((len(self.answer_ids), self.max_answer_length), self.terminator, dtype=torch.long)
            for item, a in enumerate(self.answer_ids):
                ids[item, :len(a)] = torch.tensor(a, dtype=torch.long)
            lengths = torch.tensor([len(a) for a in self.answer_ids], dtype=torch.long)
            self._answer_tables[key] = (ids.to(device or "cpu"), lengths.to(device or "cpu"))
        return self._answer_tables[key]
