"""A word-level tokenizer trained locally on a catalog's titles and the prompt templates (DESIGN.md §5).

Why word-level rather than BPE for the tiny backbone: the catalog is closed (every title word is seen when
the tokenizer is built), so a word-level vocabulary has no out-of-vocabulary words on the data it serves,
every title word is ONE token (a title is ~4-6 tokens instead of ~8-12 BPE pieces), and a from-scratch model
learns item <-> word associations directly instead of first having to assemble words from pieces. On
ML-100K (about 1.7k titles) the vocabulary is about 4k words, so the embedding table stays small.
The price: decoding joins tokens with spaces ("Toy Story ( 1995 )"), so generated text is matched against
each candidate's *decoded answer tokens*, never its raw title (see `llmrec.llm.ranking.parse_generation`).

The tokenizer is wrapped as a `PreTrainedTokenizerFast` and saved with `save_pretrained`, so it is loaded
with `AutoTokenizer` exactly like the tokenizer of any Hugging Face model.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"


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
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                   pad_token=PAD, model_max_length=model_max_length)
