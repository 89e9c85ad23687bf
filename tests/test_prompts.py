"""Prompts rendered as text and tokenized in one call, for the three tokenizer families (tiny, offline).

Tokenizers trained here with the `tokenizers` library: word-level, byte-level BPE (GPT-2 / Llama-3 / Qwen2
style) and SentencePiece-style BPE with a Metaspace pre-tokenizer wrapped as `LlamaTokenizer` (Llama-2 style).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

from llmrec.base.errors import ConfigError, DataError
from llmrec.llm.backbone import add_slot_tokens
from llmrec.llm.hybrid import collate_prompts
from llmrec.llm.prompts import (
    CANDIDATE_SLOT,
    HISTORY_SLOT,
    TEMPLATES,
    PromptBuilder,
    choose_template,
    render_prompt,
    template_corpus,
)
from llmrec.llm.tokenizer import train_tokenizer

TITLES = ["", "Toy Story (1995)", "Fire Moon (2000)", "Glass Stone (1987)", "'burbs, The (1989)",
          "2001: A Space Odyssey (1968)", "Amélie (2001)", "Heat (1995)", "  Babe   (1995) ", "Night River (1990)",
          "Wolf City (1984)", "Red Garden (1979)", "Storm (1992)", "Blue Moon (2003)"]
KINDS = ("word", "bpe", "sentencepiece")
BOS_ID = {"word": 2, "bpe": 2, "sentencepiece": 1}  # `<s>` of each tiny tokenizer (see llmrec.llm.tokenizer)


def make_tokenizer(kind: str):
    tok = train_tokenizer(kind, TITLES[1:] + template_corpus(), 512, 400)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok, add_slot_tokens(tok)


@pytest.fixture(scope="module", params=KINDS)
def kind_builder(request):
    tok, slots = make_tokenizer(request.param)
    return request.param, PromptBuilder(tok, TITLES, "movies", slots, 512)


def samples(n: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = np.arange(1, len(TITLES))
    for u in range(n):
        picked = rng.permutation(items)
        yield picked[:int(rng.integers(1, 7))].tolist(), picked[7:7 + int(rng.integers(1, 6))].tolist(), u, u % 5


def decode(builder, ids):
    return builder.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


# ---------------------------------------------------------------------- rendering
def test_a_prompt_is_written_as_a_person_would_write_it():
    tok, slots = make_tokenizer("bpe")
    b = PromptBuilder(tok, TITLES, "movies", slots, 512)
    assert b.render([1, 8], [7, 4], 0) == (
        "A viewer watched these films in order: Toy Story (1995) <|hist|>, Babe (1995) <|hist|>. Which one of "
        "these films will they watch next: Heat (1995) <|cand|>, 'burbs, The (1989) <|cand|>? Answer with one "
        "title. Next film:")
    b_sum = PromptBuilder(tok, TITLES, "movies", slots, 512, summary=True)
    assert b_sum.render([2], [3], 2, text_only=True) == (
        "This person has seen Fire Moon (2000) <|text|>. Their taste in one token: <|text|>. From the list "
        "Glass Stone (1987) <|text|>, the movie they will see next is:")
    assert b.titles[8] == "Babe (1995)"  # whitespace collapsed
    for history, candidates, _, _ in samples():
        for k in range(3):
            for builder in (b, b_sum):
                assert "  " not in builder.render(history, candidates, k)


def test_render_prompt_and_the_templates_have_the_fields_and_ending_the_answer_needs():
    assert render_prompt("Seen {history}.{summary} Options {candidates}. Pick:", ["A (1)"], ["B (2)", "C (3)"]) == \
        "Seen A (1) <|hist|>. Options B (2) <|cand|>, C (3) <|cand|>. Pick:"
    for group in TEMPLATES.values():
        for t in group:
            assert t.endswith(":") and "  " not in t
    tok, slots = make_tokenizer("word")
    TEMPLATES["broken"] = ("Seen {history}.{summary} Options {candidates}",)
    try:
        with pytest.raises(ConfigError, match="must end with words after"):
            PromptBuilder(tok, TITLES, "broken", slots, 512)
    finally:
        del TEMPLATES["broken"]


# ---------------------------------------------------------------------- one tokenizer call on the text
@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_decoding_the_prompt_ids_gives_exactly_the_rendered_text(kind):
    tok, slots = make_tokenizer(kind)
    for summary in (False, True):
        b = PromptBuilder(tok, TITLES, "movies", slots, 512, summary=summary)
        seen = set()
        for history, candidates, user, position in samples():
            p = b.build(history, candidates, user, position)
            seen.add(p.template)
            assert p.ids[:1] == [BOS_ID[kind]] == b.bos  # the tokenizer's own BOS, once
            text = b.render(p.history, p.candidates, p.template)
            assert decode(b, p.ids[1:]) == text and "  " not in text
            assert p.ids[1:] == tok(text, add_special_tokens=False)["input_ids"]  # one call on the whole text
        assert seen == {0, 1, 2}


def test_the_word_level_tokenizer_decodes_the_rendered_words_joined_by_one_space():
    """The documented exception: a word-level tokenizer keeps no spacing; its ids are still the text's words."""
    tok, slots = make_tokenizer("word")
    b = PromptBuilder(tok, TITLES, "movies", slots, 512)
    text = b.render([4, 5], [6], 1)
    ids = tok(text)["input_ids"]
    assert ids[0] == BOS_ID["word"] == b.bos[0]
    assert decode(b, ids[1:]) == (
        "Movie log , oldest first : ' burbs , The ( 1989 ) <|hist|> , 2001 : A Space Odyssey ( 1968 ) <|hist|> . "
        "Candidates for the next movie : Amélie ( 2001 ) <|cand|> . Pick exactly one of the candidates . Pick :")
    for history, candidates, user, position in samples():
        p = b.build(history, candidates, user, position)
        rendered = b.render(p.history, p.candidates, p.template)
        assert p.ids == tok(rendered)["input_ids"]
        words = [w for w, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(rendered.replace(
            HISTORY_SLOT, " ").replace(CANDIDATE_SLOT, " "))]
        assert decode(b, p.ids[1:]).replace(f" {HISTORY_SLOT}", "").replace(f" {CANDIDATE_SLOT}", "") == " ".join(words)


