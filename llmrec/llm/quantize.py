"""Dynamic int8 linear layers for ranking on the CPU (`llmrec evaluate --quantize int8`, also `predict`, `serve`).

`torch.ao.quantization.quantize_dynamic` stores every `nn.Linear` weight as int8 (one scale per layer) and
quantises each input batch on the fly, so the decoder's matmuls (and the LM head's) run as int8 x int8 -> int32
GEMMs (fbgemm / oneDNN on x86): about a quarter of the weight memory and, where the CPU has fast int8
instructions, more multiply-adds per second than float32. Embeddings, norms, rotary and attention stay float32.
It is an inference-time option: a quantised model is never trained or saved.

A LoRA model is quantised after its adapters (and its trained slot-token rows) are merged into the base weights
(peft `merge_and_unload`), on a deep copy: a LoRA layer left unmerged would run its float adapter beside an int8
base, and merging in place would change a model that may still be trained or saved.
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal

import torch
from torch import nn

from llmrec.base.errors import ConfigError
from llmrec.llm.hybrid import HybridLM, embedding_weight

Quantize = Literal["none", "int8"]
QUANTIZE: tuple[str, ...] = ("none", "int8")


def check_quantize(how: str, device: torch.device | str, dtype: str = "float32") -> None:
    """Refuse, in one line naming the option, what `quantized` cannot do (call it before a slow load): another
    value than `QUANTIZE`, a GPU, or weights that are not float32."""
    if how not in QUANTIZE:
        raise ConfigError(f"option --quantize: got {how!r}, expected one of {', '.join(QUANTIZE)}")
    if how == "none":
        return
    if torch.device(device).type != "cpu":
        raise ConfigError(f"option --quantize {how}: dynamic int8 linear layers run on the CPU only, the model is on "
                          f"{torch.device(device)}; use --device cpu or leave --quantize out")
    if dtype != "float32":
        raise ConfigError(f"option --quantize {how}: quantises float32 weights; use --dtype float32 (got {dtype})")


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain causal LM equal to `model` with its LoRA adapters and trainable token rows merged into the base
    weights (peft `merge_and_unload`), made from a deep copy: `model` itself is left as it was."""
    clone = copy.deepcopy(model)
    return clone.merge_and_unload() if hasattr(clone, "merge_and_unload") else clone


def quantize_linear_int8(model: nn.Module) -> nn.Module:
    """`model` (changed in place and returned) with every `nn.Linear` replaced by a dynamic int8 one."""
    with warnings.catch_warnings():
        # torch 2.10+ marks torch.ao.quantization deprecated in favour of the separate `torchao` package, which is
        # not a dependency; the eager dynamic quantisation it points at is still there and is what is used here
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*_per_tensor.*")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def quantized(lm: HybridLM, how: Quantize = "none") -> HybridLM:
    """A `HybridLM` for ranking with `how` linear layers: `lm` itself for `none`; for `int8` a new one (eval mode)
    over a merged, quantised copy of `lm.model`, sharing `lm`'s prompt builder, projector, encoder and ranking
    rule. `lm` must be on the CPU in float32 (`check_quantize`); it is not modified."""
    weights = embedding_weight(lm.model.get_input_embeddings())  # not `.weight`: a peft wrapper copies it
    check_quantize(how, weights.device, {torch.float32: "float32", torch.bfloat16: "bfloat16",
                                         torch.float16: "float16"}.get(weights.dtype, str(weights.dtype)))
    if how == "none":
        return lm
    model = quantize_linear_int8(merged_copy(lm.model)).eval()
    return HybridLM(model, lm.builder, lm.prompt, lm.projector, lm.encoder, lm.score_norm).eval()
