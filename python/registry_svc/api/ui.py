"""The web dashboard (`/ui`): plain HTML, CSS and JavaScript shipped in the package
(`registry_svc/ui/`), no build step, no external fonts or CDNs. The files need no token;
the page asks for one and calls the API with it, so it shows only what that token may
see."""

from __future__ import annotations

import functools
from pathlib import Path

from robyn import Response

from registry_svc import auth
from registry_svc.api import Call, Doc, Route
from registry_svc.errors import ApiError
from registry_svc.http import path_param

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}  # fmt: skip
# Scripts and styles from this origin only: an instance's fields (URLs, tags, reasons) are
# data, never markup, even if one were to slip past escaping.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


@functools.cache
def asset(name: str) -> tuple[bytes, str]:
    """A file of the dashboard: (bytes, content type); ApiError 404 for anything else."""
    path = UI_DIR / name
    if "/" in name or name.startswith(".") or path.suffix not in CONTENT_TYPES or not path.is_file():
        raise ApiError(404, f"no such file in the dashboard: {name}")
    return path.read_bytes(), CONTENT_TYPES[path.suffix]


def serve(name: str) -> Response:
    body, content_type = asset(name)
    return Response(status_code=200, headers={"content-type": content_type, **SECURITY_HEADERS}, description=body)


def index(call: Call) -> Response:
    return serve("index.html")


def ui_file(call: Call) -> Response:
    return serve(path_param(call.request, "name"))


def favicon(call: Call) -> Response:
    """Browsers ask every origin for `/favicon.ico`: the dashboard's icon (SVG)."""
    return serve("favicon.svg")


ROUTES = [
    Route("get", "/ui", index, auth.PUBLIC, Doc("The dashboard", {200: None}, content_types=("text/html",))),
    Route("get", "/ui/:name", ui_file, auth.PUBLIC, Doc(
        "A file of the dashboard", {200: None}, errors=(404,),
        content_types=("text/html", "text/javascript", "text/css", "image/svg+xml"),
    )),
    Route("get", "/favicon.ico", favicon, auth.PUBLIC, Doc(
        "The dashboard's icon (SVG), where browsers look for it", {200: None}, content_types=("image/svg+xml",)
    )),
]  # fmt: skip
