"""`build_encoder(name, n_items, **hparams)`: the one place that maps a model name to its class."""

from __future__ import annotations

import inspect
from typing import Any

from llmrec.encoders.base import SequentialEncoder
from llmrec.encoders.caser import Caser
from llmrec.encoders.gru4rec import GRU4Rec
from llmrec.encoders.mostpop import MostPop
from llmrec.encoders.sasrec import SASRec
from llmrec.base.errors import ConfigError

ENCODERS: dict[str, type[SequentialEncoder]] = {
    "sasrec": SASRec,
    "gru4rec": GRU4Rec,
    "caser": Caser,
    "mostpop": MostPop,
}


def encoder_hparam_names(name: str) -> list[str]:
    """The keyword hyperparameters `name`'s class accepts (besides `n_items`)."""
    cls = _encoder_class(name)
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "n_items")]


def _encoder_class(name: str) -> type[SequentialEncoder]:
    try:
        return ENCODERS[name]
    except KeyError:
        raise ConfigError(f"unknown encoder model {name!r}; expected one of {', '.join(ENCODERS)}") from None


def build_encoder(name: str, n_items: int, **hparams: Any) -> SequentialEncoder:
    """A freshly initialised encoder; `encoder.model_name` and `encoder.hparams` record how it was built.

    Raises ConfigError for an unknown model name, an unknown hyperparameter or an invalid value.
    """
    cls = _encoder_class(name)
    known = encoder_hparam_names(name)
    unknown = sorted(set(hparams) - set(known))
    if unknown:
        raise ConfigError(f"encoder {name!r}: unknown hyperparameter(s) {', '.join(unknown)}; "
                          f"known: {', '.join(known)}")
    if not isinstance(n_items, int) or n_items < 1:
        raise ConfigError(f"encoder {name!r}: n_items must be a positive integer, got {n_items!r}")
    for key, value in hparams.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
            raise ConfigError(f"encoder {name!r}: {key} must be a number, got {value!r}")
        if key.endswith("dropout") and not 0.0 <= value < 1.0:
            raise ConfigError(f"encoder {name!r}: {key} must be in [0, 1), got {value}")
        if not key.endswith("dropout") and value is not None and value < 1:
            raise ConfigError(f"encoder {name!r}: {key} must be at least 1, got {value}")
    bound = inspect.signature(cls).bind(n_items, **hparams)
    bound.apply_defaults()
    resolved = {k: v for k, v in bound.arguments.items() if k != "n_items"}
    try:
        encoder = cls(n_items, **hparams)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"encoder {name!r}: {e}") from None
    encoder.model_name = name
    encoder.hparams = resolved
    return encoder
