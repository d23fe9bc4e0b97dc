"""``predict --explain DIR``: each image with its class activation map laid over it (PNG)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.core.io import atomic_path

ALPHA = 0.45  # the heatmap's weight over the photo


def overlay(image: Image.Image, heatmap: np.ndarray) -> Image.Image:
    """``image`` (RGB) with ``heatmap`` ((H, W) in [0, 1], the image's size) in matplotlib's
    ``jet`` colours over it, stronger where the map is higher."""
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3]
    weight = ALPHA * np.clip(heatmap, 0, 1)[..., None] + 0.15
    photo = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    mixed = (1 - weight) * photo + weight * colours
    return Image.fromarray(np.clip(mixed * 255, 0, 255).astype(np.uint8))


def overlay_name(path: str, label: str, index: int) -> str:
    """A PNG name that tells the image and the label apart (``index`` keeps same names apart)."""
    stem = Path(path).stem.replace(os.sep, "_")[:80]
    safe_label = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)[:40]
    return f"{index:05d}_{stem}_{safe_label}.png"


def write_overlay(out_dir: Path, name: str, image: Image.Image, heatmap: np.ndarray) -> Path:
    """Write one overlay PNG atomically."""
    path = Path(out_dir) / name
    with atomic_path(path) as tmp:
        overlay(image, heatmap).save(tmp, format="PNG")
    return path
