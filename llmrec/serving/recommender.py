"""`Recommender`: next-item predictions from a trained LLM checkpoint, from Python (docs/design.md §9).

    rec = Recommender.from_pretrained("checkpoints/demo/llm-hybrid-sasrec")     # verifies the bundle manifest
    rec.recommend([50, 172, 133], k=10)                      # whole catalog: retrieve top-N, re-rank with the LLM
    rec.recommend(["Heat (1995)", 17], candidates=[3, 9, 12])  # rank the given candidates only
    rec.recommend_many([[50, 172], [3, 4, 5]])                # many users, one model pass per batch

Each answer is a list of `{"id", "title", "score", "rank"}`, best first; `score` is the LLM's log-probability of
the item's answer (its title tokens + terminator) after the prompt (`score` mode of `llmrec.llm.ranking`; its mean
per answer token when the checkpoint's `score_norm` is `mean`), so higher is better and scores are comparable within one answer only.

How a request becomes a prompt (the same builder, templates and length budget as in training):
- items: an item id (int) or an exact catalog title (str; runs of whitespace count as one space). A title that
  matches no item or several items is a `RequestError` naming it; so is an unknown id.
- history: oldest -> newest. The model sees only the most recent `history_window` items (the history length it
  was trained with: `max_history` in the checkpoint facts, else the protocol's default, 10 for `llara`); the
  prompt builder may drop more of the oldest ones to fit the model's token limit, exactly as in training. Every
  given history item still counts for `exclude_history`. An empty history is refused (422 over HTTP): the
  bundle carries no popularity statistics to fall back on, and the model was never trained without a history.
- template: chosen as in training, seeded by (the checkpoint's seed, user 0, position = the number of history
  items the model sees); serving has no user ids, so the same history always gets the same prompt.
- candidates given: ranked in the given order's prompt; with `exclude_history` the ones in the history are
  dropped first; at most `k` are returned.
- no candidates (hybrid checkpoints only): the encoder's sequence representation of the history is searched
  against a faiss inner-product index of the encoder's item embeddings (exact, `llmrec.encoders.index`) for the
  top `max(retrieve_n, k)` items, history items excluded when `exclude_history`; those are put in a seeded random
  order (training lists held the target at a uniformly random place, so the encoder's own order would be a cue
  the LLM never saw) and re-ranked by the LLM. `retrieve_n` is the candidate count the model was trained with:
  `n_candidates` in the checkpoint facts when recorded, else `DEFAULT_RETRIEVE_N` = 20 (LLaRA's lists).
  A text-only checkpoint has no encoder and cannot retrieve: it needs candidates.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmrec.base.device import torch_device
from llmrec.data.protocols import DEFAULT_MAX_HISTORY
from llmrec.encoders.index import INDEX_FILE, ItemIndex, faiss_available
from llmrec.base.errors import CheckpointError, DataError, LlmrecError
from llmrec.llm.checkpoint import ENCODER_DIR, load_recommender, read_facts
from llmrec.llm.facts import LLMFacts
from llmrec.llm.hybrid import HybridLM, collate_prompts
from llmrec.llm.prompts import Prompt, clean_title
from llmrec.llm.ranking import score_candidates
from llmrec.serving.manifest import listed, verify_bundle

log = logging.getLogger(__name__)

DEFAULT_RETRIEVE_N = 20  # LLaRA's candidate lists; used when the checkpoint does not record `n_candidates`
SERVING_USER = 0  # serving has no user ids: the template is seeded by (seed, SERVING_USER, history length)
ItemRef = int | str


class RequestError(LlmrecError):
    """A request the model cannot answer (unknown item, empty history, k out of range); `field` names the part
    of the request at fault (e.g. `history[2]`), the message says what was expected."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Query:
    """One validated request, in item ids. `candidates` None means: retrieve from the whole catalog."""

    history: tuple[int, ...]            # every given history item, oldest -> newest (for exclusion)
    window: tuple[int, ...]             # the most recent `history_window` of them: what the model sees
    candidates: tuple[int, ...] | None  # given candidates in the given order (history removed if excluded)
    k: int
    exclude_history: bool


