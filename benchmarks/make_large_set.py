"""Generate a CIFAR-10-sized data set for developing ``strategy="auto"`` on large data: small
random crops of the flowers photos, in split folders. Nothing here is committed: the images are
made at run time from ``../shared/datasets/flower_photos``.

    python benchmarks/make_large_set.py /tmp/large            # 50,000 train, 5,000 val, 10,000 test
    headstart train /tmp/large --time-budget 15 --out /tmp/run

Each crop is a random square (a side of 35-100% of the photo's shorter side, anywhere in the
photo, mirrored half the time) resized to 32x32 px, saved as a JPEG (quality 92). The photos
are divided first, by a seeded permutation, into disjoint train / val / test sources (70/10/20%),
so no two splits hold crops of the same photo: validation and test scores are those of unseen
photos, as CIFAR's are. A validation folder is given because ``fit`` would otherwise carve
validation out of train, where crops of one photo would sit on both sides.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.core.io import atomic_path

SIZE = 32
SOURCES = {"train": 0.7, "val": 0.1, "test": 0.2}


def crop(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One random square crop of ``photo`` at ``SIZE`` px."""
    width, height = photo.size
    side = int(min(width, height) * rng.uniform(0.35, 1.0))
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    out = photo.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def divide(photos: list[Path], seed: int) -> dict[str, list[Path]]:
    """The photos as disjoint train / val / test sources (``SOURCES``'s fractions)."""
    order = np.random.default_rng(seed).permutation(len(photos))
    out, start = {}, 0
    for split, fraction in SOURCES.items():
        count = int(round(fraction * len(photos))) if split != "test" else len(photos) - start
        out[split] = [photos[i] for i in order[start : start + count]]
        start += count
    return out


def make(source: Path, out: Path, counts: dict[str, int], seed: int) -> dict[str, int]:
    """Write ``counts[split]`` crops per split to ``out/<split>/<class>/``; what was written."""
    rng = np.random.default_rng(seed)
    written = dict.fromkeys(counts, 0)
    for label_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        photos = sorted(label_dir.glob("*.jpg"))
        n_classes = sum(1 for p in source.iterdir() if p.is_dir())
        for split, sources in divide(photos, seed).items():
            per_class = counts[split] // n_classes
            target = out / split / label_dir.name
            target.mkdir(parents=True, exist_ok=True)
            picks = rng.integers(0, len(sources), per_class)
            opened: tuple[int, Image.Image] | None = None
            for i, pick in enumerate(sorted(picks)):  # sorted: each photo is decoded once
                if opened is None or opened[0] != pick:
                    with Image.open(sources[pick]) as photo:
                        opened = (int(pick), photo.convert("RGB"))
                image = crop(opened[1], rng)
                with atomic_path(target / f"{sources[pick].stem}_{i:05d}.jpg") as tmp:
                    image.save(tmp, format="JPEG", quality=92)
                written[split] += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=Path("../shared/datasets/flower_photos"))
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--val", type=int, default=5_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = {"train": args.train, "val": args.val, "test": args.test}
    print(make(args.source, args.out, counts, args.seed))


if __name__ == "__main__":
    main()
