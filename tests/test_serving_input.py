"""Odd input to the HTTP API gets the documented one-line answer (issue 20, defect 8), against a real uvicorn server
on 127.0.0.1: a title too long or not valid Unicode is named as the title it is (not "Input should be a valid
integer"), a JSON body sent as `text/plain` (or without a Content-Type) is told the content type expected (415,
not "Input should be a valid dictionary"), and a body nested 100,000 deep or not UTF-8 gets `{"detail": "malformed
JSON body: ..."}` (400, not "There was an error parsing the body"); the server answers the next request as usual."""

from __future__ import annotations

import http.client
import json

import pytest
from test_serving_support import ServerThread, request, same_answer

from llmrec.serving.server import Limits, body_error_message, create_app, json_content_type, validation_message

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # `rec` comes from conftest.py


@pytest.fixture(scope="module")
def server(rec):
    srv = ServerThread(create_app(rec, Limits(max_body_bytes=1 << 20), None, 4, 1.0))
    yield srv
    srv.stop()


def post(port: int, body: bytes, content_type: str | None = "application/json", path: str = "/recommend"):
    """POST raw bytes with exactly this Content-Type header (None: no such header); (status, parsed JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest("POST", path)
        if content_type is not None:
            conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def still_answers(server, rec) -> None:
    status, body = request(server.port, "POST", "/recommend", {"history": [1, 2], "k": 3})
    assert status == 200 and same_answer(body["items"], rec.recommend([1, 2], k=3))


TITLE_TOO_LONG = "a title of 501 characters is too long (at most 500 characters)"
NOT_UNICODE = "a title that is not valid Unicode (a lone surrogate such as \\ud800 without its pair); send valid text"
BAD_TITLES = [  # (path, raw body, the whole message)
    ("/recommend", json.dumps({"history": ["x" * 501]}).encode(), f"history[0]: {TITLE_TOO_LONG}"),
    ("/recommend", json.dumps({"history": [1], "candidates": [2, "y" * 501]}).encode(),
     f"candidates[1]: {TITLE_TOO_LONG}"),
    ("/recommend/batch", json.dumps({"requests": [{"history": [1]}, {"history": ["z" * 501]}]}).encode(),
     f"requests[1].history[0]: {TITLE_TOO_LONG}"),
    ("/recommend", b'{"history": [1, "Red \\ud800 River"]}', f"history[1]: {NOT_UNICODE}"),  # escaped in JSON
    ("/recommend", b'{"history": ["\xed\xa0\x80"]}', f"history[0]: {NOT_UNICODE}"),  # the surrogate's UTF-8 bytes
]


@pytest.mark.parametrize("path,body,message", BAD_TITLES, ids=[m[:30] for *_, m in BAD_TITLES])
def test_a_title_too_long_or_not_unicode_is_named_as_a_title(server, rec, path, body, message):
    assert post(server.port, body, path=path) == (422, {"detail": message})
    still_answers(server, rec)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "text/json", None])
def test_a_body_not_sent_as_json_is_told_the_content_type_expected(server, rec, content_type):
    status, body = post(server.port, json.dumps({"history": [1, 2]}).encode(), content_type)
    given = f"Content-Type {content_type!r}" if content_type else "no Content-Type header"
    assert (status, body) == (415, {"detail": f"{given}: the request body must be JSON, sent with the header "
                                              f"`Content-Type: application/json`"})
    still_answers(server, rec)


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/vnd.llmrec+json"])
def test_every_json_content_type_is_read(server, rec, content_type):
    status, body = post(server.port, json.dumps({"history": [1, 2], "k": 3}).encode(), content_type)
    assert status == 200 and same_answer(body["items"], rec.recommend([1, 2], k=3))


NESTED = b"[" * 100_000 + b"]" * 100_000
UNPARSABLE = [  # (raw body, the whole message)
    (NESTED, ("malformed JSON body: nested too deeply to parse (a request nests at most 4 levels: "
              '{"requests": [{"history": [...]}]})')),
    (b'{"history": ' + NESTED + b"}", None),
    (b"[" * 100_000, None),  # unterminated, and too deep to find out
    (b'{"history": ["\xff"]}', "malformed JSON body: not UTF-8 text (byte 0xff at position 14)"),
]


@pytest.mark.parametrize("body,message", UNPARSABLE, ids=["nested", "nested-history", "unterminated", "not-utf8"])
def test_a_body_too_deep_or_not_utf8_gets_the_documented_one_line_format(server, rec, body, message):
    status, answer = post(server.port, body)
    assert status == 400 and set(answer) == {"detail"} and "\n" not in answer["detail"]
    assert answer["detail"] == (message or UNPARSABLE[0][1])
    still_answers(server, rec)


def test_other_http_errors_keep_their_answers(server):
    assert request(server.port, "GET", "/nowhere") == (404, {"detail": "Not Found"})
    assert request(server.port, "GET", "/recommend") == (405, {"detail": "Method Not Allowed"})
    assert post(server.port, b'{"history": [1,')[0] == 400  # a JSON syntax error: FastAPI's own json_invalid


def test_messages_by_hand():
    too_long = [{"type": "int_type", "loc": ("body", "history", 0, "int"), "msg": "Input should be a valid integer",
                 "input": "x" * 501},
                {"type": "string_too_long", "loc": ("body", "history", 0, "constrained-str"),
                 "msg": "String should have at most 500 characters", "input": "x" * 501, "ctx": {"max_length": 500}}]
    assert validation_message(too_long) == (422, f"history[0]: {TITLE_TOO_LONG}")
    alone = [{"type": "string_too_long", "loc": ("query", "query"), "input": "q" * 201, "ctx": {"max_length": 200}}]
    assert validation_message(alone) == (422, "query: text of 201 characters is too long (at most 200 characters)")
    listed = [{"type": "int_type", "loc": ("body", "history", 0, "int"), "input": list(range(500))},
              {"type": "string_type", "loc": ("body", "history", 0, "constrained-str"), "input": list(range(500))}]
    cut = ("history[0]: got [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16..., expected an item id "
           "(integer) or an exact title (string)")
    assert validation_message(listed) == (422, cut)  # a 500-item value is cut: the line stays short
    assert body_error_message(ValueError("x")) == "malformed JSON body: could not parse it (ValueError)"
    assert [json_content_type(v) for v in (b"application/json", b"application/problem+json; charset=utf-8",
                                           b"text/plain", b"application/jsonx", b"", None)] == \
        [True, True, False, False, False, False]
