"""The HTML shell every page shares (run report, doctor page, map page, contact sheet).

Pages are Jinja2 templates in ``reporting/templates/``: ``base.html`` holds the shell (the CSS
of ``shell.css`` and the page-check script of ``page_check.js``) and each page extends it.
Why Jinja2: it escapes every value by default (autoescape is on), and class and file names
are data that may hold ``<``, ``&`` or quotes; the markup and CSS can be edited without
touching Python. A value is inserted unescaped only when it is ``Markup`` (HTML already built
from escaped parts, such as an embedded figure).

Rules for every page: self-contained (images as data: URIs or files next to the page, CSS and
script inline, nothing fetched from a network), and a ``<p id="page-check">`` that the script
fills in with how many images loaded, so a browser test can read it.
"""

from __future__ import annotations

import base64
import functools
import html
import io
from pathlib import Path

import jinja2
from markupsafe import Markup

from headstart.core.errors import BadImageError
from headstart.core.io import write_text
from headstart.data.images import decode_image, read_bytes

THUMB = 112  # px, longest side of embedded thumbnails


def esc(text: object) -> str:
    """``text`` escaped for HTML text and attribute values (quotes included)."""
    return html.escape(str(text), quote=True)


def thumbnail_uri(path: str, size: int = THUMB) -> str | None:
    """A small JPEG of the user's image as a data: URI (the page stays one file), or None when
    it cannot be read now."""
    try:
        img = decode_image(read_bytes(path), min_side=2 * size)
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=78)
    except (BadImageError, OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@functools.cache
def environment() -> jinja2.Environment:
    """The template environment: templates from this package, every value escaped."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("headstart.reporting", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a missing value is a bug, never an empty string
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **context: object) -> str:
    """The page ``template`` (a file in ``reporting/templates/``) filled in with ``context``."""
    return environment().get_template(template).render(**context)


def page(title: str, body: str) -> str:
    """The shell around ``body``, HTML already built (its names escaped with ``esc``)."""
    return render("page.html", title=title, body=Markup(body))


def write_page(path: str | Path, template: str, **context: object) -> Path:
    """Render ``template`` and write it to ``path`` atomically.

    A file name that is not valid UTF-8 is written as ``\\udcXX`` text rather than failing.
    """
    return write_text(path, render(template, **context), errors="backslashreplace")
