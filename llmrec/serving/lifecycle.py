"""How `llmrec serve` treats connections: timeouts for silent and slow clients, and a shutdown that drops nothing.

Timeouts (options of `llmrec serve`, fields of `Timeouts`):
- `idle_timeout_s` (5 s): a connection with no request under way, just opened or kept alive after an answer, is
  closed after this long without a byte. (uvicorn's keep-alive timeout, which uvicorn arms only after a first
  answer; here it also runs from the moment a connection opens.)
- `header_timeout_s` (10 s): the request line and headers must be complete within this long of the connection
  opening, or of the previous answer on it; a client trickling header bytes is disconnected.
- `body_timeout_s` (30 s): the whole body must arrive within this long of the headers; otherwise the client gets
  408 and the connection is closed (one warning line in the log).
Sizes are bounded elsewhere: the body by `Guard` (413), the request line and headers by h11 (16 KiB: 400).

Shutdown on SIGTERM or SIGINT (`GracefulServer`): uvicorn stops accepting connections and closes the idle ones;
requests whose body has arrived are answered (the micro-batcher runs what is queued, at once); a request still
waiting for its body gets at most `DRAIN_BODY_GRACE_S` more, then 408 and the connection is closed, so a stalled
client cannot hold the shutdown for the graceful timeout; a request still unanswered after `graceful_timeout_s`
gets 503 (one warning line, not a traceback). Then the batcher stops and `server.run` returns: the signal is not
raised again (uvicorn's default, which ends the process with status -15), so `llmrec serve` exits with 0.

Only imported when uvicorn is installed (`llmrec.serving.server.uvicorn_server` imports it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)
DRAIN_BODY_GRACE_S = 1.0  # on shutdown, how much longer a request may take to send the rest of its body
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class Timeouts:
    """How long a client may stay silent or slow (see the module docstring); seconds, all > 0."""

    idle_s: float = 5.0
    header_s: float = 10.0
    body_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("idle_s", "header_s", "body_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"timeout {name}: got {getattr(self, name)!r}, expected a number of seconds > 0")


class Drain:
    """Set once the server starts shutting down; `BodyDeadline` then stops waiting for slow bodies."""

    def __init__(self) -> None:
        self.event = asyncio.Event()  # bound to the server's event loop on first use (Python >= 3.10)
        self.since: float | None = None  # event-loop time the shutdown began

    def start(self) -> None:
        self.since = asyncio.get_running_loop().time()
        self.event.set()


class BodyTimeout(Exception):
    """The request body did not arrive in time (raised from `receive`, answered 408 by `BodyDeadline`)."""


class BodyDeadline:
    """ASGI middleware, outermost: the request body must arrive within `timeout_s` of the request's start, or
    within `DRAIN_BODY_GRACE_S` once the server drains; otherwise 408 and the connection is closed. Requests
    cancelled by uvicorn when the graceful timeout runs out get 503 instead of a traceback."""

    def __init__(self, app: Any, timeout_s: float, drain: Drain):
        self.app, self.timeout_s, self.drain = app, timeout_s, drain

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        body_done = response_started = False

        async def timed_receive() -> dict:
            nonlocal body_done
            if body_done:  # after the body, `receive` only reports a disconnect: no deadline
                return await receive()
            message = await self._receive_by(receive, deadline)
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except BodyTimeout as e:
            log.warning("%s %s from %s: %s: answered 408, connection closed", scope.get("method"), scope.get("path"),
                        _client(scope), e)
            if not response_started:
                await _close_with(send, 408, f"request timeout: {e}")
        except asyncio.CancelledError:
            if self.drain.since is None:
                raise
            log.warning("%s %s from %s: still unanswered when the graceful shutdown timeout ran out: answered 503",
                        scope.get("method"), scope.get("path"), _client(scope))
            if not response_started:
                await _close_with(send, 503, "the server shut down before this request was answered")

    async def _receive_by(self, receive: Callable[[], Awaitable[dict]], deadline: float) -> dict:
        """`receive()`, unless `deadline` (or the drain grace) passes first: then `BodyTimeout`."""
        loop = asyncio.get_running_loop()
        message = asyncio.ensure_future(receive())
        draining = asyncio.ensure_future(self.drain.event.wait())
        try:
            while True:
                limit = deadline if self.drain.since is None else min(deadline, self.drain.since + DRAIN_BODY_GRACE_S)
                remaining = limit - loop.time()
                if remaining <= 0:
                    if self.drain.since is not None and limit < deadline:
                        raise BodyTimeout(f"the server is shutting down and the request body did not arrive within "
                                          f"{DRAIN_BODY_GRACE_S:g} s")
                    raise BodyTimeout(f"the request body did not arrive within {self.timeout_s:g} s")
                waiting = {message} if draining.done() else {message, draining}
                done, _ = await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if message in done:
                    return message.result()
        finally:
            for task in (message, draining):
                if not task.done():
                    task.cancel()


async def _close_with(send: Callable, status: int, detail: str) -> None:
    """Answer `{"detail": ...}` with `status` and `Connection: close`."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _client(scope: dict) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "a client"


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the idle timeout running from the moment a connection opens (uvicorn arms it
    only after a first answer, so a silent new connection stayed open for good) and a header timeout (any byte
    used to stop uvicorn's idle timer, so a client trickling header bytes held its connection for good)."""

    header_timeout_s = Timeouts.header_s  # set per server by `uvicorn_server` (a subclass per timeout)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request's headers are in
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:  # waiting for the next request
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.debug("%s: no complete request headers within %g s: connection closed", client, self.header_timeout_s)
            self.transport.close()


class GracefulServer(uvicorn.Server):
    """`uvicorn.Server` that tells `BodyDeadline` when the shutdown starts and, after a graceful stop on SIGINT or
    SIGTERM, returns normally instead of raising the signal again (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, drain: Drain):
        super().__init__(config)
        self.drain = drain

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self.should_exit:
            log.info("%s: answering the requests in flight, then stopping", signal.Signals(sig).name)
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: Any = None) -> None:
        self.drain.start()
        await super().shutdown(sockets=sockets)


def graceful_server(app: Any, timeouts: Timeouts, graceful_timeout_s: float, access_log: bool,
                    log_level: str) -> GracefulServer:
    """A `GracefulServer` serving `app` behind `BodyDeadline`, with the timeouts of `timeouts`."""
    drain = Drain()
    protocol = type("TimedH11Protocol", (TimedH11Protocol,), {"header_timeout_s": timeouts.header_s})
    config = uvicorn.Config(BodyDeadline(app, timeouts.body_s, drain), http=protocol, lifespan="on",
                            access_log=access_log, log_level=log_level, timeout_keep_alive=timeouts.idle_s,
                            timeout_graceful_shutdown=graceful_timeout_s)
    return GracefulServer(config, drain)
