"""Micro-batching: concurrent requests grouped into model batches, each answered with its own result.

    batcher = MicroBatcher(recommender.run, max_batch=16, max_wait_ms=5)
    await batcher.start()
    answer = await batcher.submit(query)      # from many request handlers at once
    await batcher.stop()                      # answers everything already submitted, then returns

One worker task owns the model. It takes the oldest waiting request, then waits up to `max_wait_ms` (less if
`max_batch` requests are waiting sooner) for others to join, and runs `run(queries)` in a worker thread, so the
event loop keeps accepting requests meanwhile. `run` returns one outcome per query, in order: a result or an
exception of that query alone; each request's future is resolved with the outcome at ITS index, so answers are
never mixed up and a bad request never fails the requests batched with it. If `run` itself raises (a bug), every
request of that batch gets the error; the worker goes on with the next batch.

`max_batch=1` (or `max_wait_ms=0` with no concurrency) serves one request at a time: the baseline the benchmark
compares micro-batching with.
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
        max_wait_ms: how long the oldest waiting query may wait for others to join its batch.
    """

    def __init__(self, run: Callable[[list[Q]], Sequence[Any]], max_batch: int = 16, max_wait_ms: float = 5.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch} and {max_wait_ms}")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000.0
        self._pending: collections.deque[tuple[Q, asyncio.Future]] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self.batches = 0  # how many `run` calls were made (for tests and logs)
        self.batched = 0  # how many queries they answered

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmrec-model")
        self._closing = False
        self._worker = asyncio.create_task(self._work(), name="llmrec-micro-batcher")

    async def submit(self, query: Q) -> Any:
        """Queue `query`; returns its own outcome (or raises its own exception) once its batch has run."""
        if self._worker is None or self._closing:
            raise BatcherClosed("the server is shutting down")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((query, future))
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

    async def _gather(self) -> list[tuple[Q, asyncio.Future]]:
        """The next batch: the oldest pending query plus those arriving within the wait window."""
        while not self._pending:
            if self._closing:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while len(self._pending) < self.max_batch and not self._closing:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            waiter = asyncio.ensure_future(self._wakeup.wait())
            done, _ = await asyncio.wait({waiter}, timeout=remaining)
            if not done:  # the window closed
                waiter.cancel()
                break
        batch = []
        while self._pending and len(batch) < self.max_batch:
            query, future = self._pending.popleft()
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
            try:
                outcomes = await loop.run_in_executor(self._executor, self.run, queries)
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"run answered {len(outcomes)} of {len(batch)} queries")
            except Exception as e:  # a bug, not a bad request: fail this batch, keep serving
                log.exception("a batch of %d requests failed", len(batch))
                outcomes = [e] * len(batch)
            self.batches += 1
            self.batched += len(batch)
            for (_, future), outcome in zip(batch, outcomes):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
