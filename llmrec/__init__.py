"""llmrec: LLM-based sequential recommendation (LLaRA hybrid prompts, S-DPO, IFairLRS)."""

__version__ = "0.1.0"
