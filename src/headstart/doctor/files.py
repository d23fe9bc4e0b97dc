"""Per-file checks: does each image decode, and is it tiny, a sliver or huge; its perceptual hash.

Every check only reads the file.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from headstart.core.errors import BadImageError
from headstart.core.progress import NullProgress, ProgressSink
from headstart.core.system import usable_core_count
from headstart.data.images import accepted_formats, decode_image, read_bytes

MIN_SIDE = 32  # pixels: smaller images carry almost nothing once resized to the backbone's input
MAX_ASPECT = 10.0  # longer side / shorter side beyond which the centre crop keeps a sliver


def dhash(img: Image.Image, size: int = 8) -> int:
    """Difference hash: 64 bits of 'is this pixel brighter than its right neighbour'."""
    small = np.asarray(img.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


@dataclass
class FileCheck:
    """What looking at one file found: a problem (with severity) or nothing; size and dHash."""

    path: str
    problem: str | None = None
    severity: str | None = None  # "error": unusable, train skips it; "warning": used, but look at it
    width: int | None = None
    height: int | None = None
    dhash: int | None = None


def check_file(path: str, min_side: int = MIN_SIDE, max_aspect: float = MAX_ASPECT) -> FileCheck:
    """Read and fully decode one file (small, via JPEG draft mode) and judge it."""
    out = FileCheck(path)
    try:
        data = read_bytes(path)
        width = height = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(io.BytesIO(data), formats=accepted_formats()) as header:
                    width, height = header.size
        except Exception:  # noqa: BLE001 - decode_image below names the reason
            pass
        img = decode_image(data, min_side=64)
    except BadImageError as e:
        out.problem, out.severity = e.reason, "error"
        return out
    w, h = (width, height) if width and height else img.size
    out.width, out.height = w, h
    out.dhash = dhash(img)
    if min(w, h) < min_side:
        out.problem, out.severity = f"tiny: {w}x{h} px (under {min_side} px)", "warning"
    elif max(w, h) / max(min(w, h), 1) > max_aspect:
        out.problem, out.severity = f"extreme aspect ratio: {w}x{h} (over {max_aspect:g}:1)", "warning"
    elif Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
        out.problem, out.severity = (
            f"huge: {w}x{h} px, over Pillow's decompression-bomb warning limit",
            "warning",
        )
    return out


def check_files(
    paths: Sequence[str], workers: int | None = None, progress: ProgressSink | None = None
) -> list[FileCheck]:
    """``check_file`` on every path in a thread pool (Pillow decodes outside the GIL)."""
    progress = progress or NullProgress()
    progress.start("checking files", len(paths))
    out: list[FileCheck] = []
    with ThreadPoolExecutor(workers or usable_core_count()) as pool:
        for check in pool.map(check_file, paths):
            out.append(check)
            progress.advance(1)
    progress.finish()
    return out
