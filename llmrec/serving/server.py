"""The HTTP API of a `Recommender` (FastAPI + uvicorn, the `serve` extra): `llmrec serve` runs it.

Endpoints (OpenAPI at `/openapi.json`, interactive docs at `/docs` and `/redoc`, which load their scripts and
styles from this server only: `llmrec.serving.docs`):
    POST /recommend          {"history": [50, "Heat (1995)"], "candidates": null, "k": 10, "exclude_history": true}
                             -> {"items": [{"id", "index", "title", "score", "rank", "ranked_by"}, ...],
                                 "retrieved": true}
    POST /recommend/batch    {"requests": [<as above>, ...]} -> {"results": [<as above>, ...]}
    GET  /items?query=heat&limit=20   title search -> {"items": [{"id", "index", "title"}], "total": n}
    GET  /health             200 {"status": "ok", ...what is served} once the model is loaded

Items are the dataset's own ids (`"B00001"`, or integers for logs whose ids are integers) or exact titles; answers
give the id, the model's `index`, and who ranked the item (`llmrec.serving.recommender` has the rules: the LLM
ranks what its prompt holds, the encoder or the request's order the rest; `k` only cuts the list).

Errors are JSON `{"detail": "<one line naming the field>"}`: 400 malformed JSON (not JSON, not UTF-8, or nested
too deeply to parse); 401 missing or wrong bearer token; 413 body larger than `max_body_bytes`; 415 a body sent
without `Content-Type: application/json` (or another `application/*+json` type); 422 a request the model cannot
answer (unknown id or title, a title too long or not valid Unicode, empty history, too many items, k out of
1..min(max_k, catalog size), unknown fields); 503 while shutting down.

Security: the server binds 127.0.0.1 unless told otherwise. When the environment variable `LLMREC_TOKEN` is set
(non-empty) at start, every endpoint but `/health` and the docs needs `Authorization: Bearer <token>`, compared
in constant time (`hmac.compare_digest`) before the body is read.

Micro-batching (`llmrec.serving.batching`): every request is validated on its own first (so a bad request fails
alone, before it can join a batch), then queued; one worker runs up to `batch_size` queued requests per model
pass (a request that finds the model idle runs at once; `batch_wait_ms` bounds the one wait, for the clients of a
pass of several requests to come back), and hands each request its own answer. Timeouts and shutdown
(`llmrec.serving.lifecycle`): silent, slow-header and slow-body clients are cut off; on SIGINT/SIGTERM uvicorn
stops accepting connections, requests in flight are answered, then the worker stops and the process exits 0.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time, and the
# request models are local to `create_app` (their limits come from its arguments).
import asyncio
import hmac
import json
import logging
import os
import socket
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from llmrec.base.errors import ConfigError
from llmrec.serving.batching import BatcherClosed, MicroBatcher
from llmrec.serving.docs import DOCS_PATHS, add_offline_docs
from llmrec.serving.recommender import RankedBy, Recommender, RequestError

if TYPE_CHECKING:
    from llmrec.serving.lifecycle import Timeouts

log = logging.getLogger(__name__)
TOKEN_ENV = "LLMREC_TOKEN"
OPEN_PATHS = frozenset({"/health", "/openapi.json"}) | DOCS_PATHS  # the docs' pages and their scripts and styles
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; larger requests get 413 (body) or 422 (the rest)."""

    max_body_bytes: int = 1 << 20
    max_history: int = 1000
    max_candidates: int = 200
    max_batch_users: int = 64
    max_k: int = 100
    max_title_chars: int = 500


