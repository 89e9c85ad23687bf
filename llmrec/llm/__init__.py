"""LLM stage: backbones, projector, hybrid prompts, curriculum, LoRA training and ranking (docs/design.md §5)."""
