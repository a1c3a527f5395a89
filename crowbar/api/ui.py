"""Serves the web UI: the static files of crowbar/web/static under /ui (the pages call /api/v2
like the CLI does; docs/ui.md), with `/` redirecting there. The files are data, not code: this
module reads the directory and imports nothing from the clients' floor. `make web` puts the
third-party scripts (Cytoscape.js, ELK) under static/vendor/."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[1] / "web" / "static"
# Everything comes from this server; no page may be framed (clickjacking) or send data elsewhere.
# Styles: 'unsafe-inline' for the styles Cytoscape.js sets on its own elements.
HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


class UiFiles(StaticFiles):
    """StaticFiles with the UI's security headers; pages are revalidated, not cached stale."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(HEADERS)
        response.headers["cache-control"] = "no-cache"
        return response


def mount(app: FastAPI) -> None:
    app.mount("/ui", UiFiles(directory=STATIC, html=True, check_dir=False), name="ui")

    @app.get("/", include_in_schema=False)
    def root():
        return Response(status_code=307, headers={"location": "/ui/"})
