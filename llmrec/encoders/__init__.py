"""ID-based sequential encoders (SASRec, GRU4Rec, Caser) honouring one contract (docs/design.md §4).

For later stages: `load_encoder(path, data)` returns a `SequentialEncoder` in eval mode;
`encoder.item_embeddings()` is `[n_items + 1, H]` (row 0 = padding) and `encoder.encode(histories)` (or
`encoder(*pad_left(histories, encoder.max_length))`) gives the `[B, H]` sequence representation;
`ItemIndex.load(path)` reads the checkpoint's faiss index for whole-catalog retrieval (faiss is imported only then).
"""

from llmrec.encoders.base import SequentialEncoder, pad_left
from llmrec.encoders.checkpoint import is_encoder_checkpoint, load_encoder, save_encoder
from llmrec.encoders.index import ItemIndex
from llmrec.encoders.registry import ENCODERS, build_encoder

__all__ = ["ENCODERS", "ItemIndex", "SequentialEncoder", "build_encoder", "is_encoder_checkpoint", "load_encoder",
           "pad_left", "save_encoder"]
