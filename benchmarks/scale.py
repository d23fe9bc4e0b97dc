"""Scale: the real training pipeline on generated data sets of growing size, time per stage and peak memory.

For each size a data set of small JPEGs (shapes of a few classes, random colours, positions and
noise; one image in 500 a byte copy of another, so the duplicate check has something to find) is
made in a scratch folder, in parallel, then ``ImageClassifier(strategy="feature-extraction").fit``
runs on it in a subprocess of its own with an empty private feature cache, so its peak RSS is
that run's alone. Printed: wall seconds per stage (discover, hash, extract, duplicate check,
split, head fit, evaluate, report and files), the time per image and the peak RSS of each size,
with the CPU line.

    flock /work/wt/cpu.lock python benchmarks/scale.py --sizes 10000 50000 200000 --input-size 64

``--input-size`` feeds the default backbone (EfficientNet-Lite0, its ImageNet weights) images of
that many pixels a side instead of its 224 (the backbone's data config, overridden in this script
only), so the three sizes run in minutes on a small CPU; the output says which size was used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CLASSES = ("circle", "square", "triangle", "cross", "ring")
IMAGE_PX = 48
COPY_EVERY = 500  # one image in this many is a byte copy of the one before (an exact duplicate)


def _draw(args: tuple[Path, int, int]) -> int:
    """Write images ``start:stop`` of the data set (a seeded picture per index)."""
    from PIL import Image, ImageDraw

    root, start, stop = args
    for i in range(start, stop):
        label = CLASSES[i % len(CLASSES)]
        path = root / label / f"{i:07d}.jpg"
        if i % COPY_EVERY == COPY_EVERY - 1 and i >= len(CLASSES):
            shutil.copyfile(root / label / f"{i - len(CLASSES):07d}.jpg", path)
            continue
        rng = np.random.default_rng(i)
        background = rng.integers(0, 256, 3)
        pixels = np.clip(background + rng.normal(0, 30, (IMAGE_PX, IMAGE_PX, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels)
        draw = ImageDraw.Draw(img)
        r = int(rng.integers(9, 18))
        cx, cy = (int(v) for v in rng.integers(r, IMAGE_PX - r, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = (cx - r, cy - r, cx + r, cy + r)
        if label == "circle":
            draw.ellipse(box, fill=colour)
        elif label == "square":
            draw.rectangle(box, fill=colour)
        elif label == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        elif label == "cross":
            draw.rectangle((cx - r, cy - r // 3, cx + r, cy + r // 3), fill=colour)
            draw.rectangle((cx - r // 3, cy - r, cx + r // 3, cy + r), fill=colour)
        else:
            draw.ellipse(box, outline=colour, width=max(2, r // 3))
        img.save(path, quality=85)
    return stop - start


def make_dataset(root: Path, n: int, workers: int) -> float:
    """``n`` images in class folders under ``root``; returns the seconds it took."""
    t0 = time.perf_counter()
    for label in CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
    step = 2000
    jobs = [(root, s, min(s + step, n)) for s in range(0, n, step)]
    with ProcessPoolExecutor(workers) as pool:
        assert sum(pool.map(_draw, jobs)) == n
    return time.perf_counter() - t0


def _small_input_backbones(size: int) -> None:
    """The estimator's backbones take ``size`` px inputs (this process only)."""
    import dataclasses

    import headstart.estimator.classifier as classifier

    create = classifier.create_backbone

    def create_small(*args, **kwargs):
        backbone = create(*args, **kwargs)
        config = {**backbone.data_config, "input_size": (3, size, size), "crop_pct": 1.0}
        return dataclasses.replace(backbone, data_config=config)

    classifier.create_backbone = create_small  # type: ignore[assignment]


