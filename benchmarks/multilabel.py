"""Multi-label benchmark made from the flowers photos: mAP and macro F1 of the probe and of fine-tuning.

The set is built at run time under ``--work`` (default /tmp, never the repository): ``--pairs``
collages of two photos of DIFFERENT classes side by side (each photo's central strip, 112 x 224
px, so the backbone's centre crop keeps both halves), labelled with both classes, plus
``--singles`` photos as they are (their CSV rows point at the originals), labelled with their
one class. No photo is used twice. ``labels.csv`` (path,labels with ``;``) is the data; the
split is headstart's iterative stratification, the same for both runs.

    flock /work/wt/cpu.lock python benchmarks/multilabel.py ../shared/datasets/flower_photos
    python benchmarks/multilabel.py ../shared/datasets/flower_photos --pairs 60 --singles 30 --epochs 1   # quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 224


def strip(path: str) -> Image.Image:
    """The photo resized so its shorter side is 224, then its central 112 x 224 strip."""
    from headstart.data.images import decode_image, read_bytes

    img = decode_image(read_bytes(path), SIDE)
    w, h = img.size
    scale = SIDE / min(w, h)
    img = img.resize(
        (max(SIDE // 2, round(w * scale)), max(SIDE, round(h * scale))), Image.Resampling.BILINEAR
    )
    w, h = img.size
    left, top = (w - SIDE // 2) // 2, (h - SIDE) // 2
    return img.crop((left, top, left + SIDE // 2, top + SIDE))


def build_set(data: Path, work: Path, pairs: int, singles: int, seed: int) -> Path:
    """``work/labels.csv``: collages of two classes, and single photos."""
    from headstart.core.io import write_text
    from headstart.data.discovery import discover

    dataset = discover(data)
    rng = np.random.default_rng(seed)
    by_class = {c: [s.path for s in dataset.samples if s.label == c] for c in dataset.classes}
    for paths in by_class.values():
        rng.shuffle(paths)
    classes = list(by_class)
    rows = ["path,labels"]
    (work / "img").mkdir(parents=True, exist_ok=True)
    for i in range(pairs):
        a, b = rng.choice(len(classes), 2, replace=False)
        left, right = by_class[classes[a]].pop(), by_class[classes[b]].pop()
        collage = Image.new("RGB", (SIDE, SIDE))
        collage.paste(strip(left), (0, 0))
        collage.paste(strip(right), (SIDE // 2, 0))
        name = f"img/pair_{i:05d}.jpg"
        collage.save(work / name, quality=90)
        rows.append(f"{name},{';'.join(sorted({classes[a], classes[b]}))}")
    for i in range(singles):
        c = classes[i % len(classes)]
        rows.append(f"{Path(by_class[c].pop()).resolve()},{c}")  # absolute: the CSV lies elsewhere
    return write_text(work / "labels.csv", "\n".join(rows) + "\n")


def run(csv: Path, out: Path, cache: Path, **params: object) -> dict:
    from headstart import ImageClassifier

    t0 = time.perf_counter()
    clf = ImageClassifier(cache_dir=cache, verbose=False, **params).fit(csv, out_dir=out)  # type: ignore[arg-type]
    test = clf.metrics_["test"]
    return {**test, "seconds": time.perf_counter() - t0, "C": clf.head_.params().get("C")}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path)
    parser.add_argument("--pairs", type=int, default=900)
    parser.add_argument("--singles", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--unfreeze", default="last:2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/headstart_multilabel_bench"))
    args = parser.parse_args()

    from headstart.core.system import cpu_summary

    print(cpu_summary())
    t0 = time.perf_counter()
    csv = build_set(args.data, args.work / "data", args.pairs, args.singles, args.seed)
    print(
        f"set: {args.pairs} collages + {args.singles} single photos in {time.perf_counter() - t0:.0f}s ({csv})"
    )
    cache = args.work / "cache"
    probe = run(csv, args.work / "probe", cache, strategy="feature-extraction", seed=args.seed)
    tuned = run(
        csv,
        args.work / "finetune",
        cache,
        strategy="finetune",
        unfreeze=args.unfreeze,
        epochs=args.epochs,
        seed=args.seed,
    )
    print("| strategy | test mAP | macro F1 | micro F1 | subset accuracy | test images | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, r in (
        ("probe (feature-extraction)", probe),
        (f"finetune {args.unfreeze}, {args.epochs} epochs", tuned),
    ):
        print(
            f"| {name} | {r['mAP']:.4f} | {r['macro_f1']:.4f} | {r['micro_f1']:.4f} | "
            f"{r['subset_accuracy']:.4f} | {r['n']} | {r['seconds']:.0f} |"
        )
    print(json.dumps({"probe": probe, "finetune": tuned}, indent=1))


if __name__ == "__main__":
    main()
