"""Micro-batching: concurrent requests grouped into model batches, each answered with its own result.

    batcher = MicroBatcher(recommender.run, max_batch=16, max_wait_ms=5)
    await batcher.start()
    answer = await batcher.submit(query)      # from many request handlers at once
    await batcher.stop()                      # answers everything already submitted, then returns

One worker task owns the model and runs `run(queries)` in a worker thread, so the event loop keeps accepting
requests meanwhile. The batching rule ("continuous" or "dynamic" batching, as in Triton's dynamic batcher or
TorchServe with a delay of 0, plus a window that opens only when it pays):

1. When the worker is free it takes whatever is queued, oldest first, up to `max_batch`; requests that arrived
   while the model was busy therefore form the next batch at once.
2. Otherwise there is no wait: a request that finds the queue empty and the model idle runs at once, so a
   lone client (every pass answers one request) never waits.
3. The one exception, a window: the last model pass answered `n` > 1 requests, the oldest queued request arrived within one
   pass duration of its end (the same burst of traffic, not a new request after a lull), and fewer than
   `min(n, max_batch)` are queued. The worker then waits until that many are queued, for at most `max_wait_ms`
   after the oldest queued request arrived: the clients just answered are expected back (a closed-loop client
   sends its next request on the answer), and one pass for all of them saves what each pass costs whatever its
   size (one encoder and faiss call, the Python and dispatch overhead of every model call; with several torch
   threads, small passes also use the cores poorly). The window closes as soon as enough requests are queued;
   it never applies after a pass of one request (a lone client), nor to a request arriving after a lull.

So no request waits in a window longer than `max_wait_ms`, a lone client's latency never includes it, and under
concurrency the batch size follows the number of clients. `run` returns one outcome per query, in order: a
result or an exception of that query alone; each request's future is resolved with the outcome at ITS index,
so answers are never mixed up and a bad request never fails the requests batched with it. If `run` itself
raises (a bug), every request of that batch gets the error; the worker goes on with the next batch.

`max_batch=1` serves one request at a time (no window): the baseline the benchmark compares micro-batching with.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
Q = TypeVar("Q")


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new requests."""


class MicroBatcher(Generic[Q]):
    """Groups `submit`ted queries into calls of `run(list_of_queries) -> list_of_outcomes` (see module docstring).

    Args:
        run: answers a batch; returns one outcome per query, in order; an outcome that is an `Exception` is raised
            to that query's caller only.
        max_batch: most queries per `run` call.
        max_wait_ms: longest wait, after a pass of several requests, for as many to be queued again (rule 3).
    """

    def __init__(self, run: Callable[[list[Q]], Sequence[Any]], max_batch: int = 16, max_wait_ms: float = 5.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch} and {max_wait_ms}")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000.0
        self._pending: collections.deque[tuple[Q, asyncio.Future, float]] = collections.deque()  # + arrival
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._last_size = 0  # requests answered by the last pass
        self._last_end = float("-inf")  # when it ended (event-loop time)
        self._last_seconds = 0.0  # how long it took
        self.batches = 0  # how many `run` calls were made (for tests and logs)
        self.batched = 0  # how many queries they answered
        self.waited = 0  # how many batches waited in the window of rule 3 (for tests and logs)

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not those of the pass under way)."""
        return len(self._pending)

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmrec-model")
        self._closing = False
        self._worker = asyncio.create_task(self._work(), name="llmrec-micro-batcher")

    async def submit(self, query: Q) -> Any:
        """Queue `query`; returns its own outcome (or raises its own exception) once its batch has run."""
        if self._worker is None or self._closing:
            raise BatcherClosed("the server is shutting down")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((query, future, loop.time()))
        self._wakeup.set()
        return await future

    async def stop(self) -> None:
        """Take no new queries, answer every pending one, then stop the worker."""
        if self._worker is None:
            return
        self._closing = True
        self._wakeup.set()
        await self._worker
        self._worker = None
        self._executor.shutdown(wait=True)

    def _window(self) -> tuple[int, float]:
        """(how many requests the next batch waits for, until when) by rule 3; (1, -inf): run what is queued."""
        oldest = self._pending[0][2]
        if self._last_size > 1 and oldest - self._last_end <= self._last_seconds:
            return min(self._last_size, self.max_batch), oldest + self.max_wait
        return 1, float("-inf")

    async def _gather(self) -> list[tuple[Q, asyncio.Future]]:
        """The next batch: what is queued now, or after the window of rule 3 (see the module docstring)."""
        loop = asyncio.get_running_loop()
        while not self._pending:
            if self._closing:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        expected, deadline = self._window()
        if len(self._pending) < expected and loop.time() < deadline:
            self.waited += 1
        while len(self._pending) < expected and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:  # the window closed (Python 3.10: not the builtin TimeoutError)
                break
        batch = []
        while self._pending and len(batch) < self.max_batch:
            query, future, _ = self._pending.popleft()
            if not future.done():  # a client that went away cancelled its future: skip its query
                batch.append((query, future))
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                if self._closing and not self._pending:
                    return
                continue
            queries = [q for q, _ in batch]
            started = loop.time()
            try:
                outcomes = await loop.run_in_executor(self._executor, self.run, queries)
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"run answered {len(outcomes)} of {len(batch)} queries")
            except Exception as e:  # a bug, not a bad request: fail this batch, keep serving
                log.exception("a batch of %d requests failed", len(batch))
                outcomes = [e] * len(batch)
            self.batches += 1
            self.batched += len(batch)
            self._last_size, self._last_end = len(batch), loop.time()
            self._last_seconds = self._last_end - started
            for (_, future), outcome in zip(batch, outcomes):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
