"""Serving next-item predictions from a trained checkpoint (docs/design.md §9).

    from llmrec.serving import Recommender
    rec = Recommender.from_pretrained("checkpoints/demo/llm-hybrid-sasrec")
    rec.recommend([50, 172, 133], k=10)   # retrieve from the whole catalog, re-rank with the LLM

`llmrec predict` prints one answer from the shell, `llmrec serve` answers over HTTP (`llmrec.serving.server`).
`Recommender` is imported lazily so that `llmrec predict --help` does not pay for torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Recommender", "RequestError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from llmrec.serving import recommender

        return getattr(recommender, name)
    raise AttributeError(f"module 'llmrec.serving' has no attribute {name!r}")
