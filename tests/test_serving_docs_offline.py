"""`/docs` and `/redoc` work offline (issue 20, defect 7): both pages load their scripts, styles and icon from the
server itself (served from the installed `fastapi-offline`), never from a CDN; and in a real headless browser
(Debian's chromium) with every host but 127.0.0.1 blocked, Swagger UI renders the API's operations and ReDoc its
descriptions, where FastAPI's default CDN pages stay blank (the control that proves the network is blocked)."""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_serving_support import ServerThread, request

from llmrec.base.errors import ConfigError
from llmrec.serving import docs
from llmrec.serving.server import TOKEN_ENV, Limits, create_app

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # `rec` comes from conftest.py
TOKEN = "docs-test-token"


@pytest.fixture(scope="module")
def server(rec):
    srv = ServerThread(create_app(rec, Limits(), TOKEN))  # with a token: the docs stay open, the API does not
    yield srv
    srv.stop()


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """GET 127.0.0.1:`port``path`: (status, content type, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()
    finally:
        conn.close()


def loaded_urls(html: str) -> list[str]:
    """Every URL a docs page makes the browser load: src/href attributes, Swagger UI's `url: '...'` (the spec) and
    ReDoc's `spec-url`."""
    return re.findall(r'(?:src|href|spec-url)="([^"]*)"', html) + re.findall(r"\burl: '([^']*)'", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_urls_of_this_server_and_those_answer(server, page):
    status, kind, body = get(server.port, page)
    html = body.decode()
    assert status == 200 and kind.startswith("text/html")
    urls = loaded_urls(html)
    assert "/openapi.json" in urls and any(u.startswith(docs.ASSETS_URL) for u in urls)
    assert "http" not in html.replace("window.location.origin", "")  # no absolute URL: no CDN, no fonts
    folder = docs.assets_folder()
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        status, kind, content = get(server.port, url)
        assert status == 200, url
        if url.startswith(docs.ASSETS_URL):
            name = url.rsplit("/", 1)[1]
            assert kind == docs.ASSETS[name] and content == (folder / name).read_bytes()


def test_the_assets_are_a_fixed_list_and_only_the_docs_are_open_without_the_token(server):
    assert get(server.port, f"{docs.ASSETS_URL}/../../setup.cfg")[0] in (401, 404)
    status, _, body = get(server.port, f"{docs.ASSETS_URL}/secrets.txt")
    assert status == 401  # not a docs asset: behind the token like the API
    status, _, body = get(server.port, f"{docs.ASSETS_URL}/secrets.txt", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 404 and b"no docs asset 'secrets.txt'" in body
    for path in sorted(docs.DOCS_PATHS):
        assert get(server.port, path)[0] == 200, path
    assert request(server.port, "POST", "/recommend", {"history": [1]})[0] == 401
    assert TOKEN_ENV == "LLMREC_TOKEN"


def test_behind_a_proxy_prefix_the_pages_point_under_it(rec):
    import asyncio

    app = create_app(rec, Limits())
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    for page in ("/docs", "/redoc"):
        sent.clear()
        scope = {"type": "http", "method": "GET", "path": page, "raw_path": page.encode(), "root_path": "/api",
                 "query_string": b"", "headers": [], "http_version": "1.1", "scheme": "http",
                 "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}
        asyncio.run(app(scope, receive, send))
        html = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()
        assert all(u.startswith("/api/") for u in loaded_urls(html)), loaded_urls(html)


def test_a_missing_assets_package_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setattr(docs.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"need the `fastapi-offline` package, .*pip install 'llmrec\[serve\]'$"):
        docs.assets_folder()

    (tmp_path / "static").mkdir()
    monkeypatch.setattr(docs.importlib.util, "find_spec",
                        lambda name: SimpleNamespace(submodule_search_locations=[str(tmp_path)]))
    with pytest.raises(ConfigError, match=r"lacks static/swagger-ui-bundle.js; reinstall it"):
        docs.assets_folder()


# ------------------------------------------------------------------------------------------------ a real browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered(url: str, profile: Path) -> str:
    """The DOM of `url` after its scripts ran, in headless chromium with the network blocked: every host name but
    127.0.0.1 resolves to nothing and every request that is not to 127.0.0.1 goes to a dead proxy."""
    command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
               "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
               "--virtual-time-budget=20000", "--dump-dom", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_a_headless_browser_without_network_renders_both_pages(server, tmp_path):
    paths = list(request(server.port, "GET", "/openapi.json")[1]["paths"])
    assert {"/recommend", "/recommend/batch", "/items", "/health"} <= set(paths)
    swagger = rendered(f"http://127.0.0.1:{server.port}/docs", tmp_path / "profile")
    assert re.findall(r'class="opblock-summary-path" data-path="([^"]*)"', swagger) == paths
    redoc = rendered(f"http://127.0.0.1:{server.port}/redoc", tmp_path / "profile")
    assert all(f">{path}<" in redoc for path in paths)  # absent from the page until ReDoc rendered the spec

    # the control: FastAPI's default pages, whose scripts come from a CDN, stay blank in the same browser
    from fastapi import FastAPI

    bare = FastAPI(title="control")

    @bare.get("/ping")
    async def ping() -> dict:
        return {}

    control = ServerThread(bare)
    try:
        assert 'data-path="/ping"' not in rendered(f"http://127.0.0.1:{control.port}/docs", tmp_path / "profile")
        assert "ping" not in rendered(f"http://127.0.0.1:{control.port}/redoc", tmp_path / "profile").lower()
    finally:
        control.stop()
