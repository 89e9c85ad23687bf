"""Tokenizers of the tiny backbone, trained locally on a catalog's titles and the prompt templates (DESIGN.md §5).

Two kinds: word-level (the default) and byte-level BPE (`--tiny-tokenizer bpe`, the kind real LLMs use).
Why word-level is the default for the tiny backbone: the catalog is closed (every title word is seen when
the tokenizer is built), so a word-level vocabulary has no out-of-vocabulary words on the data it serves,
every title word is ONE token (a title is ~4-6 tokens instead of ~8-12 BPE pieces), and a from-scratch model
learns item <-> word associations directly instead of first having to assemble words from pieces. On
ML-100K (about 1.7k titles) the vocabulary is about 4k words, so the embedding table stays small.
The price: decoding joins tokens with spaces ("Toy Story ( 1995 )"), so generated text is matched against
each candidate's *decoded answer tokens*, never its raw title (see `llmrec.llm.ranking.parse_generation`).
Byte-level BPE decodes titles exactly and covers any text, at ~2x the tokens per title on ML-100K.

The tokenizer is wrapped as a `PreTrainedTokenizerFast` and saved with `save_pretrained`, so it is loaded
with `AutoTokenizer` exactly like the tokenizer of any Hugging Face model.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE, WordLevel
from tokenizers.trainers import BpeTrainer, WordLevelTrainer
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
TOKENIZER_KINDS: tuple[str, ...] = ("word", "bpe")


def _wrap(tok: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
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


def train_tokenizer(kind: str, texts: Iterable[str], model_max_length: int, vocab_size: int = 2048
                    ) -> PreTrainedTokenizerFast:
    """The tokenizer of `kind` (`word` or `bpe`; `vocab_size` bounds BPE only)."""
    if kind == "word":
        return train_word_level_tokenizer(texts, model_max_length)
    if kind == "bpe":
        return train_bpe_tokenizer(texts, model_max_length, vocab_size)
    raise ValueError(f"tokenizer kind {kind!r}: expected one of {TOKENIZER_KINDS}")
