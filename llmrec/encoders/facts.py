"""The facts of an encoder checkpoint: the `encoder:` section of its `config.yaml`, typed and frozen.

    encoder:
      format: llmrec-encoder
      format_version: 1
      model: sasrec                    # name in `llmrec.encoders.registry`
      hparams: {...}                   # keyword arguments of `build_encoder`
      n_items: 1682
      hidden_size: 64
      max_length: 50
      dataset: {name, protocol, seed, eval_positions, path}   # when trained on a prepared dataset
      catalog_fingerprint: ...                                 # idem
      split: {protocol, seed, eval_positions, users_sha256}   # idem

Read through `llmrec.base.markers` (one reader, one error format); the keys written are exactly those earlier
llmrec versions wrote.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmrec.base.errors import CheckpointError
from llmrec.base.markers import OMIT_IF, Advice, MarkerSpec, from_dict, read_marker, to_dict

CONFIG_FILE = "config.yaml"
SPEC = MarkerSpec(kind="llmrec-encoder", version=1, what="an encoder checkpoint", writer="`llmrec train-encoder`",
                  section="encoder")
RETRAIN = "retrain it with `llmrec train-encoder`"
_ABSENT = {OMIT_IF: None}  # keys written only when known (an encoder saved without its dataset has none)


@dataclass(frozen=True)
class TrainedOn:
    """The prepared dataset an encoder was trained on."""

    name: str | None = None
    protocol: str | None = None
    seed: int | None = None
    eval_positions: Any = None
    path: str | None = None


@dataclass(frozen=True)
class EncoderFacts:
    """Everything needed to rebuild an encoder without unpickling, and to refuse data it was not trained on."""

    model: str
    hparams: dict[str, Any]
    n_items: int
    hidden_size: int | None = field(default=None, metadata=_ABSENT)
    max_length: int | None = field(default=None, metadata=_ABSENT)
    dataset: TrainedOn | None = field(default=None, metadata=_ABSENT)
    catalog_fingerprint: str | None = field(default=None, metadata=_ABSENT)
    split: dict[str, Any] | None = field(default=None, metadata=_ABSENT)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | os.PathLike = CONFIG_FILE, advice: Advice = RETRAIN
                  ) -> EncoderFacts:
        """The facts in `data` (the `encoder:` section of `path`); `CheckpointError` in the marker format when a
        field is missing or of the wrong type (named `encoder.<field>`)."""
        return from_dict(cls, data, path, spec=SPEC, error=CheckpointError, advice=advice, prefix="encoder.")

    def to_dict(self) -> dict[str, Any]:
        """The `encoder:` section, `format` and `format_version` first."""
        return {"format": SPEC.kind, "format_version": SPEC.version, **to_dict(self)}


def read_encoder_facts(path: str | os.PathLike) -> EncoderFacts:
    """The facts of encoder checkpoint folder `path`; one-line `CheckpointError` when it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"encoder checkpoint {path} does not exist or is not a folder; expected a folder "
                              f"written by `llmrec train-encoder` (config.yaml with an `encoder:` section)")
    cfg = path / CONFIG_FILE
    return EncoderFacts.from_dict(read_marker(cfg, SPEC, error=CheckpointError, advice=_advice), cfg)


def _advice(problem: str) -> str | None:
    return None if problem in ("missing", "kind") else RETRAIN  # `expected ...` already says what to give