def default_device(device: str | torch.device | None) -> torch.device:
    """`None` -> the first CUDA GPU when there is one, else the CPU."""
    if device is None:
        return torch.device(torch_device("auto"))
    return torch.device(device)


def load_item_index(folder: Path, item_embeddings: torch.Tensor, manifest: dict[str, Any] | None
                    ) -> ItemIndex | None:
    """The faiss index of the bundle's encoder: `encoder/items.faiss` when the bundle lists it, else built from
    the encoder's item embeddings. None without faiss (retrieval then scores every item with torch: same result).
    """
    if not faiss_available():
        log.info("faiss is not installed: whole-catalog retrieval scores every item with torch (same ranking)")
        return None
    n_items, dim = item_embeddings.shape[0] - 1, item_embeddings.shape[1]
    path = folder / ENCODER_DIR / INDEX_FILE
    if path.is_file() and listed(manifest, f"{ENCODER_DIR}/{INDEX_FILE}"):
        index = ItemIndex.load(path)
        if index.n_items != n_items or index.dim != dim:
            raise CheckpointError(f"{path} indexes {index.n_items} items of dimension {index.dim}, the bundled "
                                  f"encoder has {n_items} of dimension {dim}; the folder is inconsistent")
        return index
    return ItemIndex.build(item_embeddings)


