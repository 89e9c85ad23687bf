"""Tokenizers of the tiny backbone, trained locally on a catalog's titles and the prompt templates (docs/design.md §5).

Three kinds, each the kind of a family of real LLMs:
- `word` (the default): word-level. Why it is the default for the tiny backbone: the catalog is closed (every
  title word is seen when the tokenizer is built), so a word-level vocabulary has no out-of-vocabulary words on
  the data it serves, every title word is ONE token (a title is ~4-6 tokens instead of ~8-12 BPE pieces), and a
  from-scratch model learns item <-> word associations directly instead of first having to assemble words from
  pieces. On ML-100K (about 1.7k titles) the vocabulary is about 4k words, so the embedding table stays small.
  The price: decoding joins tokens with spaces ("Toy Story ( 1995 )"), so generated text is matched against
  each candidate's *decoded answer tokens*, never its raw title (see `llmrec.llm.ranking.parse_generation`).
- `bpe`: byte-level BPE with the GPT-2 pre-tokenizer, as GPT-2, Llama-3 and Qwen2 use. It decodes text
  exactly and covers any text, at ~2x the tokens per title on ML-100K.
- `sentencepiece`: BPE over SentencePiece-style pieces (`▁` marks a word start, a `▁` is put before the text's
  first word only, unknown characters fall back to `<0xNN>` byte tokens), wrapped as transformers'
  `LlamaTokenizer`, as Llama-2 and Mistral use. Decoding is exact.

Each adds `<s>` before every text it encodes (`add_special_tokens=True`), as Llama's tokenizer does, so the
tiny Llama sees a BOS like the model it stands for; `PromptBuilder` takes the BOS from this behaviour. The
tokenizer is saved with `save_pretrained` and loaded with `AutoTokenizer` exactly like the tokenizer of any
Hugging Face model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, WordLevel
from tokenizers.trainers import BpeTrainer, WordLevelTrainer
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
TOKENIZER_KINDS: tuple[str, ...] = ("word", "bpe", "sentencepiece")
BYTE_TOKENS: tuple[str, ...] = tuple(f"<0x{b:02X}>" for b in range(256))  # SentencePiece's byte fallback


def _wrap(tok: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                   pad_token=PAD, model_max_length=model_max_length)


def train_word_level_tokenizer(texts: Iterable[str], model_max_length: int) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on `texts` (titles + template text); every word seen gets one id.

    Words are split on whitespace and runs of punctuation (`\\w+|[^\\w\\s]+`), case kept, NFKC-normalised.
    Ids 0-3 are `<pad>`, `<unk>`, `<s>`, `</s>`; the vocabulary is sorted by frequency then word, so the
    result is deterministic for a given list of texts.
    """
    tok = Tokenizer(WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = WordLevelTrainer(special_tokens=[PAD, UNK, BOS, EOS], min_frequency=1, show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return _wrap(tok, model_max_length)


def train_bpe_tokenizer(texts: Iterable[str], model_max_length: int, vocab_size: int = 2048
                        ) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style: any byte sequence is encodable, decoding is exact) with at
    most `vocab_size` ids, the same four special tokens at ids 0-3, NFKC-normalised."""
    tok = Tokenizer(BPE(unk_token=None))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK, BOS, EOS], min_frequency=1,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return _wrap(tok, model_max_length)


def train_sentencepiece_tokenizer(texts: Iterable[str], model_max_length: int, vocab_size: int = 2048):
    """Train a Llama-2-style tokenizer: `<unk>`, `<s>`, `</s>` at ids 0-2, the 256 byte tokens `<0x00>`..`<0xFF>`
    at 3-258, then at most `vocab_size` - 259 BPE pieces; no normalisation, no padding token (as Llama-2).

    Pieces are learned on words split before each `▁`, as SentencePiece learns them, so no piece spans two
    words; transformers' `LlamaTokenizer` then applies them with its own Metaspace pre-tokenizer
    (prepend_scheme "first", no split) and its decoder, exactly as it does for a Llama-2 checkpoint.
    """
    from transformers import LlamaTokenizer

    specials = (UNK, BOS, EOS)
    n_fixed = len(specials) + len(BYTE_TOKENS)
    if vocab_size <= n_fixed:
        raise ValueError(f"sentencepiece vocab_size {vocab_size}: must exceed the {n_fixed} special and byte tokens")
    tok = Tokenizer(BPE(unk_token=None, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = BpeTrainer(vocab_size=vocab_size - n_fixed, special_tokens=[], min_frequency=1, show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials + BYTE_TOKENS)}
    for piece, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return LlamaTokenizer(vocab=vocab, merges=merges, unk_token=UNK, bos_token=BOS, eos_token=EOS,
                          add_bos_token=True, add_eos_token=False, model_max_length=model_max_length)


def train_tokenizer(kind: str, texts: Iterable[str], model_max_length: int, vocab_size: int = 2048):
    """The tokenizer of `kind` (`word`, `bpe` or `sentencepiece`; `vocab_size` bounds the last two only)."""
    if kind == "word":
        return train_word_level_tokenizer(texts, model_max_length)
    if kind == "bpe":
        return train_bpe_tokenizer(texts, model_max_length, vocab_size)
    if kind == "sentencepiece":
        return train_sentencepiece_tokenizer(texts, model_max_length, vocab_size)
    raise ValueError(f"tokenizer kind {kind!r}: expected one of {TOKENIZER_KINDS}")
