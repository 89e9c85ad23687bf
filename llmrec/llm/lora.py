"""LoRA wiring (peft) for the LLM stage; the model code never mentions it.

Defaults follow docs/design.md §5: r=8, alpha=32, dropout=0.1 on the attention and MLP projections
(q, k, v, o, gate, up, down). Only the target modules that exist in the model are wrapped (GPT-2 names its
projections differently: `c_attn`, `c_proj`, `c_fc`). The slot tokens' embedding rows are trained too, through
peft's `trainable_token_indices` (the `<|text|>` row is what text-only prompts see), without unfreezing the
rest of the embedding matrix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from llmrec.base.errors import ConfigError

DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GPT2_TARGETS: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")


def present_targets(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """The requested module names that occur in `model` (GPT-2 style names are used when none do)."""
    leaf = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [t for t in targets if t in leaf]
    if not found:
        found = [t for t in GPT2_TARGETS if t in leaf]
    if not found:
        raise ConfigError(f"--lora-targets {list(targets)}: none of these modules exist in the model; its linear "
                          f"layers are named {sorted(n for n in leaf if n)[:20]}")
    return found


def apply_lora(model: nn.Module, r: int = 8, alpha: int = 32, dropout: float = 0.1,
               targets: Sequence[str] = DEFAULT_TARGETS, trainable_tokens: Sequence[int] = ()) -> nn.Module:
    """Freeze `model` and wrap it with LoRA adapters (and trainable rows for `trainable_tokens`)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=present_targets(model, targets),
                        task_type="CAUSAL_LM", trainable_token_indices=list(trainable_tokens) or None)
    return get_peft_model(model, config)


def load_lora(model: nn.Module, adapter_dir) -> nn.Module:
    """Wrap `model` with a saved adapter (safetensors; nothing is unpickled)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)


@contextmanager
def adapters_merged(model: nn.Module) -> Iterator[None]:
    """Within the block, a LoRA model's adapters and trainable token rows are merged into its base weights in place
    (peft `merge_adapter`), so inference runs plain projections instead of the adapters beside each one and peft's
    trainable-token layer rebuilding the whole embedding matrix (and a tied LM head) on every call; on leaving,
    they are unmerged again (`unmerge_adapter`), so the model trains and saves as before. A model without
    adapters is left alone.

    Unlike `merge_and_unload` (what `load_recommender` does) this needs no copy of the weights, at the price of a
    float32 rounding drift in the base projections after the unmerge (W + BA - BA); the adapters themselves, the
    token rows (restored from peft's copy of the originals) and so every saved LoRA file are untouched."""
    if not hasattr(model, "merge_adapter"):
        yield
        return
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()