def test_slot_tokens_appear_once_per_item_behind_its_title_and_are_found_by_id(kind_builder):
    kind, b = kind_builder
    for history, candidates, user, position in samples():
        p = b.build(history, candidates, user, position)
        ids = np.array(p.ids)
        where = np.flatnonzero(np.isin(ids, b.slots.behavioural + (b.slots.text,)))
        assert ids[where].tolist() == [b.slots.history] * len(history) + [b.slots.candidate] * len(candidates)
        start = 0
        for pos, item in zip(where, history + candidates):
            before = b.tokenizer.decode(p.ids[start:pos], skip_special_tokens=True)
            space = "" if kind == "word" else " "  # word-level decoding keeps no spacing
            assert before.endswith(b.answer_text(item) + space), (kind, before, item)  # "<title> <slot>"
            start = pos + 1
        assert b.to_text_only(p.ids).count(b.slots.text) == len(history) + len(candidates)


# ---------------------------------------------------------------------- answers
def test_answer_ids_are_what_the_tokenizer_produces_for_the_title_after_the_prompt(kind_builder):
    kind, b = kind_builder
    tok = b.tokenizer
    assert b.answer_mismatches == []
    for item in range(1, len(TITLES)):
        assert b.answer_ids[item] == b.title_ids[item] + [b.eos]
        for k in range(3):
            ids = b.bos + tok(b.render([1, 2], [3, item], k), add_special_tokens=False)["input_ids"]
            full = tok(b.render([1, 2], [3, item], k) + " " + b.titles[item])["input_ids"]
            assert full == ids + b.title_ids[item], (kind, item, k)
    first = tok.convert_ids_to_tokens(b.title_ids[1])[0]  # "Toy Story (1995)" after "...:" and a space
    assert first.startswith({"word": "Toy", "bpe": "Ġ", "sentencepiece": "▁"}[kind])  # word-start marker kept
    if kind != "word":  # byte-level and SentencePiece decode a title exactly
        assert [b.answer_text(i) for i in range(1, len(TITLES))] == [" ".join(t.split()) for t in TITLES[1:]]


def test_a_training_row_is_the_tokenized_prompt_text_plus_the_title_and_terminator(kind_builder):
    _, b = kind_builder
    history, candidates, target = [1, 2, 3], [9, 4, 5], 4
    p = b.build(history, candidates, 7, 3)
    batch = collate_prompts([p], b.tokenizer.pad_token_id, [target], [candidates], [7], [3],
                            answers=[b.answer_ids[target]])
    text = b.render(p.history, p.candidates, p.template) + " " + b.titles[target]
    assert batch.input_ids[0].tolist() == b.tokenizer(text)["input_ids"] + [b.eos]
    assert batch.labels[0, -len(b.answer_ids[target]):].tolist() == b.answer_ids[target]