class Recommender:
    """A loaded LLM recommender answering next-item requests; see the module docstring for the rules.

    Thread-safe: model passes are serialised by a lock (the HTTP server batches concurrent requests itself).

    Args:
        lm: the loaded `HybridLM` (eval mode).
        facts: the checkpoint's facts (`checkpoint.json`, `llmrec.llm.facts.LLMFacts`).
        folder: where it was loaded from (shown in `describe`).
        index: faiss index over the encoder's item embeddings (None: exact torch scoring, or text-only).
        retrieve_n: candidates retrieved from the whole catalog (default: `n_candidates` in the facts, else 20).
        batch_size: most prompts per model pass.
    """

    def __init__(self, lm: HybridLM, facts: LLMFacts, folder: str | os.PathLike | None = None,
                 index: ItemIndex | None = None, retrieve_n: int | None = None, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lm, self.facts, self.index, self.batch_size = lm, facts, index, batch_size
        self.folder = Path(folder) if folder is not None else None
        self.builder = lm.builder
        self.device = next(lm.parameters()).device
        self.retrieve_n = int(retrieve_n or facts.n_candidates or DEFAULT_RETRIEVE_N)
        self.history_window = int(facts.max_history or DEFAULT_MAX_HISTORY.get(facts.protocol, 10))
        self.seed = facts.seed
        self.titles: list[str] = list(self.builder.titles)  # by item id; 0 = padding
        self._ids = [i for i in range(1, len(self.titles)) if self.titles[i]]
        self._known = set(self._ids)
        self._by_title: dict[str, list[int]] = {}
        for i in self._ids:
            self._by_title.setdefault(self.titles[i], []).append(i)
        self._lock = threading.Lock()
        self._summary_length = int(getattr(lm.encoder, "max_length", 50))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device | None = None, *,
                        dtype: str = "float32", llm: str | os.PathLike | None = None, verify: bool = True,
                        retrieve_n: int | None = None, batch_size: int = 16) -> Recommender:
        """Load a checkpoint folder (`llmrec train-llm` / `llmrec train-sdpo` output) once, for serving.

        `verify` checks every file of the bundle manifest first (a missing or altered file is one
        `CheckpointError` naming it); `device` None picks a GPU when there is one; `llm` is the base model folder
        of a LoRA checkpoint whose base moved.
        """
        folder = Path(folder)
        manifest = verify_bundle(folder) if verify else None
        facts = read_facts(folder)  # read once: handed to the loader
        lm = load_recommender(folder, llm=llm, device=default_device(device), dtype=dtype, facts=facts)
        index = load_item_index(folder, lm.item_table.cpu(), manifest) if lm.encoder is not None else None
        return cls(lm, facts, folder, index, retrieve_n, batch_size)

    # ------------------------------------------------------------------ facts
    @property
    def n_items(self) -> int:
        return len(self._ids)

    @property
    def can_retrieve(self) -> bool:
        """Whether requests without candidates can be answered (hybrid checkpoints: they carry an encoder)."""
        return self.lm.encoder is not None

    def describe(self) -> dict[str, Any]:
        """What is served (for `/health` and logs)."""
        return {"checkpoint": self.folder.name if self.folder else None, "stage": self.facts.stage,
                "prompt": self.lm.prompt, "n_items": self.n_items, "can_retrieve": self.can_retrieve,
                "retrieve_n": self.retrieve_n, "history_window": self.history_window, "device": str(self.device)}

    def search(self, query: str, limit: int = 20) -> tuple[list[dict[str, Any]], int]:
        """Items whose title contains `query` (case-insensitive), by id: (the first `limit`, how many match)."""
        needle = " ".join(str(query).split()).casefold()
        if not needle:
            raise RequestError("query is empty: give part of a title", "query")
        hits = [i for i in self._ids if needle in self.titles[i].casefold()]
        return [{"id": i, "title": self.titles[i]} for i in hits[:limit]], len(hits)

    # ------------------------------------------------------------------ validation
    def item_id(self, ref: Any, field: str = "item") -> int:
        """An item id from an id or an exact title; `RequestError` naming `field` otherwise."""
        if isinstance(ref, (bool, np.bool_)):
            raise RequestError(f"{field}: got {ref!r}, expected an item id (integer) or an exact title (string)", field)
        if isinstance(ref, (int, np.integer)):
            if int(ref) not in self._known:
                raise RequestError(f"{field}: unknown item id {int(ref)} (the catalog has ids "
                                   f"1..{len(self.titles) - 1})", field)
            return int(ref)
        if isinstance(ref, str):
            ids = self._by_title.get(ref) or self._by_title.get(clean_title(ref))
            if not ids:
                raise RequestError(f"{field}: no item has the title {ref!r} (titles must match exactly; search them "
                                   f"with GET /items?query=...)", field)
            if len(ids) > 1:
                raise RequestError(f"{field}: the title {ref!r} matches items {', '.join(map(str, ids))}; give the "
                                   f"item id instead", field)
            return ids[0]
        raise RequestError(f"{field}: got {type(ref).__name__} {ref!r}, expected an item id (integer) or an exact "
                           f"title (string)", field)

    def _items(self, refs: Any, field: str) -> list[int]:
        if isinstance(refs, (str, bytes)) or not isinstance(refs, (Sequence, np.ndarray)):
            raise RequestError(f"{field}: expected a list of item ids or titles, got {type(refs).__name__}", field)
        return [self.item_id(r, f"{field}[{i}]") for i, r in enumerate(refs)]

    def query(self, history: Sequence[ItemRef], candidates: Sequence[ItemRef] | None = None, k: int = 10,
              exclude_history: bool = True) -> Query:
        """Validate one request (ids, titles, k) without running the model; `RequestError` names the field."""
        hist = self._items(history, "history")
        if not hist:
            raise RequestError("history is empty: give at least one item the user interacted with (the checkpoint "
                               "has no popularity data to fall back on)", "history")
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= self.n_items:
            raise RequestError(f"k: got {k!r}, expected an integer in 1..{self.n_items} (the catalog size)", "k")
        window = tuple(hist[-self.history_window:])
        if candidates is None:
            if not self.can_retrieve:
                raise RequestError("candidates: this checkpoint has text-only prompts (no encoder), so it cannot "
                                   "retrieve from the whole catalog; pass the candidates to rank", "candidates")
            return Query(tuple(hist), window, None, int(k), bool(exclude_history))
        cands = self._items(candidates, "candidates")
        if not cands:
            raise RequestError("candidates is empty: give at least one item, or leave candidates out to retrieve "
                               "from the whole catalog", "candidates")
        seen: dict[int, int] = {}
        for i, c in enumerate(cands):
            if c in seen:
                raise RequestError(f"candidates[{i}]: item {c} is already candidates[{seen[c]}]", f"candidates[{i}]")
            seen[c] = i
        if exclude_history:
            cands = [c for c in cands if c not in set(hist)]
            if not cands:
                raise RequestError("candidates: every candidate is in the history (exclude_history removes them); "
                                   "pass other candidates or exclude_history=false", "candidates")
        return Query(tuple(hist), window, tuple(cands), int(k), bool(exclude_history))

    # ------------------------------------------------------------------ model
    def _retrieve(self, queries: list[Query], n: int | None = None) -> list[list[int]]:
        """Top `n` (default `max(retrieve_n, k)`) items of the whole catalog per query by the encoder (excluding
        the history when asked), in the seeded order the prompt shows them."""
        depths = [n or max(self.retrieve_n, q.k) for q in queries]
        n = max(depths)
        encoder = self.lm.encoder
        seq = encoder.encode([list(q.window) for q in queries])  # [B, H]
        exclude = [list(q.history) if q.exclude_history else [] for q in queries]
        if self.index is not None:
            _, ids = self.index.retrieve(seq.float().cpu(), n, exclude)  # [B, n]
            rows = ids.tolist()
        else:
            scores = self.lm.item_table @ seq.to(self.lm.item_table.dtype).T  # [n_items + 1, B]
            scores = scores.T.clone()
            scores[:, 0] = float("-inf")
            for b, items in enumerate(exclude):
                if items:
                    scores[b, torch.as_tensor(items, device=scores.device)] = float("-inf")
            top = scores.topk(min(n, scores.shape[1] - 1), dim=1)
            rows = torch.where(torch.isfinite(top.values), top.indices, 0).tolist()
        out = []
        for q, row, depth in zip(queries, rows, depths):
            found = [int(i) for i in row if i > 0][:depth]
            order = np.random.default_rng([self.seed, len(q.window), *q.window]).permutation(len(found))
            out.append([found[j] for j in order])
        return out

    def _prompts(self, windows: list[tuple[int, ...]], candidates: list[list[int]]) -> list[Prompt | RequestError]:
        """Prompts as in training (one batched tokenizer call); a prompt that cannot fit is that query's error."""
        users, positions = [SERVING_USER] * len(windows), [len(w) for w in windows]
        try:
            return list(self.builder.build_many(windows, candidates, users, positions))
        except DataError:  # some prompt does not fit even with one history item: find which, one by one
            out: list[Prompt | RequestError] = []
            for w, c, p in zip(windows, candidates, positions):
                try:
                    out.append(self.builder.build(w, c, SERVING_USER, p))
                except DataError:
                    out.append(RequestError(f"candidates: {len(c)} candidates do not fit the model's "
                                            f"{self.builder.max_length}-token prompt even with one history item; "
                                            f"pass fewer candidates", "candidates"))
            return out

    def _score(self, prompts: list[Prompt], windows: list[tuple[int, ...]]) -> list[list[float]]:
        """LLM scores of each prompt's candidates; prompts of one batch must have equally many candidates."""
        cands = [p.candidates for p in prompts]
        batch = collate_prompts(prompts, int(self.builder.tokenizer.pad_token_id), [c[0] for c in cands], cands,
                                [SERVING_USER] * len(prompts), [len(w) for w in windows],
                                summary_histories=[list(w) for w in windows] if self.builder.summary else None,
                                summary_max_length=self._summary_length)
        return score_candidates(self.lm, batch.to(self.device)).float().cpu().tolist()

    def run(self, queries: Sequence[Query]) -> list[list[dict[str, Any]] | RequestError]:
        """Answer validated queries together: one encoder pass for all retrievals, then one LLM pass per batch of
        up to `batch_size` prompts with the same candidate count. Returns each query's answer, or its own
        `RequestError` (a query never fails another)."""
        queries = list(queries)
        results: list[list[dict[str, Any]] | RequestError | None] = [None] * len(queries)
        with self._lock, torch.inference_mode():
            cands: list[list[int]] = [list(q.candidates) if q.candidates is not None else [] for q in queries]
            retrieving = [i for i, q in enumerate(queries) if q.candidates is None]
            if retrieving:
                for i, found in zip(retrieving, self._retrieve([queries[i] for i in retrieving])):
                    cands[i] = found
                    if not found:
                        results[i] = RequestError("history: every item of the catalog is in the history, nothing "
                                                  "is left to recommend (exclude_history=false allows them)",
                                                  "history")
            todo = [i for i in range(len(queries)) if results[i] is None]
            prompts = dict(zip(todo, self._prompts([queries[i].window for i in todo], [cands[i] for i in todo])))
            groups: dict[int, list[int]] = {}
            for i, p in prompts.items():
                if isinstance(p, RequestError):
                    results[i] = p
                else:
                    groups.setdefault(len(p.candidates), []).append(i)
            for members in groups.values():
                for start in range(0, len(members), self.batch_size):
                    chunk = members[start:start + self.batch_size]
                    scores = self._score([prompts[i] for i in chunk], [queries[i].window for i in chunk])
                    for i, row in zip(chunk, scores):
                        results[i] = self._answer(prompts[i].candidates, row, queries[i].k)
        return results  # type: ignore[return-value]

    def _answer(self, candidates: list[int], scores: list[float], k: int) -> list[dict[str, Any]]:
        order = sorted(range(len(candidates)), key=lambda j: -scores[j])  # stable: ties keep the prompt order
        return [{"id": candidates[j], "title": self.titles[candidates[j]], "score": float(scores[j]), "rank": r + 1}
                for r, j in enumerate(order[:k])]

    # ------------------------------------------------------------------ public API
    def retrieve(self, history: Sequence[ItemRef], n: int | None = None, exclude_history: bool = True) -> list[int]:
        """The candidates a request without candidates would re-rank, in the order its prompt lists them:
        the encoder's top `n` (default `retrieve_n`) of the whole catalog."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise RequestError(f"n: got {n!r}, expected an integer >= 1", "n")
        q = self.query(history, None, 1, exclude_history)
        with self._lock, torch.inference_mode():
            return self._retrieve([q], n)[0]

    def recommend(self, history: Sequence[ItemRef], candidates: Sequence[ItemRef] | None = None, k: int = 10,
                  exclude_history: bool = True) -> list[dict[str, Any]]:
        """The `k` best next items for one history, best first: `[{"id", "title", "score", "rank"}, ...]`.

        Without `candidates`, the whole catalog (retrieve, then re-rank); with them, those only. See the module
        docstring for windows, titles and exclusion. Raises `RequestError` for a bad request.
        """
        return self.recommend_many([history], [candidates], k, exclude_history)[0]

    def recommend_many(self, histories: Sequence[Sequence[ItemRef]],
                       candidates: Sequence[Sequence[ItemRef] | None] | None = None, k: int = 10,
                       exclude_history: bool = True) -> list[list[dict[str, Any]]]:
        """`recommend` for many users at once (`candidates[u]` None = retrieve for user u), batched: one encoder
        pass, one LLM pass per `batch_size` prompts. Raises the first user's `RequestError` (`user u: ...`)."""
        if candidates is not None and len(candidates) != len(histories):
            raise RequestError(f"candidates: {len(candidates)} lists for {len(histories)} histories; give one per "
                               f"history (None = retrieve)", "candidates")
        queries = []
        for u, h in enumerate(histories):
            try:
                queries.append(self.query(h, candidates[u] if candidates is not None else None, k, exclude_history))
            except RequestError as e:
                raise (RequestError(f"user {u}: {e}", e.field) if len(histories) > 1 else e) from None
        results = self.run(queries)
        for u, r in enumerate(results):
            if isinstance(r, RequestError):
                raise RequestError(f"user {u}: {r}", r.field) if len(histories) > 1 else r
        return results  # type: ignore[return-value]
