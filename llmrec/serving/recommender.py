"""`Recommender`: next-item predictions from a trained LLM checkpoint, from Python (docs/design.md §9).

    rec = Recommender.from_pretrained("checkpoints/demo/llm-hybrid-sasrec")     # verifies the bundle manifest
    rec.recommend([50, 172, 133], k=10)                      # whole catalog: retrieve top-N, re-rank with the LLM
    rec.recommend(["Heat (1995)", 17], candidates=[3, 9, 12])  # rank the given candidates only
    rec.recommend_many([[50, 172], [3, 4, 5]])                # many users, one model pass per batch
    recommend_all_users(rec, data, split="test", k=10)        # every user of a dataset (llmrec.serving.all_users)

Each answer is a list of `{"id", "index", "title", "score", "rank", "ranked_by"}`, best first:
- `id` is the dataset's own item id (`raw_id` of the prepared items.parquet, carried in the checkpoint's
  catalog.parquet): MovieLens' movie id, Steam's product id, `"B00001"` in a custom log. It is an int when every
  id of the catalog is an integer written canonically, else the id's text (`llmrec.data.catalog.ItemIds`);
  `index` is the model's own item number (1..n, `item_id` in the prepared tables).
- `score` is the LLM's log-probability of the item's answer (its title tokens + terminator) after the prompt
  (`score` mode of `llmrec.llm.ranking`; its mean per answer token when the checkpoint's `score_norm` is `mean`),
  so higher is better; scores compare within one answer only. It is None for an item the LLM did not rank.
- `ranked_by` says who placed the item: `llm` (by `score`), `encoder` (the sequential encoder's order, after
  every `llm` item) or `request` (the order the request listed the candidates in, after every `llm` item).

How a request becomes a prompt (the same builder, templates and length budget as in training):
- items: the dataset's id (an int, or its text: `"B00001"`; text is tried as an id first) or an exact catalog
  title (runs of whitespace count as one space). An unknown id, or a title that matches no item or several
  items, is a `RequestError` naming it.
- history: oldest -> newest. The model sees only the most recent `history_window` items (the history length it
  was trained with: `max_history` in the checkpoint facts, else the protocol's default, 10 for `llara`); the
  prompt builder may drop more of the oldest ones to fit the model's token limit, exactly as in training. Every
  given history item still counts for `exclude_history`. An empty history is refused (422 over HTTP): the
  bundle carries no popularity statistics to fall back on, and the model was never trained without a history.
- template: chosen as in training, seeded by (the checkpoint's seed, user 0, position = the number of history
  items the model sees); serving has no user ids, so the same history always gets the same prompt.

How the answer is ranked (each item's `ranked_by`); `k` only cuts the list, so the answer for k is the first k
items of the answer for any larger k, and the first item never depends on k:
- no candidates (hybrid checkpoints only): the encoder's sequence representation of the history is searched
  against a faiss inner-product index of the encoder's item embeddings (exact, `llmrec.encoders.index`), history
  items excluded when `exclude_history`. The LLM re-ranks the encoder's top N, N = `retrieve_n`: the candidate
  count the model was trained with (`n_candidates` in the checkpoint facts when recorded, else
  `DEFAULT_RETRIEVE_N` = 20, LLaRA's lists), the same N for every k. They are listed in the prompt in a seeded
  random order (training lists held the target at a uniformly random place, so the encoder's own order would be
  a cue the LLM never saw). For k > N, ranks N+1..k are the encoder's next items, in its order. A text-only
  checkpoint has no encoder and cannot retrieve: it needs candidates.
- candidates given: ranked by the LLM in one prompt listing them in the given order (with `exclude_history`, the
  ones in the history are dropped first), when they fit the model's token limit (dropping the oldest history
  items first, as in training). When they do not fit, the LLM ranks as many as fit beside the whole history
  window (as many as fit at all, if even one needs history items dropped): the encoder's best of them (hybrid
  checkpoints; listed in the given order) and the others follow in the encoder's order, or, for a text-only
  checkpoint, the first ones in the given order and the others follow in that order. The same holds for the
  retrieved N when a larger `retrieve_n` than the prompt holds is asked for.
- why not several prompts (chunks) merged by score: a candidate's score depends on the other candidates its
  prompt lists (the model learnt to pick one title of the list). On the demo's S-DPO checkpoint, the same
  candidate scored in a prompt of 10 of the 20 retrieved items instead of all 20 moved by up to 0.78, about the
  spread of the 20 scores (0.9); reordering the 20 moved scores by up to 0.03. Scores of different prompts do
  not compare, so the LLM's scores are only compared within one prompt.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from llmrec.base.device import torch_device
from llmrec.data.catalog import Catalog, ItemIds
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
RankedBy = Literal["llm", "encoder", "request"]
Medium = Literal["python", "http", "cli"]

# What a user can do about an error, said the way each caller spells it (`RequestError.text`).
ADVICE: dict[str, dict[Medium, str]] = {
    "title": {"python": "search titles with Recommender.search(text)",
              "http": "search titles with GET /items?query=...",
              "cli": "give the item's id, or its title exactly as the checkpoint's catalog.parquet writes it"},
    "exclude": {"python": "pass exclude_history=False to allow history items",
                "http": 'send "exclude_history": false to allow history items',
                "cli": "pass --no-exclude-history to allow history items"},
}


class RequestError(LlmrecError):
    """A request the model cannot answer (unknown item, empty history, k out of range); `field` names the part
    of the request at fault (e.g. `history[2]`), the message says what was expected. `advice` (a key of `ADVICE`)
    adds what to do, in the words of the caller: `str(e)` speaks Python, `e.text("http")` HTTP, `e.text("cli")`
    the command line."""

    def __init__(self, message: str, field: str | None = None, advice: str | None = None):
        self.message, self.field, self.advice = message, field, advice
        super().__init__(self.text("python"))

    def text(self, medium: Medium) -> str:
        advice = ADVICE[self.advice][medium] if self.advice else None
        return f"{self.message}; {advice}" if advice else self.message

    def prefixed(self, prefix: str, field: str | None = None) -> RequestError:
        """The same error inside a larger request (`user 1: `, `requests[3].`); `field` default: prefixed too."""
        return RequestError(f"{prefix}{self.message}", field if field is not None else f"{prefix}{self.field or ''}",
                            self.advice)


@dataclass(frozen=True)
class Query:
    """One validated request, in model indices. `candidates` None means: retrieve from the whole catalog."""

    history: tuple[int, ...]            # every given history item, oldest -> newest (for exclusion)
    window: tuple[int, ...]             # the most recent `history_window` of them: what the model sees
    candidates: tuple[int, ...] | None  # given candidates in the given order (history removed if excluded)
    k: int
    exclude_history: bool


@dataclass(frozen=True)
class Answer:
    """One query's answer: `items` (at most k, best first, as `Recommender.recommend` returns them) and how many
    items the LLM ranked (`llm_ranked`; the items after them were ranked by `tail_by`)."""

    items: list[dict[str, Any]]
    llm_ranked: int
    tail_by: RankedBy | None


@dataclass
class _Plan:
    """How one query is ranked: the LLM ranks `pool` (in the order its prompt lists them); `tail` follows, best
    first, as `tail_by` ranked it; `fit(m)` is (pool, tail) when the prompt may hold only m items."""

    pool: list[int]
    tail: list[int]
    tail_by: RankedBy | None
    fit: Callable[[int], tuple[list[int], list[int]]]
    limit: int  # the most items `fit` may be asked for


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
        raw_ids: the dataset's own item ids indexed by model index (`Catalog.raw_ids`; default: the indices).
    """

    def __init__(self, lm: HybridLM, facts: LLMFacts, folder: str | os.PathLike | None = None,
                 index: ItemIndex | None = None, retrieve_n: int | None = None, batch_size: int = 16,
                 raw_ids: Sequence[str] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lm, self.facts, self.index, self.batch_size = lm, facts, index, batch_size
        self.folder = Path(folder) if folder is not None else None
        self.builder = lm.builder
        self.device = next(lm.parameters()).device
        self.retrieve_n = int(retrieve_n or facts.n_candidates or DEFAULT_RETRIEVE_N)
        self.history_window = int(facts.max_history or DEFAULT_MAX_HISTORY.get(facts.protocol, 10))
        self.seed = facts.seed
        self.titles: list[str] = list(self.builder.titles)  # by model index; 0 = padding
        self._ids = [i for i in range(1, len(self.titles)) if self.titles[i]]
        if raw_ids is None:
            known = set(self._ids)
            raw_ids = [str(i) if i in known else "" for i in range(len(self.titles))]
        if len(raw_ids) != len(self.titles) or any(not raw_ids[i] for i in self._ids):
            raise CheckpointError(f"the catalog's raw ids ({len(raw_ids)} rows) do not cover its "
                                  f"{len(self._ids)} titled items")
        self.ids = ItemIds(raw_ids)
        self._by_title: dict[str, list[int]] = {}
        for i in self._ids:
            self._by_title.setdefault(self.titles[i], []).append(i)
        self._lock = threading.Lock()
        self._summary_length = int(getattr(lm.encoder, "max_length", 50))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device | None = None, *,
                        dtype: str = "float32", llm: str | os.PathLike | None = None, verify: bool = True,
                        retrieve_n: int | None = None, batch_size: int = 16, merge_adapters: bool = True
                        ) -> Recommender:
        """Load a checkpoint folder (`llmrec train-llm` / `llmrec train-sdpo` output) once, for serving.

        `verify` checks every file of the bundle manifest first (a missing or altered file is one
        `CheckpointError` naming it); `device` None picks a GPU when there is one; `llm` is the base model folder
        of a LoRA checkpoint whose base moved. A LoRA checkpoint's adapters are merged into the base weights
        once, here (`load_recommender`'s `merge_adapters`): the same rankings, less work per request; False keeps
        them as peft layers (for comparison: `bench/serving.py merge`).
        """
        folder = Path(folder)
        manifest = verify_bundle(folder) if verify else None
        facts = read_facts(folder)  # read once: handed to the loader
        lm = load_recommender(folder, llm=llm, device=default_device(device), dtype=dtype, facts=facts,
                              merge_adapters=merge_adapters)
        index = load_item_index(folder, lm.item_table.cpu(), manifest) if lm.encoder is not None else None
        catalog = Catalog.load(folder)  # for its raw ids; `load_recommender` checked the same fingerprint
        if catalog.fingerprint() != facts.catalog_fingerprint:
            raise CheckpointError(f"{folder / 'catalog.parquet'} changed while the checkpoint was loaded; load it "
                                  f"again")
        return cls(lm, facts, folder, index, retrieve_n, batch_size, raw_ids=catalog.raw_ids())

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
                "retrieve_n": self.retrieve_n, "history_window": self.history_window, "device": str(self.device),
                "item_ids": "integer" if self.ids.integer else "text"}

    def item(self, index: int) -> dict[str, Any]:
        """`{"id", "index", "title"}` of the item with model index `index`."""
        return {"id": self.ids.public(index), "index": int(index), "title": self.titles[index]}

    def search(self, query: str, limit: int = 20) -> tuple[list[dict[str, Any]], int]:
        """Items whose title contains `query` (case-insensitive), by index: (the first `limit` as
        `{"id", "index", "title"}`, how many match)."""
        needle = " ".join(str(query).split()).casefold()
        if not needle:
            raise RequestError("query is empty: give part of a title", "query")
        hits = [i for i in self._ids if needle in self.titles[i].casefold()]
        return [self.item(i) for i in hits[:limit]], len(hits)

    # ------------------------------------------------------------------ validation
    def item_id(self, ref: Any, field: str = "item") -> int:
        """The model index of an item given by the dataset's id or an exact title; `RequestError` naming `field`
        otherwise. Text is tried as an id first, then as a title."""
        if isinstance(ref, (bool, np.bool_)):
            raise RequestError(f"{field}: got {ref!r}, {self._expected()}", field)
        if isinstance(ref, (int, np.integer)):
            found = self.ids.find(int(ref))
            if found is None:
                raise RequestError(f"{field}: unknown item id {int(ref)} (the catalog has {self.ids.known()})", field)
            return found
        if isinstance(ref, str):
            found = self.ids.find(ref)
            if found is not None:
                return found
            indices = self._by_title.get(ref) or self._by_title.get(clean_title(ref))
            if not indices:
                if self.ids.numeric() and re.fullmatch(r"[+-]?\d+", ref.strip(), re.ASCII):
                    raise RequestError(f"{field}: unknown item id {ref.strip()} (the catalog has {self.ids.known()})",
                                       field)
                what = "title" if self.ids.integer else "id or title"
                near, total = self.search(ref, 3) if ref.strip() else ([], 0)
                shown = ", ".join(f"{n['title']!r} (id {n['id']})" for n in near) + (", ..." if total > 3 else "")
                raise RequestError(f"{field}: no item has the {what} {ref!r} (titles must match exactly"
                                   f"{'; titles containing it: ' + shown if near else ''})", field, "title")
            if len(indices) > 1:
                raise RequestError(f"{field}: the title {ref!r} matches items "
                                   f"{', '.join(str(self.ids.public(i)) for i in indices)}; give the item id instead",
                                   field)
            return indices[0]
        raise RequestError(f"{field}: got {type(ref).__name__} {ref!r}, {self._expected()}", field)

    def _expected(self) -> str:
        kind = "integer" if self.ids.integer else "text, like " + ", ".join(map(repr, self.ids.examples))
        return f"expected an item id ({kind}) or an exact title (string)"

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
                raise RequestError(f"candidates[{i}]: item {self.ids.public(c)} is already candidates[{seen[c]}]",
                                   f"candidates[{i}]")
            seen[c] = i
        if exclude_history:
            cands = [c for c in cands if c not in set(hist)]
            if not cands:
                raise RequestError("candidates: every candidate is in the history (history items are excluded), "
                                   "nothing is left to rank", "candidates", "exclude")
        return Query(tuple(hist), window, tuple(cands), int(k), bool(exclude_history))

    # ------------------------------------------------------------------ model
    def _encode(self, queries: list[Query]) -> torch.Tensor:
        """[B, H] the encoder's sequence representations of the queries' windows."""
        return self.lm.encoder.encode([list(q.window) for q in queries])

    def _encoder_top(self, queries: list[Query], depths: list[int]) -> list[list[int]]:
        """The encoder's top `depths[b]` items of the whole catalog for each query, best first (the history
        excluded when asked): faiss when there is an index, else every item scored with torch (same ranking)."""
        n = max(depths)
        seq = self._encode(queries)  # [B, H]
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
        return [[int(i) for i in row if i > 0][:depth] for row, depth in zip(rows, depths)]

    def _encoder_order(self, query: Query, items: list[int]) -> list[int]:
        """`items` by the encoder's score for `query`'s history, best first (ties keep the given order)."""
        seq = self._encode([query])[0]  # [H]
        scores = (self.lm.item_table[torch.as_tensor(items, device=self.lm.item_table.device)]
                  @ seq.to(self.lm.item_table.dtype)).tolist()  # [len(items)]
        return [items[j] for j in sorted(range(len(items)), key=lambda j: -scores[j])]

    def _shown(self, query: Query, top: list[int]) -> list[int]:
        """Retrieved items in the seeded order the prompt lists them (the encoder's order would be a cue)."""
        order = np.random.default_rng([self.seed, len(query.window), *query.window]).permutation(len(top))
        return [top[j] for j in order]

    def _plans(self, queries: list[Query]) -> list[_Plan | RequestError]:
        """What the LLM ranks for each query if its prompt holds everything, and how to shrink that otherwise."""
        plans: list[_Plan | RequestError | None] = [None] * len(queries)
        retrieving = [i for i, q in enumerate(queries) if q.candidates is None]
        if retrieving:
            depths = [max(self.retrieve_n, queries[i].k) for i in retrieving]  # N for the LLM, k for the list
            for i, ranked in zip(retrieving, self._encoder_top([queries[i] for i in retrieving], depths)):
                if not ranked:
                    plans[i] = RequestError("history: every item of the catalog is in the history, nothing is left "
                                            "to recommend", "history", "exclude")
                    continue
                n = min(self.retrieve_n, len(ranked))
                fit = self._retrieved_fit(queries[i], ranked)
                plans[i] = _Plan(*fit(n), "encoder" if len(ranked) > n else None, fit, n)
        for i, q in enumerate(queries):
            if q.candidates is not None:
                plans[i] = _Plan(list(q.candidates), [], None, self._given_fit(q), len(q.candidates))
        return plans  # type: ignore[return-value]

    def _retrieved_fit(self, query: Query, ranked: list[int]) -> Callable[[int], tuple[list[int], list[int]]]:
        """m -> (the encoder's top m in the prompt's seeded order, the rest in the encoder's order)."""
        return lambda m: (self._shown(query, ranked[:m]), ranked[m:])

    def _given_fit(self, query: Query) -> Callable[[int], tuple[list[int], list[int]]]:
        """m -> (m given candidates in the given order, the others): the encoder's best m, the others in its order;
        without an encoder (text-only), the first m and the others in the request's order."""
        cands = list(query.candidates or ())
        ranked: list[int] = []

        def fit(m: int) -> tuple[list[int], list[int]]:
            if not self.can_retrieve:
                return cands[:m], cands[m:]
            if not ranked:  # the encoder's order, computed once per query
                ranked.extend(self._encoder_order(query, cands))
            best = set(ranked[:m])
            return [c for c in cands if c in best], ranked[m:]

        return fit

    def _build(self, windows: list[tuple[int, ...]], pools: list[list[int]]) -> list[Prompt | None]:
        """Prompts as in training (one batched tokenizer call); None where a prompt cannot fit even with one
        history item."""
        users, positions = [SERVING_USER] * len(windows), [len(w) for w in windows]
        try:
            return list(self.builder.build_many(windows, pools, users, positions))
        except DataError:  # some prompt does not fit: find which, one by one
            return [self._build_one(w, p) for w, p in zip(windows, pools)]

    def _build_one(self, window: tuple[int, ...], pool: list[int]) -> Prompt | None:
        try:
            return self.builder.build(window, pool, SERVING_USER, len(window))
        except DataError:
            return None

    def _shrink(self, query: Query, plan: _Plan) -> tuple[Prompt, _Plan] | RequestError:
        """The prompt of the largest m items (`plan.fit(m)`) that fit beside the model's whole history window (the
        history matters more than more candidates: a longer list would push the user's items out); when even one
        item needs history items dropped, the largest m that fits at all. The other items go to the tail, ranked
        by the encoder, or in the request's order without one."""
        best = self._largest(query, plan, whole_window=True) or self._largest(query, plan, whole_window=False)
        if best is None:
            field = "candidates" if query.candidates is not None else "history"
            return RequestError(f"{field}: not even one candidate fits the model's {self.builder.max_length}-token "
                                f"prompt with one history item", field)
        prompt, pool, tail = best
        return prompt, _Plan(pool, tail, "encoder" if self.can_retrieve else "request", plan.fit, len(pool))

    def _largest(self, query: Query, plan: _Plan, whole_window: bool
                 ) -> tuple[Prompt, list[int], list[int]] | None:
        """Binary search over m < `plan.limit` (fewer items never lengthen a prompt): the prompt, pool and tail of
        the largest m whose prompt fits (keeping every history item of the window, when `whole_window`)."""
        lo, hi, best = 1, plan.limit - 1, None  # `plan.limit` items did not fit
        while lo <= hi:
            mid = (lo + hi) // 2
            pool, tail = plan.fit(mid)
            prompt = self._build_one(query.window, pool)
            if prompt is not None and not (whole_window and prompt.dropped):
                lo, best = mid + 1, (prompt, pool, tail)
            else:
                hi = mid - 1
        return best

    def _score(self, prompts: list[Prompt], windows: list[tuple[int, ...]]) -> list[list[float]]:
        """LLM scores of each prompt's candidates; prompts of one batch must have equally many candidates."""
        cands = [p.candidates for p in prompts]
        batch = collate_prompts(prompts, int(self.builder.tokenizer.pad_token_id), [c[0] for c in cands], cands,
                                [SERVING_USER] * len(prompts), [len(w) for w in windows],
                                summary_histories=[list(w) for w in windows] if self.builder.summary else None,
                                summary_max_length=self._summary_length)
        return score_candidates(self.lm, batch.to(self.device)).float().cpu().tolist()

    def rank(self, queries: Sequence[Query]) -> list[Answer | RequestError]:
        """Answer validated queries together: one encoder pass for all retrievals, then one LLM pass per batch of
        up to `batch_size` prompts with the same candidate count. Returns each query's `Answer`, or its own
        `RequestError` (a query never fails another)."""
        queries = list(queries)
        results: list[Answer | RequestError | None] = [None] * len(queries)
        with self._lock, torch.inference_mode():
            plans = self._plans(queries)
            todo = [i for i, p in enumerate(plans) if isinstance(p, _Plan)]
            built = self._build([queries[i].window for i in todo], [plans[i].pool for i in todo])
            prompts: dict[int, Prompt] = {}
            for i, prompt in zip(todo, built):
                if prompt is None:  # more items than the prompt holds: the LLM ranks as many as fit
                    shrunk = self._shrink(queries[i], plans[i])
                    if isinstance(shrunk, RequestError):
                        plans[i] = shrunk
                        continue
                    prompt, plans[i] = shrunk
                prompts[i] = prompt
            for i, p in enumerate(plans):
                if isinstance(p, RequestError):
                    results[i] = p
            groups: dict[int, list[int]] = {}
            for i, p in prompts.items():
                groups.setdefault(len(p.candidates), []).append(i)
            for members in groups.values():
                for start in range(0, len(members), self.batch_size):
                    chunk = members[start:start + self.batch_size]
                    scores = self._score([prompts[i] for i in chunk], [queries[i].window for i in chunk])
                    for i, row in zip(chunk, scores):
                        results[i] = self._answer(prompts[i].candidates, row, plans[i], queries[i].k)
        return results  # type: ignore[return-value]

    def run(self, queries: Sequence[Query]) -> list[list[dict[str, Any]] | RequestError]:
        """`rank`, each answer as its list of items (what `recommend` returns): the micro-batcher's call."""
        return [a if isinstance(a, RequestError) else a.items for a in self.rank(queries)]

    def _answer(self, candidates: list[int], scores: list[float], plan: _Plan, k: int) -> Answer:
        order = sorted(range(len(candidates)), key=lambda j: -scores[j])  # stable: ties keep the prompt order
        ranked = [(candidates[j], float(scores[j]), "llm") for j in order]
        ranked += [(i, None, plan.tail_by) for i in plan.tail[:max(0, k - len(ranked))]]
        items = [{**self.item(i), "score": s, "rank": r + 1, "ranked_by": by}
                 for r, (i, s, by) in enumerate(ranked[:k])]
        return Answer(items, len(candidates), plan.tail_by if plan.tail else None)

    # ------------------------------------------------------------------ public API
    def retrieve(self, history: Sequence[ItemRef], n: int | None = None, exclude_history: bool = True
                 ) -> list[int | str]:
        """The ids of the items a request without candidates would have the LLM re-rank, in the order its prompt
        lists them: the encoder's top `n` (default `retrieve_n`) of the whole catalog."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise RequestError(f"n: got {n!r}, expected an integer >= 1", "n")
        q = self.query(history, None, 1, exclude_history)
        with self._lock, torch.inference_mode():
            top = self._encoder_top([q], [n or self.retrieve_n])[0]
        return [self.ids.public(i) for i in self._shown(q, top)]

    def recommend(self, history: Sequence[ItemRef], candidates: Sequence[ItemRef] | None = None, k: int = 10,
                  exclude_history: bool = True) -> list[dict[str, Any]]:
        """The `k` best next items for one history, best first:
        `[{"id", "index", "title", "score", "rank", "ranked_by"}, ...]`.

        Without `candidates`, the whole catalog (retrieve, then re-rank); with them, those only. See the module
        docstring for ids, windows, titles, exclusion and who ranks what. Raises `RequestError` for a bad request.
        """
        return self.recommend_many([history], [candidates], k, exclude_history)[0]

    def recommend_many(self, histories: Sequence[Sequence[ItemRef]],
                       candidates: Sequence[Sequence[ItemRef] | None] | None = None, k: int = 10,
                       exclude_history: bool = True) -> list[list[dict[str, Any]]]:
        """`recommend` for many users at once (`candidates[u]` None = retrieve for user u), batched: one encoder
        pass, one LLM pass per `batch_size` prompts. Raises the first user's `RequestError` (`user u: ...`)."""
        return [a.items for a in self.answer_many(histories, candidates, k, exclude_history)]

    def answer_many(self, histories: Sequence[Sequence[ItemRef]],
                    candidates: Sequence[Sequence[ItemRef] | None] | None = None, k: int = 10,
                    exclude_history: bool = True) -> list[Answer]:
        """`recommend_many` with how each answer was ranked (`Answer.llm_ranked`, `Answer.tail_by`)."""
        if candidates is not None and len(candidates) != len(histories):
            raise RequestError(f"candidates: {len(candidates)} lists for {len(histories)} histories; give one per "
                               f"history (None = retrieve)", "candidates")
        queries = []
        for u, h in enumerate(histories):
            try:
                queries.append(self.query(h, candidates[u] if candidates is not None else None, k, exclude_history))
            except RequestError as e:
                raise (e.prefixed(f"user {u}: ", e.field) if len(histories) > 1 else e) from None
        results = self.rank(queries)
        for u, r in enumerate(results):
            if isinstance(r, RequestError):
                raise r.prefixed(f"user {u}: ", r.field) if len(histories) > 1 else r
        return results  # type: ignore[return-value]
