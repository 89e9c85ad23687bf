"""The interactive API docs (`/docs`: Swagger UI, `/redoc`: ReDoc) served offline, from this machine alone.

FastAPI's own docs pages load Swagger UI's and ReDoc's JavaScript and CSS from a CDN (and ReDoc's fonts from
Google), so on a machine without internet they stay blank. The same files ship in the `fastapi-offline` package
(MIT; it bundles swagger-ui, Apache-2.0, and redoc, MIT), a dependency of the `serve` extra: `add_offline_docs`
serves them from that installed distribution at `/docs/assets/<file>` and builds both pages with FastAPI's
`get_swagger_ui_html` / `get_redoc_html` pointing at them. Only the package's files are used, not its app factory.
Swagger UI's validator badge (which would call validator.swagger.io) is switched off.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time.
import importlib.util
from pathlib import Path
from typing import Any

from llmrec.base.errors import ConfigError

ASSETS_PACKAGE = "fastapi_offline"
ASSETS_URL = "/docs/assets"
ASSETS: dict[str, str] = {  # file -> media type: every file the two pages load
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
ASSET_PATHS = frozenset(f"{ASSETS_URL}/{name}" for name in ASSETS)
DOCS_URL, REDOC_URL, OAUTH2_REDIRECT_URL = "/docs", "/redoc", "/docs/oauth2-redirect"
DOCS_PATHS = frozenset({DOCS_URL, REDOC_URL, OAUTH2_REDIRECT_URL}) | ASSET_PATHS


def assets_folder() -> Path:
    """The folder of the installed `fastapi-offline` that holds the docs' scripts, styles and icon; a one-line
    `ConfigError` when the package is missing or lacks one of them."""
    spec = importlib.util.find_spec(ASSETS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the API docs (/docs, /redoc) need the `fastapi-offline` package, which ships their "
                          "scripts and styles for use without internet: pip install 'llmrec[serve]'")
    for location in spec.submodule_search_locations:
        folder = Path(location) / "static"
        missing = [name for name in ASSETS if not (folder / name).is_file()]
        if not missing:
            return folder
    raise ConfigError(f"the installed `fastapi-offline` ({', '.join(spec.submodule_search_locations)}) lacks "
                      f"static/{missing[0]}; reinstall it: pip install --force-reinstall fastapi-offline")


def add_offline_docs(app: Any) -> None:
    """Add `/docs`, `/docs/oauth2-redirect`, `/redoc` and `/docs/assets/<file>` to `app`, a FastAPI built with
    `docs_url=None, redoc_url=None`. Every URL the pages load is on this server (behind a proxy's `root_path`
    too)."""
    from fastapi import Request
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

    folder = assets_folder()  # checked when the app is built, not when a browser first asks

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        at = root(request)
        return get_swagger_ui_html(openapi_url=f"{at}{app.openapi_url}", title=f"{app.title} - Swagger UI",
                                   oauth2_redirect_url=f"{at}{OAUTH2_REDIRECT_URL}",
                                   swagger_js_url=f"{at}{ASSETS_URL}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{at}{ASSETS_URL}/swagger-ui.css",
                                   swagger_favicon_url=f"{at}{ASSETS_URL}/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        at = root(request)
        return get_redoc_html(openapi_url=f"{at}{app.openapi_url}", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{at}{ASSETS_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{at}{ASSETS_URL}/favicon.png", with_google_fonts=False)

    @app.get(ASSETS_URL + "/{name}", include_in_schema=False)
    async def asset(name: str) -> Any:
        if name not in ASSETS:  # a fixed list: no path from the request ever reaches the file system
            return JSONResponse({"detail": f"no docs asset {name!r}; the docs load {', '.join(ASSETS)}"},
                                status_code=404)
        return FileResponse(folder / name, media_type=ASSETS[name],
                            headers={"cache-control": "public, max-age=86400"})
