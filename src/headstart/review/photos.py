"""The run's photos as the page shows them: re-encoded JPEGs, made when first asked for and cached
under ``RUN/review_cache`` (never in the data folder).

Every photo is decoded by headstart's own reader (regular files only, size and pixel limits,
upright by its EXIF orientation) and written as a JPEG no larger than ``THUMB_SIDE`` (the strips)
or ``LARGE_SIDE`` (the photo under review), so the browser gets one format it shows, whatever the
file was. The cache key holds the file's size and modification time: a changed photo is redone.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Literal

from headstart.core.io import write_bytes
from headstart.data.images import decode_image, read_bytes
from headstart.review.run import RunImage

CACHE_DIR = "review_cache"
THUMB_SIDE = 224
LARGE_SIDE = 1400
Size = Literal["thumb", "large"]
SIDES: dict[str, int] = {"thumb": THUMB_SIDE, "large": LARGE_SIDE}


def cached_photo_path(run_dir: Path, image: RunImage, size: Size) -> Path:
    """Where the ``size`` JPEG of ``image`` is cached (the name depends on the file's state)."""
    st = os.stat(image.file)
    key = f"{image.file}\0{st.st_size}\0{st.st_mtime_ns}\0{SIDES[size]}"
    name = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return run_dir / CACHE_DIR / size / f"{name}.jpg"


def photo(run_dir: Path, image: RunImage, size: Size) -> Path:
    """The cached ``size`` JPEG of ``image``, made now if it is not there yet.

    Raises ``BadImageError`` (or ``OSError``) when the file cannot be read as an image.
    """
    path = cached_photo_path(run_dir, image, size)
    if path.is_file():
        return path
    side = SIDES[size]
    img = decode_image(read_bytes(image.file), min_side=side)
    img.thumbnail((side, side))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=85 if size == "thumb" else 92)
    return write_bytes(path, buffer.getvalue())