def child(data: Path, out: Path, cache: Path, input_size: int) -> dict:
    """One run of the pipeline; its stage seconds and this process's peak RSS."""
    import resource

    import headstart

    if input_size:
        _small_input_backbones(input_size)
    t0 = time.perf_counter()
    clf = headstart.ImageClassifier(strategy="feature-extraction", cache_dir=str(cache), verbose=False)
    clf.fit(data, out)
    total = time.perf_counter() - t0
    t = clf.metrics_["timings"]
    hashing = clf.extraction_.seconds.get("hash", 0.0)
    stages = {
        "discover": t.get("discover", 0.0),
        "backbone": t.get("backbone", 0.0),
        "hash": hashing,
        "extract": t.get("extract", 0.0) - hashing,
        "duplicates": t.get("data_check", 0.0),
        "split": t.get("split", 0.0),
        "head_fit": t.get("fit_head", 0.0),
        "evaluate": t.get("evaluate", 0.0),
    }
    stages["report_files"] = total - sum(stages.values())
    return {
        "n": clf.metrics_["data"]["n_images"],
        "total": total,
        "stages": stages,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "accuracy": clf.metrics_[clf.metrics_["evaluated_on"]]["accuracy"],
        "head": clf.head_.name,
        "features_in": type(clf.extraction_.features).__name__,
        "duplicate_groups": len(clf.checks_.groups) if clf.checks_ else None,
    }


def run_size(n: int, scratch: Path, input_size: int, workers: int) -> dict | None:
    root = scratch / f"data-{n}"
    made = make_dataset(root, n, workers)
    print(f"  {n:,} images made in {made:.1f} s", flush=True)
    cmd = [sys.executable, __file__, "--child", str(root), "--input-size", str(input_size)]
    cmd += ["--scratch", str(scratch / f"run-{n}")]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(scratch / f"run-{n}", ignore_errors=True)
    if done.returncode:
        print(f"run of {n:,} images failed:\n{done.stderr[-3000:]}", flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


STAGES = (
    "discover",
    "backbone",
    "hash",
    "extract",
    "duplicates",
    "split",
    "head_fit",
    "evaluate",
    "report_files",
)


def print_table(results: list[dict]) -> None:
    head = f"{'images':>8} " + " ".join(f"{s:>12}" for s in STAGES)
    head += f" {'total s':>8} {'ms/image':>9} {'peak RSS MB':>12} {'accuracy':>9} head / features"
    print(head)
    for r in results:
        cells = " ".join(f"{r['stages'][s]:>12.1f}" for s in STAGES)
        print(
            f"{r['n']:>8,} {cells} {r['total']:>8.1f} {1000 * r['total'] / r['n']:>9.3f} "
            f"{r['peak_rss_mb']:>12.0f} {r['accuracy']:>9.4f} {r['head']} / {r['features_in']}"
        )
    first, last = results[0], results[-1]
    ratio = (last["total"] / last["n"]) / (first["total"] / first["n"])
    print(
        f"time per image {last['n']:,} / {first['n']:,}: {ratio:.2f}x; "
        f"peak RSS growth: {last['peak_rss_mb'] - first['peak_rss_mb']:+.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--input-size", type=int, default=64, help="backbone input px (0: its own 224)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="processes making images")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out = child(args.child, args.scratch / "run", args.scratch / "cache", args.input_size)
        print(json.dumps(out))
        return
    from headstart.core.system import cpu_summary

    print(cpu_summary())
    size = f"{args.input_size} px" if args.input_size else "its own 224 px"
    print(f"backbone: tf_efficientnet_lite0 (ImageNet weights) fed {size} inputs; images {IMAGE_PX} px JPEG")
    results = []
    with tempfile.TemporaryDirectory(prefix="headstart-scale-") as tmp:
        for n in args.sizes:
            print(f"size {n:,}:", flush=True)
            result = run_size(n, Path(tmp), args.input_size, args.workers)
            if result is not None:
                results.append(result)
                print(json.dumps(result), flush=True)
    if results:
        print_table(results)


if __name__ == "__main__":
    main()
