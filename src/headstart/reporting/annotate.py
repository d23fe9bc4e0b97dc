"""``predict --annotate OUT_DIR``: each image saved with its top-k labels drawn on it, and a contact sheet.

The Dogs tutorial's figure (the photo with its top-3 breeds as the title), for every image:
``OUT_DIR/NNNN_name.jpg`` plus ``OUT_DIR/index.html`` (all of them on one page) and
``OUT_DIR/predictions.csv``. The user's images are only read; copies are written to OUT_DIR.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image, ImageDraw, ImageFont

from headstart.core.errors import BadImageError
from headstart.core.io import atomic_path, write_rows
from headstart.core.progress import NullProgress, ProgressSink
from headstart.data.images import decode_image, read_bytes
from headstart.reporting.html import write_page

MAX_SIDE = 512


@functools.cache
def _font_file(path: str | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        if path:
            return ImageFont.truetype(path, size)
    except OSError:
        pass
    return ImageFont.load_default()


def _font(size: int, text: str = "") -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's own files (always present, wide coverage), or an installed
    CJK font when ``text`` needs glyphs DejaVu lacks."""
    from headstart.reporting.plots import font_file_for

    return _font_file(font_file_for(text) or font_file_for(""), size)


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Shorten ``text`` with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def annotate_image(path: str, predictions: Sequence[dict[str, Any]]) -> Image.Image:
    """The photo (longest side 512 px) under a band listing the top-k labels with probability bars."""
    img = decode_image(read_bytes(path), min_side=MAX_SIDE)
    img.thumbnail((MAX_SIDE, MAX_SIDE))
    width = max(img.width, 320)
    size = max(14, round(width / 20))  # legible when the contact sheet shows it at half size
    line = size + 10
    band = 10 + line * max(1, len(predictions))
    canvas = Image.new("RGB", (width, band + img.height), "white")
    canvas.paste(img, ((width - img.width) // 2, band))
    draw = ImageDraw.Draw(canvas)
    font = _font(size)
    for rank, p in enumerate(predictions):
        y = 6 + rank * line
        prob = float(p["probability"])
        bar = int((width - 16) * prob)
        draw.rectangle([8, y, 8 + (width - 16), y + line - 4], fill="#eef1f4")
        draw.rectangle([8, y, 8 + bar, y + line - 4], fill="#b7e1c1" if rank == 0 else "#d6e0ee")
        label = f"{rank + 1}. {p['label']}"
        pct = f"{prob:.1%}"
        pct_w = draw.textlength(pct, font=font)
        label_font = _font(size, label)
        draw.text(
            (14, y + 2), _fit(draw, label, label_font, int(width - 40 - pct_w)), fill="#111", font=label_font
        )
        draw.text((width - 14 - pct_w, y + 2), pct, fill="#111", font=font)
    return canvas


def _output_name(i: int, path: str) -> str:
    """Numbered, so two ``img.jpg`` from different folders never overwrite each other."""
    return f"{i:04d}_{Path(path).stem[:80] or 'image'}.jpg"


def _annotate_one(i: int, result: dict[str, Any], out: Path) -> tuple[str, str | None]:
    """Save image ``i`` with its predictions drawn on; returns (file name or "", error or None)."""
    error = result.get("error")
    if not result["predictions"]:
        return "", error
    try:
        name = _output_name(i, result["path"])
        with atomic_path(out / name) as tmp:
            annotate_image(result["path"], result["predictions"]).save(tmp, format="JPEG", quality=88)
        return name, error
    except (BadImageError, OSError) as e:
        return "", getattr(e, "reason", str(e))


def annotate_predictions(
    results: Sequence[dict[str, Any]],
    out_dir: str | Path,
    title: str = "",
    progress: ProgressSink | None = None,
) -> Path:
    """Write the annotated images, ``predictions.csv`` and the ``index.html`` contact sheet."""
    progress = progress or NullProgress()
    progress.start("annotating", len(results))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tiles, rows, failed = [], [], []
    for i, r in enumerate(results):
        name, error = _annotate_one(i, r, out)
        progress.advance()
        if error:
            failed.append((r["path"], error))
        for rank, p in enumerate(r["predictions"], start=1):
            rows.append([r["path"], rank, p["label"], f"{p['probability']:.6f}", name])
        if name:
            first = r["predictions"][0]
            tiles.append(
                {
                    "path": r["path"],
                    "name": Path(r["path"]).name,
                    "href": quote(name),
                    "label": first["label"],
                    "probability": first["probability"],
                }
            )
    progress.finish()
    write_rows(out / "predictions.csv", ["path", "rank", "label", "probability", "annotated"], rows)
    return write_page(
        out / "index.html",
        "contact_sheet.html",
        title=title or "headstart predictions",
        tiles=tiles,
        top_k=max((len(r["predictions"]) for r in results), default=0),
        failed=failed,
    )