def test_a_tokenizer_that_merges_the_prompt_end_with_the_answer_gets_the_documented_answer_ids(caplog):
    """Hand-made SentencePiece-style BPE with a piece ":▁" that spans the space before the answer: no fixed
    answer ids can match every prompt, so the builder says so and uses the ids of " <title>" alone."""
    chars = sorted({c for t in TITLES[1:] + template_corpus() for c in t.replace(" ", "▁")} | {"▁"})
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    vocab[":▁"] = len(vocab)
    model = Tokenizer(BPE(vocab=vocab, merges=[(":", "▁")], unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    model.decoder = decoders.Metaspace(prepend_scheme="first")
    model.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    slots = add_slot_tokens(tok)
    with caplog.at_level(logging.WARNING):
        b = PromptBuilder(tok, TITLES, "movies", slots, 512)
    assert b.answer_mismatches == list(range(1, len(TITLES))) and "merges a prompt's last word" in caplog.text
    toy = [vocab[c] for c in "▁Toy▁Story▁(1995)"]
    assert b.title_ids[1] == toy == tok(" Toy Story (1995)", add_special_tokens=False)["input_ids"]
    prompt = b.build([2], [1], 0, 0)
    full = tok(b.render(prompt.history, prompt.candidates, prompt.template) + " Toy Story (1995)")["input_ids"]
    assert full[len(prompt.ids) - 1] == vocab[":▁"] != prompt.ids[-1]  # the merge the answer ids cannot follow


def test_a_legacy_sentencepiece_tokenizer_is_reported_and_keeps_its_own_tokenization(caplog):
    """Llama-2 / Mistral tokenizers loaded with `legacy: true` put "▁" before the text after every special token:
    the builder logs it and does not alter the model's tokenizer; the answer ids still follow the prompt."""
    tok, slots = make_tokenizer("sentencepiece")
    assert not PromptBuilder(tok, TITLES, "movies", slots, 512).marks_text_after_slots
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=False)
    with caplog.at_level(logging.WARNING):
        b = PromptBuilder(tok, TITLES, "movies", slots, 512)
    assert b.marks_text_after_slots and "legacy" in caplog.text and b.answer_mismatches == []
    p = b.build([1, 2], [3], 0, 0)
    assert decode(b, p.ids[1:]) == b.render([1, 2], [3], p.template).replace(
        f"{HISTORY_SLOT},", f"{HISTORY_SLOT} ,").replace(f"{HISTORY_SLOT}.", f"{HISTORY_SLOT} .").replace(
        f"{CANDIDATE_SLOT},", f"{CANDIDATE_SLOT} ,").replace(f"{CANDIDATE_SLOT}?", f"{CANDIDATE_SLOT} ?").replace(
        f"{CANDIDATE_SLOT}.", f"{CANDIDATE_SLOT} .")
    assert tok(b.render([1, 2], [3], p.template) + " " + b.titles[4])["input_ids"] == p.ids + b.title_ids[4]


# ---------------------------------------------------------------------- BOS
def test_the_tokenizer_decides_the_bos():
    tok, slots = make_tokenizer("bpe")
    tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)  # as GPT-2 / Qwen2: no BOS
    b = PromptBuilder(tok, TITLES, "movies", slots, 512)
    p = b.build([1], [2], 0, 0)
    assert b.bos == [] and p.ids == tok(b.render([1], [2], p.template))["input_ids"]
    assert tok.convert_ids_to_tokens(p.ids[:1]) == [{0: "A", 1: "Movie", 2: "This"}[p.template]]
    sp = train_tokenizer("sentencepiece", TITLES[1:] + template_corpus(), 512, 400)
    sp.add_eos_token = True  # a tokenizer that appends EOS: the prompt must still end where the answer starts
    b = PromptBuilder(sp, TITLES, "movies", add_slot_tokens(sp), 512)
    p = b.build([1], [2], 0, 0)
    assert b.bos == [1] and p.ids[-1] != sp.eos_token_id and sp(b.render([1], [2], p.template))["input_ids"] == \
        p.ids + [sp.eos_token_id]


