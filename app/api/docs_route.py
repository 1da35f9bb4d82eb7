"""The `/docs` page with Swagger UI served from the `swagger-ui-py` package, not a CDN.

FastAPI's own page loads Swagger UI's script and stylesheet from jsDelivr, so it is blank
wherever the browser cannot reach it (an offline laptop, a locked-down network). Here
the page names only paths of this app, and those paths serve the package's files. Only
the files the page needs are served, by a fixed list: no path from the request ever
reaches the file system.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from app.core.errors import ApiError

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
#: The assets the page loads, and their content types.
ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
#: Assets are named by the package version, so a browser may keep them for a day.
_CACHE = "public, max-age=86400"


def assets_dir() -> Path:
    """The folder `swagger-ui-py` ships Swagger UI's built files in (its `static`).

    Found without importing the package: its `__init__` loads Jinja and YAML for its
    own page templates (60 ms of an ingress cold start), and only the files are wanted.
    """
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def docs_router(openapi_url: str, title: str) -> APIRouter:
    """The docs page and its assets (no auth: the page shows the public schema only)."""
    router = APIRouter(include_in_schema=False)
    folder = assets_dir()

    @router.get(DOCS_PATH)
    def docs_page() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - API docs",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
            # Swagger UI would otherwise load a badge from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @router.get(ASSETS_PATH + "/{name}")
    def docs_asset(name: str) -> FileResponse:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise ApiError(404, "not_found", f"no docs asset {name!r}")
        return FileResponse(folder / name, media_type=media_type, headers={"Cache-Control": _CACHE})

    return router
