"""`llmrec serve` as a real subprocess under slow, silent and stalled clients and SIGTERM/SIGINT (issue 20, defect
6; `llmrec.serving.lifecycle`): a silent connection is closed after the idle timeout, a client trickling header
bytes after the header timeout, a stalled body gets 408 after the body timeout; SIGTERM under load answers every
request in flight and refuses the rest cleanly (never a 5xx); a client stalled mid-body does not hold the shutdown
for the graceful timeout, gets 408 (no 500, no traceback in the log); the process exits with status 0; a request
still unanswered when the graceful timeout runs out gets 503 and one log line, not a traceback."""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_serving_support import ServerThread, request, same_answer

from llmrec.serving.lifecycle import DRAIN_BODY_GRACE_S
from llmrec.serving.server import TOKEN_ENV, create_app

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # `ckpt` and `rec` come from conftest.py

STALLED = (b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Content-Length: 200\r\n\r\n{\"history\": [1, ")  # 16 of the 200 body bytes announced


class Served:
    """`llmrec serve --config FILE.yaml` in a subprocess (stderr to a file), on a free port of 127.0.0.1."""

    def __init__(self, ckpt: Path, folder: Path, **options: Any):
        config = {"ckpt": str(ckpt), "port": 0, "device": "cpu", "threads": 1, **options}
        path = folder / "serve.yaml"
        path.write_text(yaml.safe_dump(config))  # every option through the file, `threads` included
        self.log_path = folder / "serve.log"
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "llmrec", "serve", "--config", str(path)],
                                         stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        line = self.proc.stdout.readline()  # printed once the model is loaded and the port bound
        match = re.search(r"on http://127\.0\.0\.1:(\d+) ", line)
        assert match, (line, self.log())
        assert "; 1 torch threads" in line, line  # `threads` from the YAML file took effect
        self.port = int(match.group(1))
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(self.port, "GET", "/health", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and self.proc.poll() is None, self.log()
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_after(sock: socket.socket, limit: float = 30) -> tuple[bytes, float]:
    """(everything the server sent until it closed the connection, seconds that took)."""
    started, data = time.monotonic(), b""
    sock.settimeout(limit)
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic() - started


# ------------------------------------------------------------------------------------------------ timeouts
@pytest.fixture(scope="module")
def served(ckpt, tmp_path_factory):
    srv = Served(ckpt, tmp_path_factory.mktemp("serve"), idle_timeout_s=1.0, header_timeout_s=1.5,
                 body_timeout_s=1.0)
    yield srv
    srv.stop()


def test_a_silent_connection_is_closed_after_the_idle_timeout(served):
    sent, seconds = closed_after(connect(served.port))
    assert sent == b"" and 0.8 < seconds < 4, seconds

    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)  # kept alive after an answer
    conn.request("POST", "/recommend", body=json.dumps({"history": [1, 2], "k": 2}),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("connection") != "close"
    response.read()
    sent, seconds = closed_after(conn.sock)
    assert sent == b"" and 0.8 < seconds < 4, seconds


def test_a_client_trickling_header_bytes_is_cut_off_at_the_header_timeout(served):
    sock, started = connect(served.port), time.monotonic()
    header = b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 200
    with pytest.raises(OSError):  # one byte every 0.1 s keeps the idle timer from firing, never the header one
        for byte in header:
            sock.send(bytes([byte]))
            time.sleep(0.1)
            sock.setblocking(False)
            try:
                if sock.recv(1) == b"":
                    raise ConnectionResetError("closed by the server")
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
    assert 1.3 < time.monotonic() - started < 5


def test_a_stalled_body_gets_408_after_the_body_timeout_and_one_log_line(served, rec):
    sock = connect(served.port)
    sock.sendall(STALLED)
    client_port = sock.getsockname()[1]
    sent, seconds = closed_after(sock)
    head, _, body = sent.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower() and 0.8 < seconds < 4
    assert json.loads(body) == {"detail": "request timeout: the request body did not arrive within 1 s"}
    status, answer = request(served.port, "POST", "/recommend", {"history": [3, 4], "k": 2})  # others unaffected
    assert status == 200 and same_answer(answer["items"], rec.recommend([3, 4], k=2))
    lines = [line for line in served.log().splitlines() if f"127.0.0.1:{client_port}" in line]
    assert len(lines) == 1 and "answered 408" in lines[0], served.log()
    assert "Traceback" not in served.log()


# ------------------------------------------------------------------------------------------------ shutdown
def test_sigterm_under_load_answers_every_request_in_flight_and_refuses_the_rest_cleanly(ckpt, rec, tmp_path):
    srv = Served(ckpt, tmp_path, batch_size=1, graceful_timeout_s=20, access_log=True)  # one at a time: a queue
    histories = [[i, i + 1, i + 2] for i in range(1, 20)]
    expected = {tuple(h): rec.recommend(h, k=3) for h in histories}
    outcomes: list[tuple[str, Any, float, float]] = []  # (kind, status or error, sent, done)
    lock, signalled = threading.Lock(), threading.Event()

    def client(c: int) -> None:
        conn, i = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60), c
        while True:
            history, sent = histories[i % len(histories)], time.monotonic()
            i += 1
            try:
                conn.request("POST", "/recommend", body=json.dumps({"history": history, "k": 3}),
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                body = json.loads(response.read())
                ok = response.status == 200 and same_answer(body["items"], expected[tuple(history)])
                outcome = ("answer", response.status if ok else (response.status, body), sent, time.monotonic())
            except ConnectionRefusedError:  # the server no longer listens: this client is done
                with lock:
                    outcomes.append(("refused", None, sent, time.monotonic()))
                return
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                outcome = ("closed", type(e).__name__, sent, time.monotonic())  # no answer started: not taken
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
            with lock:
                outcomes.append(outcome)
            if outcome[0] == "closed" and not signalled.is_set():
                return  # a connection closed before the signal: a real failure, reported below

    threads = [threading.Thread(target=client, args=(c,)) for c in range(6)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        at = time.monotonic()
        signalled.set()
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
        assert srv.proc.wait(timeout=30) == 0, srv.log()
    finally:
        srv.stop()
    answers = [o for o in outcomes if o[0] == "answer"]
    assert answers and all(o[1] == 200 for o in answers), [o for o in answers if o[1] != 200]  # 0 errors, 0 5xx
    assert all(o[2] >= at for o in outcomes if o[0] == "closed"), outcomes  # closed only by the shutdown ...
    assert sum(o[0] == "closed" for o in outcomes) <= len(threads)  # ... once per kept-alive connection at most
    assert sum(o[0] == "refused" for o in outcomes) == len(threads)  # then every client was refused
    in_flight = [o for o in answers if o[2] < at < o[3]]
    assert in_flight, "no request was in flight at the signal"  # and those were answered
    log = srv.log()
    assert "Traceback" not in log and not re.search(r'" 5\d\d', log), log  # the access log: no 5xx


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_client_stalled_mid_body_does_not_hold_the_shutdown(ckpt, tmp_path, stop):
    srv = Served(ckpt, tmp_path, graceful_timeout_s=30, body_timeout_s=60)
    try:
        stalled = connect(srv.port)
        stalled.sendall(STALLED)
        idle = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)  # a kept-alive connection too
        idle.request("GET", "/health")
        assert idle.getresponse().read()
        time.sleep(0.3)
        started = time.monotonic()
        srv.proc.send_signal(stop)
        sent, _ = closed_after(stalled)
        refused_in = time.monotonic() - started
        code = srv.proc.wait(timeout=30)
        stopped_in = time.monotonic() - started
    finally:
        srv.stop()
    assert sent.startswith(b"HTTP/1.1 408 ") and refused_in < DRAIN_BODY_GRACE_S + 2, (sent, refused_in)
    assert code == 0 and stopped_in < 10, (code, stopped_in)  # the graceful timeout is 30 s
    log = srv.log()
    assert "Traceback" not in log and "CancelledError" not in log and "500" not in log, log
    assert len([line for line in log.splitlines() if "408" in line]) == 1, log


def test_a_request_still_unanswered_at_the_graceful_timeout_gets_503_and_one_log_line(rec):
    app = create_app(rec, batch_size=4, batch_wait_ms=0)
    batcher = app.app.state.batcher  # `app` is the Guard middleware around FastAPI
    entered, gate, run = threading.Event(), threading.Event(), batcher.run

    def held(queries):  # a model pass that outlasts the graceful timeout
        entered.set()
        assert gate.wait(30), "the test never opened the gate"
        return run(queries)

    batcher.run = held
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "llmrec.serving.lifecycle")]
    srv = ServerThread(app)
    srv.server.config.timeout_graceful_shutdown = 0.3
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(request, srv.port, "POST", "/recommend", {"history": [1, 2]})
            assert entered.wait(30)
            srv.server.should_exit = True  # what SIGTERM does
            status, body = answer.result(timeout=30)
    finally:
        gate.set()  # the pass ends; the batcher then stops
        srv.stop()
        for logger in loggers:
            logger.removeHandler(handler)
    assert status == 503 and body == {"detail": "the server shut down before this request was answered"}
    assert not [r for r in records if r.exc_info], [r.getMessage() for r in records]  # no traceback
    assert len([r for r in records if "answered 503" in r.getMessage()]) == 1