# ---------------------------------------------------------------------- truncation and templates
def test_truncation_keeps_the_newest_items_and_drops_the_fewest(kind_builder):
    _, b0 = kind_builder
    history, candidates = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13]
    full = b0.build(history, candidates, 1, 1)
    lengths = {d: len(b0.bos + b0.encode([b0.render(history[d:], candidates, full.template)])[0])
               for d in range(len(history))}
    assert all(lengths[d] > lengths[d + 1] for d in range(len(history) - 1))
    for want in (1, 4, 9):
        limit = lengths[want] + b0.max_answer_length  # exactly fits with `want` dropped, not with one fewer
        b = PromptBuilder(b0.tokenizer, TITLES, "movies", b0.slots, limit)
        p = b.build(history, candidates, 1, 1)
        assert (p.dropped, p.history, p.candidates) == (want, history[want:], candidates)
        assert len(p.ids) == lengths[want] and len(p.ids) + b.max_answer_length <= limit and b.n_truncated == 1
    with pytest.raises(DataError, match="exceeds max length"):
        PromptBuilder(b0.tokenizer, TITLES, "movies", b0.slots, lengths[9] + b0.max_answer_length - 1
                      ).build(history, candidates, 1, 1)


def test_truncation_needs_few_tokenizer_calls():
    tok, slots = make_tokenizer("bpe")
    history = [int(i) for i in np.resize(np.arange(1, 10), 60)]  # 60 history items, 51 to drop
    b0 = PromptBuilder(tok, TITLES, "movies", slots, 4096)
    keep9 = len(b0.build(history[51:], [10, 11], 3, 3).ids)
    b = PromptBuilder(tok, TITLES, "movies", slots, keep9 + b0.max_answer_length)
    calls = []
    encode_one = b._encode_one
    b._encode_one = lambda text: calls.append(text) or encode_one(text)
    p = b.build(history, [10, 11], 3, 3)
    assert p.dropped == 51 and p.history == history[51:]
    assert len(calls) <= 2 + math.ceil(math.log2(len(history))) + 1 < 51


def test_build_many_equals_build_prompt_for_prompt(kind_builder):
    _, b0 = kind_builder
    rows = list(samples(40, seed=1))
    shortest = max(len(b0.build(h[-1:], c, u, p).ids) for h, c, u, p in rows)  # every row fits with 1 item
    limit = max(shortest, int(np.median([len(b0.build(h, c, u, p).ids) for h, c, u, p in rows])))
    limit += b0.max_answer_length
    one = PromptBuilder(b0.tokenizer, TITLES, "movies", b0.slots, limit)
    many = PromptBuilder(b0.tokenizer, TITLES, "movies", b0.slots, limit)
    singles = [one.build(h, c, u, p) for h, c, u, p in rows]
    batched = many.build_many(*map(list, zip(*rows)))
    assert [vars(s) for s in singles] == [vars(m) for m in batched]
    assert many.n_truncated == one.n_truncated > 0


def test_template_choice_is_seeded_per_seed_user_and_position():
    tok, slots = make_tokenizer("bpe")
    b0, b0_again, b1 = (PromptBuilder(tok, TITLES, "movies", slots, 512, seed=s) for s in (0, 0, 1))
    picks0, picks1 = [], []
    for history, candidates, user, position in samples(40):
        p = b0.build(history, candidates, user, position)
        assert p.template == choose_template(3, 0, user, position)
        assert p == b0_again.build(history, candidates, user, position)
        assert decode(b0, p.ids[1:]).startswith(TEMPLATES["movies"][p.template].split("{history}")[0])
        picks0.append(p.template)
        picks1.append(b1.build(history, candidates, user, position).template)
    assert len(set(picks0)) == 3 and picks0 != picks1


# ---------------------------------------------------------------------- bad input
def test_slot_tokens_that_are_not_special_tokens_of_the_tokenizer_are_refused():
    _, slots = make_tokenizer("bpe")
    plain = train_tokenizer("bpe", TITLES[1:] + template_corpus(), 512, 400)  # no slot tokens added
    with pytest.raises(ConfigError, match="not single special tokens"):
        PromptBuilder(plain, TITLES, "movies", slots, 512)


def test_a_title_holding_a_slot_token_is_refused():
    tok, slots = make_tokenizer("word")
    with pytest.raises(DataError, match="item 3: title .* contains a slot token"):
        PromptBuilder(tok, TITLES[:3] + ["Toy <|cand|> Story"], "movies", slots, 512)
