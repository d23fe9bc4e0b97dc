"""Decoding any image a user may have into RGB, and the backbone's own eval preprocessing.

Every failure becomes a :class:`BadImageError` with a short reason, so one bad file is
reported and skipped instead of ending a run.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from headstart.core.errors import BadImageError


class DataConfig(TypedDict, total=False):
    """A backbone's preprocessing, as timm resolves it (``resolve_model_data_config``) and a
    bundle saves it: what every pixel path (extraction, training, export) reads."""

    input_size: Sequence[int]  # channels, height, width
    interpolation: str
    mean: Sequence[float]
    std: Sequence[float]
    crop_pct: float
    crop_mode: str


IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# The only decoders a file reaches, whatever its name: never PostScript (Ghostscript), PDF, SVG...
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP", "TIFF")
DEFAULT_MAX_FILE_MB = 100
DEFAULT_MAX_PIXELS = 100_000_000  # a 10,000 x 10,000 photo; a larger header is a bomb until shown otherwise


def is_image_name(path: str | Path) -> bool:
    """True when the file name has an image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def max_file_bytes() -> int:
    """The largest file headstart reads: ``$HEADSTART_MAX_FILE_MB`` megabytes (default 100)."""
    return int(float(os.environ.get("HEADSTART_MAX_FILE_MB") or DEFAULT_MAX_FILE_MB) * 1_000_000)


def max_image_pixels() -> int:
    """The most pixels an image may declare before it is decoded: ``$HEADSTART_MAX_PIXELS``."""
    return int(float(os.environ.get("HEADSTART_MAX_PIXELS") or DEFAULT_MAX_PIXELS))


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a special file"


