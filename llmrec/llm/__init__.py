"""LLM stage: backbones, projector, hybrid prompts, curriculum, LoRA training and ranking (DESIGN.md §5)."""
