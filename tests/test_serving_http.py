"""The HTTP API (issue 12) against a REAL uvicorn server on 127.0.0.1 (a free port chosen by the OS): answers equal
the Python API, each bad input gets its status and a one-line message naming the field, a bad request never
affects the requests batched beside it, 32 concurrent requests each get their own answer, a schema-driven fuzz of
the OpenAPI spec gets no 5xx, the bearer token, and `llmrec serve` finishing requests in flight on SIGTERM."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from bench_scripts import load_bench_script
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_serving_support import ServerThread, request, same_answer

from llmrec.base.errors import ConfigError
from llmrec.serving.server import TOKEN_ENV, Limits, bind_socket, create_app, read_token, validation_message

LIMITS = Limits(max_body_bytes=4096, max_history=40, max_candidates=12, max_batch_users=5)  # max_k: 100 -> 24


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # `ckpt` and `rec` come from conftest.py


def start(rec, token=None, batch_size=8, batch_wait_ms=10.0) -> tuple[ServerThread, object]:
    app = create_app(rec, LIMITS, token, batch_size, batch_wait_ms)
    return ServerThread(app), app.app.state.batcher  # `app` is the Guard middleware around FastAPI


@pytest.fixture(scope="module")
def server(rec):
    srv, _ = start(rec)
    yield srv
    srv.stop()


# ------------------------------------------------------------------------------------------------ endpoints
def test_health_docs_and_openapi(server, rec):
    status, body = request(server.port, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["n_items"] == 24 and body["can_retrieve"] is True
    assert (body["retrieve_n"], body["history_window"]) == (rec.retrieve_n, rec.history_window)
    status, spec = request(server.port, "GET", "/openapi.json")
    assert status == 200 and {"/recommend", "/recommend/batch", "/items", "/health"} <= set(spec["paths"])
    schema = spec["components"]["schemas"]["RecommendRequest"]
    assert schema["properties"]["history"]["maxItems"] == 40 and schema["properties"]["k"]["maximum"] == 24
    assert schema["additionalProperties"] is False
    assert request(server.port, "GET", "/docs")[0] == 200


def test_recommend_over_http_equals_the_python_api(server, rec):
    status, body = request(server.port, "POST", "/recommend", {"history": [1, 2, 3], "k": 5})
    assert status == 200 and body["retrieved"] is True and same_answer(body["items"], rec.recommend([1, 2, 3], k=5))
    status, body = request(server.port, "POST", "/recommend",
                           {"history": ["Red River (1980)", 2], "candidates": [9, "Glass Red (1989)", 2], "k": 2,
                            "exclude_history": False})
    assert status == 200 and body["retrieved"] is False
    assert same_answer(body["items"], rec.recommend([1, 2], [9, 10, 2], k=2, exclude_history=False))


def test_batch_endpoint(server, rec):
    reqs = [{"history": [1, 2, 3]}, {"history": [4, 5], "candidates": [7, 8, 9], "k": 2}, {"history": [20], "k": 1}]
    status, body = request(server.port, "POST", "/recommend/batch", {"requests": reqs})
    assert status == 200 and len(body["results"]) == 3
    for r, got in zip(reqs, body["results"]):
        assert got["retrieved"] is ("candidates" not in r)
        assert same_answer(got["items"], rec.recommend(r["history"], r.get("candidates"), r.get("k", 10)))


def test_title_search_endpoint(server, rec):
    status, body = request(server.port, "GET", "/items?query=" + urllib.parse.quote("RED") + "&limit=2")
    red = [i for i in range(1, 25) if "red" in rec.titles[i].lower()]
    assert status == 200 and body == {"items": [{"id": i, "index": i, "title": rec.titles[i]} for i in red[:2]],
                                      "total": 4}
    assert request(server.port, "GET", "/items?query=zzz")[1] == {"items": [], "total": 0}


# ------------------------------------------------------------------------------------------------ bad input
ALL_ITEMS = list(range(1, 25))
BAD = [  # (path, body or raw bytes, status, the start of the message)
    ("/recommend", {"history": [1, 999]}, 422, "history[1]: unknown item id 999 (the catalog has ids 1..24)"),
    ("/recommend", {"history": ["Nope (1900)"]}, 422, "history[0]: no item has the title 'Nope (1900)'"),
    ("/recommend", {"history": []}, 422, "history is empty: give at least one item"),
    ("/recommend", {"history": [1] * 41}, 422, "history: List should have at most 40 items"),
    ("/recommend", {"history": [1], "candidates": ALL_ITEMS[:13]}, 422, "candidates: List should have at most 12"),
    ("/recommend", {"history": [1], "candidates": [2, 3, 2]}, 422, "candidates[2]: item 2 is already candidates[0]"),
    ("/recommend", {"history": ALL_ITEMS}, 422, "history: every item of the catalog is in the history"),
    ("/recommend", {"history": [1], "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ("/recommend", {"history": [1], "k": 25}, 422, "k: Input should be less than or equal to 24"),
    ("/recommend", {"history": [1], "k": "5"}, 422, "k: Input should be a valid integer"),
    ("/recommend", {"history": [1, 2.5]}, 422, "history[1]: got 2.5, expected an item id (integer) or an exact"),
    ("/recommend", {"history": "1,2"}, 422, "history: Input should be a valid list"),
    ("/recommend", {"history": [1], "user": 7}, 422, "user: Extra inputs are not permitted"),
    ("/recommend", {"k": 3}, 422, "history: Field required"),
    ("/recommend", [1, 2], 422, "body: Input should be a valid dictionary"),
    ("/recommend", b'{"history": [1,', 400, "malformed JSON body"),
    ("/recommend", b"\xff\xfe", 400, "malformed JSON body"),
    ("/recommend", b'{"history": [' + b"1," * 3000 + b"1]}", 413, "request body of 6016 bytes; at most 4096"),
    ("/recommend/batch", {"requests": [{"history": [1]}] * 6}, 422, "requests: List should have at most 5 items"),
    ("/recommend/batch", {"requests": []}, 422, "requests: List should have at least 1 item"),
    ("/recommend/batch", {"requests": [{"history": [1]}, {"history": [2, 0]}]}, 422,
     "requests[1].history[1]: unknown item id 0"),
    ("/recommend/batch", {"requests": [{"history": [1]}, {"history": [2], "k": 99}]}, 422,
     "requests[1].k: Input should be less than or equal to 24"),
]


@pytest.mark.parametrize("path,body,status,message", BAD, ids=[m[:40] for *_, m in BAD])
def test_each_bad_input_gets_its_status_and_a_one_line_message(server, path, body, status, message):
    raw = body if isinstance(body, bytes) else None
    got, answer = request(server.port, "POST", path, None if raw else body, raw=raw)
    assert got == status and isinstance(answer, dict), answer
    assert answer["detail"].startswith(message) and "\n" not in answer["detail"], answer


def test_a_chunked_body_is_read_within_the_limit_too(server, rec):
    import http.client

    def send(chunks):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:  # an iterable body without Content-Length goes out with Transfer-Encoding: chunked
            conn.request("POST", "/recommend", body=iter(chunks), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    status, body = send([b'{"history": [', b"1, 2", b', 3], "k": 2}'])
    assert status == 200 and same_answer(body["items"], rec.recommend([1, 2, 3], k=2))
    assert send([b'{"history": ['] + [b"1," * 500] * 5 + [b"1]}"]) == (413, {"detail": "request body larger than "
                                                                                     "4096 bytes"})


def test_bad_query_parameters_and_methods(server):
    assert request(server.port, "GET", "/items?query=")[1]["detail"].startswith("query: String should have at least")
    assert request(server.port, "GET", "/items?query=red&limit=0")[0] == 422
    assert request(server.port, "GET", "/items")[1]["detail"] == "query: Field required"
    assert request(server.port, "GET", "/recommend")[0] == 405
    assert request(server.port, "GET", "/nowhere")[0] == 404


def test_validation_messages_by_hand():
    assert validation_message([{"type": "json_invalid", "loc": ("body", 14), "msg": "JSON decode error",
                                "ctx": {"error": "Expecting value"}}]) == \
        (400, "malformed JSON body at position 14: Expecting value")
    both = [{"type": "int_type", "loc": ("body", "history", 0, "int"), "msg": "x", "input": None},
            {"type": "string_type", "loc": ("body", "history", 0, "constrained-str"), "msg": "y", "input": None}]
    expected = "history[0]: got None, expected an item id (integer) or an exact title (string)"
    assert validation_message(both) == (422, expected)


def test_the_bearer_token(rec, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "  s3cret-token ")
    token = read_token()
    assert token == "s3cret-token"
    monkeypatch.setenv(TOKEN_ENV, "")
    assert read_token() is None
    srv, _ = start(rec, token=token)
    try:
        body = {"history": [1, 2]}
        assert request(srv.port, "GET", "/health")[0] == 200  # open: load balancers probe it
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"},
                        {"Authorization": "Bearer s3cret-tokenX"}):
            status, answer = request(srv.port, "POST", "/recommend", body, headers=headers)
            assert status == 401 and answer["detail"].startswith("missing or wrong bearer token"), headers
        assert request(srv.port, "POST", "/recommend", raw=b"{broken")[0] == 401  # checked before the body
        assert request(srv.port, "GET", "/items?query=red")[0] == 401
        status, answer = request(srv.port, "POST", "/recommend", body, headers={"Authorization": "Bearer s3cret-token"})
        assert status == 200 and same_answer(answer["items"], rec.recommend([1, 2]))
        spec = request(srv.port, "GET", "/openapi.json")[1]
        assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------------ concurrency
def test_a_bad_request_never_affects_the_requests_batched_beside_it(rec):
    srv, batcher = start(rec, batch_size=8, batch_wait_ms=400)
    try:
        # A request that finds the model idle runs at once (llmrec.serving.batching, rule 2), so a first request
        # holds the model while the five below arrive: they queue, and the valid ones form the next batch.
        entered, gate, run = threading.Event(), threading.Event(), batcher.run

        def held(queries):
            entered.set()
            assert gate.wait(30), "the test never opened the gate"
            return run(queries)

        batcher.run = held
        bodies = [{"history": [1, 2, 3], "k": 4},                  # good
                  {"history": ALL_ITEMS},                          # fails inside the batch: nothing left to retrieve
                  {"history": [5, 999]},                           # fails validation, never joins the batch
                  {"history": [6, 7], "candidates": [8, 9, 10]},   # good, other candidate count
                  {"history": [11], "k": 2}]                       # good
        barrier = threading.Barrier(len(bodies))

        def send(body):
            barrier.wait()
            return request(srv.port, "POST", "/recommend", body)

        with ThreadPoolExecutor(len(bodies) + 1) as pool:
            first = pool.submit(request, srv.port, "POST", "/recommend", {"history": [4], "k": 1})
            assert entered.wait(30)
            sent = [pool.submit(send, body) for body in bodies]
            deadline = time.monotonic() + 30
            while batcher.queued < 4:  # every request but the invalid one is queued behind the first
                assert time.monotonic() < deadline, batcher.queued
                time.sleep(0.01)
            gate.set()
            answers = [f.result() for f in sent]
            assert first.result()[0] == 200
        assert [s for s, _ in answers] == [200, 422, 422, 200, 200]
        assert answers[1][1]["detail"].startswith("history: every item of the catalog is in the history")
        assert answers[2][1]["detail"].startswith("history[1]: unknown item id 999")
        for (_, got), body in zip(answers, bodies):
            if "items" in got:
                assert same_answer(got["items"], rec.recommend(body["history"], body.get("candidates"),
                                                               body.get("k", 10)))
        assert (batcher.batches, batcher.batched) == (2, 5)  # the first request, then the four valid ones together
    finally:
        srv.stop()


def test_32_concurrent_requests_each_get_their_own_answer(rec):
    srv, batcher = start(rec, batch_size=8, batch_wait_ms=20)
    try:
        histories = [list(p) for p in itertools.islice(itertools.combinations(range(1, 25), 2), 0, 64, 2)]
        assert len(histories) == 32 and len({tuple(h) for h in histories}) == 32
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda h: request(srv.port, "POST", "/recommend", {"history": h, "k": 5}),
                                    histories))
        assert all(status == 200 for status, _ in answers)
        direct = [rec.recommend(h, k=5) for h in histories]
        assert all(same_answer(body["items"], want) for (_, body), want in zip(answers, direct))
        assert batcher.batched == 32 and batcher.batches < 32  # requests were grouped
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------------ fuzz
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.sampled_from(["history", "candidates", "k", "exclude_history", "requests"]) | st.text(max_size=6), inner,
        max_size=5),
    max_leaves=15)


def from_schema(schema: dict, root: dict, items: st.SearchStrategy | None = None,
                titles: st.SearchStrategy | None = None) -> st.SearchStrategy:
    """Values valid by the JSON Schema subset FastAPI writes into the OpenAPI spec ($ref, anyOf, object, array,
    integer, number, string, boolean, null, with their bounds); arrays and strings are kept short. Unbounded
    integers and strings also draw from `items` and `titles` (real item ids and titles), so that valid requests
    reach the model too. (hypothesis-jsonschema would do this, but its 0.23 release breaks on current Hypothesis.)"""

    def sub(s: dict) -> st.SearchStrategy:
        return from_schema(s, root, items, titles)

    if "$ref" in schema:
        return st.deferred(lambda: sub(root["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]))
    if "anyOf" in schema:
        return st.one_of([sub(s) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "integer":
        bounded = st.integers(schema.get("minimum"), schema.get("maximum"))
        return bounded | items if items is not None and "minimum" not in schema else bounded
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "string":
        text = st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 30), 30))
        return text | titles if titles is not None and "minLength" not in schema else text
    if kind == "array":
        return st.lists(sub(schema.get("items", {})), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 8), 8))
    if kind == "object":
        props = {k: sub(v) for k, v in schema.get("properties", {}).items()}
        required = set(schema.get("required", []))
        return st.fixed_dictionaries({k: v for k, v in props.items() if k in required},
                                     optional={k: v for k, v in props.items() if k not in required})
    raise AssertionError(f"schema construct not covered by the fuzz generator: {schema}")


@pytest.fixture(scope="module")
def strategies(server, rec):
    spec = request(server.port, "GET", "/openapi.json")[1]
    items, titles = st.integers(0, 26), st.sampled_from(rec.titles[1:])
    params = {p["name"]: p["schema"] for p in spec["paths"]["/items"]["get"]["parameters"]}
    body = {path: spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
            for path in ("/recommend", "/recommend/batch")}
    return {"/recommend": from_schema(body["/recommend"], spec, items, titles),
            "/recommend/batch": from_schema(body["/recommend/batch"], spec, items, titles),
            "query": from_schema(params["query"], spec), "limit": from_schema(params["limit"], spec)}


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_schema_driven_fuzz_gets_no_server_error(server, strategies, data):
    """Bodies valid by the OpenAPI schema (which may still name unknown items), arbitrary JSON, raw bytes, and the
    /items parameters: every answer is 200 or a 4xx with a one-line message, never a 5xx."""
    kind = data.draw(st.sampled_from(["/recommend", "/recommend/batch", "json", "bytes", "items"]))
    if kind == "items":
        query = data.draw(strategies["query"] | st.text(max_size=5))
        limit = data.draw(strategies["limit"] | st.integers(-5, 500))
        status, body = request(server.port, "GET", "/items?" + urllib.parse.urlencode({"query": query, "limit": limit}))
    elif kind in ("json", "bytes"):
        path = data.draw(st.sampled_from(["/recommend", "/recommend/batch"]))
        raw = data.draw(st.binary(max_size=64)) if kind == "bytes" else json.dumps(data.draw(JSON_VALUES)).encode()
        status, body = request(server.port, "POST", path, raw=raw)
    else:
        status, body = request(server.port, "POST", kind, data.draw(strategies[kind]))
    event(f"{kind}: {status}")  # the mix of answers: `pytest --hypothesis-show-statistics`
    assert status < 500, body
    assert status in (200, 400, 413, 422), (status, body)
    if status != 200:
        assert isinstance(body, dict) and isinstance(body["detail"], str) and "\n" not in body["detail"], body


# ------------------------------------------------------------------------------------------------ llmrec serve
def test_a_taken_port_is_a_one_line_error():
    first = bind_socket("127.0.0.1", 0)
    first.listen()
    port = first.getsockname()[1]
    try:
        with pytest.raises(ConfigError, match=rf"^option --port {port}: cannot listen on 127.0.0.1:{port} \("):
            bind_socket("127.0.0.1", port)
    finally:
        first.close()


def test_llmrec_serve_finishes_requests_in_flight_on_sigterm(ckpt, rec):
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "llmrec", "serve", "--ckpt", str(ckpt), "--port", "0",
                             "--batch-wait-ms", "1500", "--threads", "1", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # printed once the model is loaded and the port bound
        match = re.search(r"on http://127\.0\.0\.1:(\d+) ", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(match.group(1))
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(port, "GET", "/health", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        answer = {}
        sender = threading.Thread(target=lambda: answer.update(
            zip(("status", "body"), request(port, "POST", "/recommend", {"history": [1, 2, 3], "k": 3}))))
        sender.start()
        time.sleep(0.4)  # a lone request runs at once, whatever the window (requests in flight during a SIGTERM:
        proc.send_signal(signal.SIGTERM)  # test_serving_shutdown.py)
        sender.join(timeout=30)
        assert answer.get("status") == 200, answer
        assert same_answer(answer["body"]["items"], rec.recommend([1, 2, 3], k=3))
        assert proc.wait(timeout=30) == 0  # a graceful stop is a normal end (uvicorn alone re-raised the signal)
        with pytest.raises(OSError):
            request(port, "GET", "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


# ------------------------------------------------------------------------------------------------ bench script
def test_the_serving_benchmark_runs_its_parts_at_tiny_scale(rec, server, ckpt):
    from llmrec.data.dataset import ProcessedDataset

    script = load_bench_script("serving")
    args = script.parse_args(["load", "--smoke", "--ckpt", str(ckpt)])
    assert (args.requests, args.concurrency, args.max_users, args.write) == (24, 4, 20, False)
    with pytest.raises(SystemExit):
        script.parse_args(["all", "--smoke", "--write"])  # smoke numbers are never recorded

    data = ProcessedDataset.load(ckpt.parent / "data")
    samples = script.final_samples(data, None)
    test = data.split("test")
    assert len(samples) == test["user_id"].nunique() == 3
    for (past, target), (_, row) in zip(samples, test.loc[test.groupby("user_id")["position"].idxmax()]
                                        .sort_values("user_id").iterrows()):
        assert past[-10:] == list(row["history"]) and target == row["target"]
    result = script.full_catalog(rec, samples)
    by_hand_encoder = np.mean([t in rec.retrieve(p, n=10) for p, t in samples])  # faiss top 10, history out
    ranks = [[i["id"] for i in rec.recommend(p, k=10)] for p, _ in samples]
    by_hand_rerank = np.mean([t in r for (_, t), r in zip(samples, ranks)])
    assert result["encoder"]["hr@10"] == pytest.approx(by_hand_encoder)
    assert result["rerank"]["hr@10"] == pytest.approx(by_hand_rerank)
    assert result["n_users"] == 3 and result["retrieve_n"] == rec.retrieve_n

    bodies = script.request_bodies(data, 6)
    assert len({tuple(b["history"]) for b in bodies}) == 6
    run = script.drive(server.port, bodies, 3)
    load = script.summarize(run, rec.recommend_many([b["history"] for b in bodies], k=10))
    assert (load["requests"], load["errors"], load["mismatches"]) == (6, 0, 0) and load["rps"] > 0
    broken = [list(reversed(a)) for a in run["answers"]]
    assert script.summarize({**run, "answers": broken}, [a for a in run["answers"]])["mismatches"] > 0
