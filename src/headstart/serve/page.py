"""The server's own pages: the web page at ``/`` (``export.web.classify_page``, the web export's
page) and the local API docs page at ``/docs``.

Templates live in ``serve/templates`` and extend the report's shell (``reporting/templates/
base.html``: its CSS, nothing fetched from a network), rendered by a Jinja2 environment that
escapes every value.
"""

from __future__ import annotations

from typing import Any

import jinja2

from headstart.export.web import classify_page, templates_over_shell


def environment() -> jinja2.Environment:
    """Templates of this package first, then the report's shell they extend."""
    return templates_over_shell("headstart.serve")


def index_page(needs_key: bool) -> str:
    """The page to try the model: pick or drop photos or use the webcam, see each with its top-k
    as bars (the web export's page, posting to the API instead of running the model itself)."""
    return classify_page("headstart serve", "serve", needs_key=needs_key)


def docs_page(openapi: dict[str, Any]) -> str:
    """Every endpoint with its summary, and a link to the full OpenAPI schema."""
    routes = [
        {"method": method.upper(), "path": path, "summary": op.get("summary", "")}
        for path, ops in openapi.get("paths", {}).items()
        for method, op in ops.items()
    ]
    return environment().get_template("api_docs.html").render(title="headstart serve: API", routes=routes)