async def _json_response(send: Callable, status: int, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()
                         ) -> None:
    """Answer `{"detail": ...}` with `status` straight from the middleware."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def json_content_type(value: bytes | None) -> bool:
    """Whether a Content-Type header value is one FastAPI parses as JSON: `application/json` or
    `application/<anything>+json`, parameters (`; charset=utf-8`) ignored."""
    if not value:
        return False
    kind = value.decode("latin-1").split(";", 1)[0].strip().lower()
    main, _, sub = kind.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Guard:
    """ASGI middleware run before FastAPI: the bearer token (401), then the body size (413), then the body's
    content type (415).

    The body is read here, up to `limit` bytes, and handed on unchanged; a body announced or found larger is
    refused without being read further. FastAPI reads a body as JSON only when its Content-Type says JSON; any
    other body would reach validation as raw bytes and be reported as "Input should be a valid dictionary", so it
    is refused here naming the content type expected."""

    def __init__(self, app: Any, token: str | None, limit: int):
        self.app, self.limit = app, limit
        self.token = token.encode() if token else None

    def _authorised(self, scope: dict) -> bool:
        if self.token is None or scope["path"] in OPEN_PATHS:
            return True
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self._authorised(scope):
            return await _json_response(send, 401, f"missing or wrong bearer token: send the header "
                                                   f"`Authorization: Bearer <token>` (the server's ${TOKEN_ENV})",
                                        ((b"www-authenticate", b"Bearer"),))
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:  # (uvicorn refuses a malformed Content-Length itself)
            return await _json_response(send, 413, f"request body of {int(length)} bytes; at most {self.limit} "
                                                   f"bytes are accepted")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _json_response(send, 413, f"request body larger than {self.limit} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False
        content_type = dict(scope.get("headers") or []).get(b"content-type")
        if body and scope.get("method") in BODY_METHODS and not json_content_type(content_type):
            given = (f"Content-Type {content_type.decode('latin-1')!r}" if content_type else
                     "no Content-Type header")
            return await _json_response(send, 415, f"{given}: the request body must be JSON, sent with the header "
                                                   f"`Content-Type: application/json`")

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _location(loc: tuple) -> str:
    """Pydantic's error location as the request spells it: ('body', 'history', 2, 'int') -> `history[2]`.

    Pydantic adds the union member that failed (`int`, `constrained-str`, ...) after an item's index; those
    tags are left out."""
    out = ""
    parts = loc[1:] if loc and loc[0] in ("body", "query") else loc
    for i, part in enumerate(parts):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i > 0 and isinstance(parts[i - 1], int) and (part in _UNION_TAGS or "[" in str(part)):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or ("body" if loc and loc[0] == "body" else "request")


_UNION_TAGS = frozenset({"int", "str", "constrained-str", "bool", "float", "none", "list", "dict"})
SHOWN_INPUT = 60  # characters of a bad value repeated in a message


def _shown(value: Any) -> str:
    """`repr(value)`, cut to `SHOWN_INPUT` characters (a 500-item list or a 100 kB string stays one short line)."""
    text = repr(value)
    return text if len(text) <= SHOWN_INPUT else text[:SHOWN_INPUT - 3] + "..."


def _text_problem(e: dict, what: str) -> str | None:
    """The message for a string too long or not valid Unicode (None for other errors). `what` names the text:
    `a title` for an item given by title, `text` elsewhere."""
    kind, value, ctx = e.get("type", ""), e.get("input"), e.get("ctx") or {}
    if kind == "string_too_long":
        length = f" of {len(value)} characters" if isinstance(value, str) else ""
        return f"{what}{length} is too long (at most {ctx.get('max_length', '?')} characters)"
    if kind == "string_unicode":
        return (f"{what} that is not valid Unicode (a lone surrogate such as \\ud800 without its pair); send "
                f"valid text")
    return None


def validation_message(errors: list[dict]) -> tuple[int, str]:
    """(status, one-line message) for FastAPI's request validation errors: 400 for malformed JSON, else 422.

    An item is an id (integer) or an exact title (string): pydantic reports both failed union members, the
    integer one first. A string that is a string but too long or not valid Unicode is reported as the title it
    is ("a title of 501 characters is too long"), not as "Input should be a valid integer"."""
    for e in errors:
        if e.get("type") == "json_invalid":
            where = e.get("loc", ())
            at = f" at position {where[1]}" if len(where) > 1 and isinstance(where[1], int) else ""
            reason = (e.get("ctx") or {}).get("error", "not valid JSON")
            return 400, f"malformed JSON body{at}: {reason}"
    first = errors[0]
    where = _location(tuple(first.get("loc", ())))
    same = [e for e in errors if _location(tuple(e.get("loc", ()))) == where]
    union = len(same) > 1
    for e in same:
        problem = _text_problem(e, "a title" if union else "text")
        if problem is not None:
            return 422, f"{where}: {problem}"
    specific = [e for e in same if not e.get("type", "").endswith("_type")]  # a constraint, not a wrong type
    if union and specific:
        message = specific[0].get("msg", "invalid value")
    elif union and all(e.get("type", "").endswith(("int_type", "string_type")) for e in same):
        message = f"got {_shown(first.get('input'))}, expected an item id (integer) or an exact title (string)"
    else:
        message = first.get("msg", "invalid value")
    return 422, f"{where}: {message}"


def body_error_message(cause: BaseException) -> str:
    """The one-line 400 message for a body FastAPI could not parse for a reason other than a JSON syntax error
    (it then answers "There was an error parsing the body"): `cause` is what its JSON parser raised."""
    if isinstance(cause, RecursionError):
        return ("malformed JSON body: nested too deeply to parse (a request nests at most 4 levels: "
                "{\"requests\": [{\"history\": [...]}]})")
    if isinstance(cause, UnicodeDecodeError):
        return (f"malformed JSON body: not UTF-8 text (byte 0x{cause.object[cause.start]:02x} at position "
                f"{cause.start})")
    return f"malformed JSON body: could not parse it ({type(cause).__name__})"


def create_app(recommender: Recommender, limits: Limits = Limits(), token: str | None = None,
               batch_size: int = 16, batch_wait_ms: float = 5.0) -> Any:
    """The ASGI app (FastAPI behind the `Guard` middleware) serving `recommender`."""
    from fastapi import Depends, FastAPI
    from fastapi import Query as QueryParam
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPBearer
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
    from starlette.exceptions import HTTPException as StarletteHTTPException

    rec = recommender
    max_k = min(limits.max_k, rec.n_items)
    batcher = MicroBatcher(rec.run, max_batch=batch_size, max_wait_ms=batch_wait_ms)
    ItemRef = StrictInt | Annotated[StrictStr, Field(max_length=limits.max_title_chars)]
    ids = ("integers" if rec.ids.integer else "text, e.g. " + ", ".join(map(repr, rec.ids.examples)))
    example = [rec.item(i)["id"] for i in range(1, len(rec.titles)) if rec.titles[i]][:3]  # the catalog's own ids

    class RecommendRequest(BaseModel):
        """One user's history; without candidates the whole catalog is searched (retrieve, then re-rank)."""

        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"history": example, "k": 10}]})
        history: list[ItemRef] = Field(max_length=limits.max_history, description=(
            f"items the user interacted with, oldest first: the dataset's item ids ({ids}) or exact titles; at "
            f"least one. The model sees the most recent {rec.history_window}; all count for exclude_history"))
        candidates: list[ItemRef] | None = Field(None, max_length=limits.max_candidates, description=(
            ("items to rank (ids or exact titles); null: retrieve from the whole catalog (the LLM re-ranks the "
             f"encoder's top {rec.retrieve_n})" if rec.can_retrieve else
             "items to rank (ids or exact titles); required: this model cannot retrieve from the whole catalog")
            + ". The LLM ranks as many as its prompt holds; the others follow (ranked_by)"))
        k: StrictInt = Field(10, ge=1, le=max_k, description=(
            "how many items to return; the ranking does not depend on k (an answer is the first k items of the "
            "answer for any larger k)"))
        exclude_history: StrictBool = Field(True, description="never recommend an item of the history")

    class Item(BaseModel):
        id: StrictInt | StrictStr = Field(description=f"the dataset's own item id ({ids})")
        index: int = Field(description="the model's item number (item_id of the prepared tables)")
        title: str
        score: float | None = Field(description="the LLM's log-probability of the item's title as the answer; "
                                                "null for an item the LLM did not rank")
        rank: int
        ranked_by: RankedBy = Field(description=(
            "llm: ranked by score; encoder: after the LLM's items, in the sequential encoder's order (ranks past "
            "the LLM's retrieved items, or candidates its prompt could not hold); request: after the LLM's "
            "items, in the order the request listed them (a text-only model's candidates its prompt could not "
            "hold)"))

    class RecommendResponse(BaseModel):
        items: list[Item]
        retrieved: bool = Field(description="whether the candidates were retrieved from the whole catalog")

    class BatchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        requests: list[RecommendRequest] = Field(min_length=1, max_length=limits.max_batch_users)

    class BatchResponse(BaseModel):
        results: list[RecommendResponse]

    class CatalogItem(BaseModel):
        id: StrictInt | StrictStr = Field(description=f"the dataset's own item id ({ids})")
        index: int = Field(description="the model's item number")
        title: str

    class ItemsResponse(BaseModel):
        items: list[CatalogItem]
        total: int = Field(description="how many titles match (only `limit` are listed)")

    class Problem(BaseModel):
        detail: str

    def make_query(req: RecommendRequest, prefix: str = "") -> Any:
        try:
            return rec.query(req.history, req.candidates, req.k, req.exclude_history)
        except RequestError as e:
            raise e.prefixed(prefix) if prefix else e from None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        log.info("serving %s: %s", rec.folder, rec.describe())
        try:
            yield
        finally:
            await batcher.stop()  # uvicorn has answered the requests in flight by now

    errors = {400: {"model": Problem, "description": "malformed JSON"},
              401: {"model": Problem, "description": f"missing or wrong bearer token (when ${TOKEN_ENV} is set)"},
              413: {"model": Problem, "description": f"body larger than {limits.max_body_bytes} bytes"},
              415: {"model": Problem, "description": "a body sent without `Content-Type: application/json`"},
              422: {"model": Problem, "description": "a request the model cannot answer; the message names the field"}}
    bearer = [Depends(HTTPBearer(auto_error=False))] if token else []  # documents the scheme; `Guard` enforces it
    app = FastAPI(title="llmrec", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Next-item recommendations from an llmrec LLM checkpoint. Items are given as ids or "
                              "exact titles; see GET /items to find titles.")
    add_offline_docs(app)  # /docs and /redoc with their scripts and styles served from here: they work offline
    app.state.batcher, app.state.recommender = batcher, rec

    @app.exception_handler(RequestError)
    async def request_error(_, e: RequestError):
        return JSONResponse({"detail": e.text("http")}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, e: RequestValidationError):
        status, message = validation_message(list(e.errors()))
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def unparsable(request, e: StarletteHTTPException):
        if e.status_code == 400 and e.__cause__ is not None:  # FastAPI's "There was an error parsing the body"
            return JSONResponse({"detail": body_error_message(e.__cause__)}, status_code=400)
        return await http_exception_handler(request, e)

    @app.exception_handler(BatcherClosed)
    async def closing(_, e: BatcherClosed):
        return JSONResponse({"detail": str(e)}, status_code=503)

    @app.post("/recommend", response_model=RecommendResponse, responses=errors, dependencies=bearer)
    async def recommend(req: RecommendRequest) -> Any:
        """The k best next items for one history."""
        items = await batcher.submit(make_query(req))
        return {"items": items, "retrieved": req.candidates is None}

    @app.post("/recommend/batch", response_model=BatchResponse, responses=errors, dependencies=bearer)
    async def recommend_batch(req: BatchRequest) -> Any:
        """Several histories in one request; any invalid one fails the request, naming `requests[i]`."""
        queries = [make_query(r, f"requests[{i}].") for i, r in enumerate(req.requests)]
        outcomes = await asyncio.gather(*(batcher.submit(q) for q in queries), return_exceptions=True)
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, RequestError):
                raise outcome.prefixed(f"requests[{i}].")
            if isinstance(outcome, BaseException):
                raise outcome
        return {"results": [{"items": items, "retrieved": r.candidates is None}
                            for items, r in zip(outcomes, req.requests)]}

    @app.get("/items", response_model=ItemsResponse, responses=errors, dependencies=bearer)
    async def items(query: Annotated[str, QueryParam(min_length=1, max_length=200, description="part of a title")],
                    limit: Annotated[int, QueryParam(ge=1, le=100)] = 20) -> Any:
        """Catalog items whose title contains `query` (case-insensitive)."""
        found, total = rec.search(query, limit)
        return {"items": found, "total": total}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """200 once the model is loaded and the server answers."""
        return {"status": "ok", **rec.describe()}

    return Guard(app, token, limits.max_body_bytes)


