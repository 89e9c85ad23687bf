"""Shared helpers of the serving tests that are not fixtures (the checkpoint and the `Recommender` they serve are
conftest.py's `ckpt` and `rec`): a real uvicorn server on 127.0.0.1 in a thread, a small HTTP client, and answer
comparison with a float tolerance."""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any

def same_answer(got: list[dict[str, Any]], want: list[dict[str, Any]], tol: float = 1e-4) -> bool:
    """Equal answers: same items, titles and ranks; scores equal up to `tol` (a batch of other sizes pads
    prompts differently, which changes float sums in the last bits). Two items whose scores are within `tol`
    may swap places."""
    if len(got) != len(want):
        return False
    g, w = {i["id"]: i for i in got}, {i["id"]: i for i in want}
    if set(g) != set(w) or any(abs(g[i]["score"] - w[i]["score"]) > tol or g[i]["title"] != w[i]["title"]
                               for i in g):
        return False
    for a, b in zip(got, want):
        if a["id"] != b["id"] and abs(a["score"] - b["score"]) > tol:
            return False
    return [i["rank"] for i in got] == list(range(1, len(got) + 1))


class ServerThread:
    """uvicorn serving `app` on an already bound 127.0.0.1 socket (port chosen by the OS), in a daemon thread."""

    def __init__(self, app: Any):
        from llmrec.serving.server import bind_socket, uvicorn_server

        self.sock = bind_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn_server(app, graceful_timeout_s=5, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def request(port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
            raw: bytes | None = None, timeout: float = 60) -> tuple[int, Any]:
    """One HTTP request to 127.0.0.1:`port`; (status, parsed JSON body or the text when it is not JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        response = conn.getresponse()
        text = response.read().decode("utf-8", errors="replace")
        try:
            return response.status, json.loads(text)
        except json.JSONDecodeError:
            return response.status, text
    finally:
        conn.close()


def test_same_answer_tolerates_float_noise_only():
    a = [{"id": 3, "title": "A", "score": -1.0, "rank": 1}, {"id": 5, "title": "B", "score": -2.0, "rank": 2}]
    b = [{"id": 3, "title": "A", "score": -1.00001, "rank": 1}, {"id": 5, "title": "B", "score": -2.0, "rank": 2}]
    assert same_answer(a, b)
    assert not same_answer(a, list(reversed(b)))  # order differs by far more than the tolerance
    assert not same_answer(a, [dict(a[0], score=-1.5), a[1]])
    assert not same_answer(a, a[:1])