def _open_regular(path: str | Path) -> int:
    """A descriptor of ``path`` opened without blocking (a FIFO with no writer would block a plain
    open forever); anything but a regular file is refused before a byte is read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.EOPNOTSUPP):  # a socket (or a link to one)
            try:
                raise BadImageError(f"not a regular file: {_kind(os.stat(path).st_mode)}") from e
            except OSError:
                pass
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        raise BadImageError(f"not a regular file: {_kind(st.st_mode)}")
    return fd


def read_bytes(path: str | Path, max_bytes: int | None = None) -> bytes:
    """Read a whole regular file, turning OS errors into a reason a person understands.

    Rule: only regular files are read (pipes, sockets and devices are skipped without blocking),
    and never more than ``max_bytes`` (default ``max_file_bytes()``).
    """
    limit = max_file_bytes() if max_bytes is None else max_bytes
    try:
        fd = _open_regular(path)
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise BadImageError(
                    f"too large: {size / 1e6:.3g} MB, over the {limit / 1e6:.3g} MB limit (HEADSTART_MAX_FILE_MB)"
                )
            data = f.read(limit + 1)
    except PermissionError as e:
        raise BadImageError("unreadable: permission denied") from e
    except IsADirectoryError as e:
        raise BadImageError("is a directory, not a file") from e
    except FileNotFoundError as e:
        raise BadImageError("file not found (deleted or a broken link?)") from e
    except OSError as e:
        raise BadImageError(f"unreadable: {e.strerror or e}") from e
    if len(data) > limit:
        raise BadImageError(f"too large: over the {limit / 1e6:.3g} MB limit (HEADSTART_MAX_FILE_MB)")
    return data


def _flatten_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _wide_to_rgb(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float pixels to 8-bit gray, in the image's own dtype or float32
    (never a float64 copy of the whole image): 16-bit values scaled by 1/257, wider ranges and
    floats stretched from their minimum to their maximum."""
    arr = np.asarray(img)
    hi = float(arr.max()) if arr.size else 0.0
    if img.mode == "F" or hi > 65535:
        lo = float(arr.min()) if arr.size else 0.0
        scaled = (arr.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / max(hi - lo, 1e-12))
    elif hi > 255:
        scaled = arr // 257
    else:
        scaled = arr
    gray = np.clip(scaled, 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha over white, 16-bit scaled, not clipped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        return _flatten_alpha(img)
    if mode.startswith("I") or mode == "F":
        return _wide_to_rgb(img)
    return img.convert("RGB")


def decode_image(data: bytes, min_side: int | None = None) -> Image.Image:
    """Decode bytes into an upright RGB image.

    ``min_side`` lets JPEG decoding skip detail the resize would throw away (Pillow's
    draft mode), which is much faster for large photos.
    """
    if not data:
        raise BadImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img: Image.Image = Image.open(io.BytesIO(data), formats=accepted_formats())
            _check_pixels(img)
            if min_side and img.format == "JPEG" and isinstance(img, ImageFile.ImageFile):
                img.draft("RGB", (min_side, min_side))
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return to_rgb(img)
    except BadImageError:
        raise
    except Image.DecompressionBombError as e:
        raise BadImageError("too large: over Pillow's decompression-bomb pixel limit") from e
    except UnidentifiedImageError as e:
        raise BadImageError("not an image Pillow can read (wrong extension or damaged)") from e
    except OSError as e:
        text = str(e)
        if "truncated" in text.lower():
            raise BadImageError("truncated image (file cut short)") from e
        raise BadImageError(f"damaged image: {text[:120]}") from e
    except Exception as e:  # noqa: BLE001 - any decoder failure is this one file's problem
        raise BadImageError(f"damaged image: {type(e).__name__}: {str(e)[:100]}") from e


@functools.cache
def accepted_formats() -> tuple[str, ...]:
    """``ACCEPTED_FORMATS`` this Pillow has (its plugins registered once, so MPO and WebP are known)."""
    Image.init()
    return tuple(f for f in ACCEPTED_FORMATS if f in Image.OPEN)


def _check_pixels(img: Image.Image) -> None:
    """Refuse a header that declares more pixels than ``max_image_pixels()`` before decoding
    (opening is lazy: only the header has been read)."""
    width, height = img.size
    limit = max_image_pixels()
    if width * height > limit:
        raise BadImageError(
            f"too large: {width} x {height} pixels, over the decompression-bomb limit of "
            f"{limit:,} (HEADSTART_MAX_PIXELS)"
        )


class Preprocessor:
    """The backbone's eval transform (resize, crop) from its timm data config, kept in PIL.

    Normalisation happens inside the exported network, so workers hand over small uint8
    arrays and the model does the float work.
    """

    def __init__(self, data_config: DataConfig) -> None:
        from timm.data import create_transform
        from torchvision import transforms as T

        self.data_config = data_config.copy()
        full = create_transform(**cast(dict[str, Any], self.data_config), is_training=False)
        steps = []
        for step in full.transforms:
            if isinstance(step, (T.ToTensor, T.Normalize)) or type(step).__name__ in (
                "MaybeToTensor",
                "ToNumpy",
                "ToTensor",
                "Normalize",
            ):
                break
            steps.append(step)
        self._steps = steps
        _, height, width = self.data_config["input_size"]
        self.height, self.width = int(height), int(width)
        crop_pct = float(self.data_config.get("crop_pct") or 1.0)
        self.min_side = int(max(self.height, self.width) / crop_pct)
        # The fast path covers timm's usual eval transform: Resize(int) + CenterCrop.
        names = [type(step).__name__ for step in steps]
        resize = steps[0] if steps else None
        self._fast = (
            names == ["Resize", "CenterCrop"]
            and isinstance(getattr(resize, "size", None), int)
            and getattr(resize, "max_size", None) is None
        )
        if self._fast:
            from torchvision.transforms import InterpolationMode

            self.scale_size = int(resize.size)  # type: ignore[union-attr]
            mode = resize.interpolation  # type: ignore[union-attr]
            self._resample = {
                InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
                InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
                InterpolationMode.NEAREST: Image.Resampling.NEAREST,
                InterpolationMode.LANCZOS: Image.Resampling.LANCZOS,
            }.get(mode, Image.Resampling.BICUBIC)

    def _resize_crop(self, img: Image.Image) -> Image.Image:
        """Resize-shorter-side then centre-crop in one resample of just the crop's box.

        Same geometry as torchvision's Resize + CenterCrop (which timm builds), but only
        the kept pixels are computed: about 1.6x faster, identical but for rounding.
        """
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.scale_size, int(self.scale_size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        top = int(round((new_h - self.height) / 2.0))
        left = int(round((new_w - self.width) / 2.0))
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + self.width) * sx, (top + self.height) * sy)
        return img.resize((self.width, self.height), self._resample, box=box)

    def __call__(self, img: Image.Image) -> np.ndarray:
        if self._fast and min(img.size) >= 1:
            img = self._resize_crop(img)
        else:
            for step in self._steps:
                img = step(img)
        arr = np.asarray(img, dtype=np.uint8)
        if arr.shape != (self.height, self.width, 3):
            raise BadImageError(f"unexpected size after preprocessing: {arr.shape}")
        return arr

    def load(self, path: str | Path) -> np.ndarray:
        """Read, decode and preprocess one file into an (H, W, 3) uint8 array."""
        return self(decode_image(read_bytes(path), self.min_side))