def _version() -> str:
    from llmrec import __version__

    return __version__


def read_token() -> str | None:
    """The bearer token from `$LLMREC_TOKEN` (None when unset or empty)."""
    token = os.environ.get(TOKEN_ENV, "")
    if os.environ.get(TOKEN_ENV) is not None and not token.strip():
        log.warning("$%s is set but empty: the server runs without a token", TOKEN_ENV)
    return token.strip() or None


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to (host, port); port 0 picks a free port (see `getsockname`)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise ConfigError(f"option --host {host}: not an address of this machine ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ConfigError(f"option --port {port}: cannot listen on {host}:{port} ({e.strerror}); choose another "
                          f"port, or --port 0 for any free one") from None
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app: Any, graceful_timeout_s: float = 30.0, access_log: bool = False,
                   log_level: str = "info", timeouts: "Timeouts | None" = None) -> Any:
    """A `uvicorn.Server` for `app`; run it with `server.run(sockets=[bind_socket(...)])`.

    Idle, header and body timeouts (`llmrec.serving.lifecycle.Timeouts`, its defaults when None) and a shutdown
    that answers what is in flight, refuses stalled bodies quickly and returns normally after SIGINT/SIGTERM
    (`llmrec.serving.lifecycle`)."""
    from llmrec.serving.lifecycle import Timeouts, graceful_server

    return graceful_server(app, timeouts or Timeouts(), graceful_timeout_s, access_log, log_level)
