"""The review page: one HTML document, its CSS and script inline (nothing fetched from a network).

Rendered by a Jinja2 environment that escapes every value; the run's facts reach the script as
JSON (``tojson``), and the script puts text on the page only through ``textContent``.
"""

from __future__ import annotations

import functools
from typing import Any

import jinja2


@functools.cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("headstart.review", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def review_page(meta: dict[str, Any]) -> str:
    """The page: queues on the left, the photo under review, its evidence, the keys."""
    return environment().get_template("review.html").render(meta=meta)
