"""Generate a data set unlike ImageNet for development: outlined shapes drawn with Pillow on
random textured backgrounds (class folders, deterministic seed). Nothing here is committed:
the images are made at run time.

    python benchmarks/make_unlike_imagenet.py /tmp/shapes --per-class 200
    headstart train /tmp/shapes --strategy feature-extraction --features multi --out /tmp/run

What makes it unlike ImageNet: the classes differ only in thin outlines (geometry), the
backgrounds are high-frequency textures (stripes, checks, noise) shared by every class, and
colour carries no information, so the last layer's object-level features help little.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from headstart.core.io import atomic_path

SHAPES = ("circle", "square", "triangle", "cross", "star", "hexagon")
SIZE = 96


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A random background: stripes at a random angle and period, or checks, plus noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    angle, period = rng.uniform(0, math.pi), rng.uniform(3, 12)
    kind = rng.integers(3)
    if kind == 0:
        base = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
    elif kind == 1:
        base = np.sign(np.sin(2 * math.pi * xx / period) * np.sin(2 * math.pi * yy / period))
    else:
        base = rng.normal(0, 1, (SIZE, SIZE))
    tint_a, tint_b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    mix = (base[..., None] + 1) / 2
    img = tint_a * mix + tint_b * (1 - mix) + rng.normal(0, 20, (SIZE, SIZE, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(
    cx: float, cy: float, r: float, n: int, rot: float, inner: float = 1.0
) -> list[tuple[float, float]]:
    points = []
    steps = n * (2 if inner != 1.0 else 1)
    for k in range(steps):
        radius = r if k % 2 == 0 or inner == 1.0 else r * inner
        a = rot + 2 * math.pi * k / steps
        points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    return points


def draw_shape(shape: str, rng: np.random.Generator) -> Image.Image:
    """One image: ``shape`` outlined at a random place, size, rotation and colour."""
    img = Image.fromarray(_texture(rng))
    draw = ImageDraw.Draw(img)
    r = rng.uniform(18, 34)
    cx, cy = rng.uniform(r + 2, SIZE - r - 2, 2)
    rot = rng.uniform(0, 2 * math.pi)
    color = tuple(int(v) for v in rng.integers(0, 256, 3))
    width = int(rng.integers(2, 5))
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=color, width=width)
    elif shape == "cross":
        for a in (rot, rot + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=color, width=width + 1)
    else:
        sides = {"square": (4, 1.0), "triangle": (3, 1.0), "star": (5, 0.45), "hexagon": (6, 1.0)}[shape]
        pts = _polygon(cx, cy, r, sides[0], rot, sides[1])
        draw.line([*pts, pts[0]], fill=color, width=width, joint="curve")
    return img


def make_dataset(out: Path, per_class: int, seed: int) -> Path:
    """Write ``per_class`` PNG images per shape under ``out/SHAPE/``."""
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        folder = out / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            with atomic_path(folder / f"{shape}_{i:04d}.png") as tmp:
                draw_shape(shape, rng).save(tmp, format="PNG")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_dataset(args.out, args.per_class, args.seed)
    print(f"wrote {args.per_class * len(SHAPES)} images in {len(SHAPES)} classes to {args.out}")


if __name__ == "__main__":
    main()
