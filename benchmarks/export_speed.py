"""Exported models against torch: latency, throughput, file size and accuracy, on one run's test split.

    headstart train ../shared/datasets/flower_photos --out /tmp/flowers-run
    python benchmarks/export_speed.py /tmp/flowers-run

Exports the run's model (fp32, fp16, int8; ONNX and OpenVINO) into a temporary folder, prepares the
test images once (headstart's own decode, resize and crop), then for each of torch eager and every
exported file: batch-1 latency (p50, p99 over ``--latency-images`` calls) and batch-32 throughput,
both on the same pixels, file size and top-1 accuracy on the whole test split. Prints the int8/fp32
throughput ratio per runtime and the CPU with its instruction sets (int8 gains depend on VNNI/AMX).
Figures from a machine shared with other work are noisy: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from headstart.core.system import cpu_summary, usable_core_count
from headstart.export.exporter import export_model, read_bundle
from headstart.export.graph import classifier_module
from headstart.export.quantize import test_pixels
from headstart.export.runtime import load_exported

Predict = Callable[[np.ndarray], np.ndarray]
VARIANTS = [
    ("onnx", "fp32"),
    ("onnx", "fp16"),
    ("onnx", "int8"),
    ("openvino", "fp32"),
    ("openvino", "fp16"),
    ("openvino", "int8"),
]


def torch_eager(run: Path, threads: int) -> Predict:
    """The same classifier as the exports, in torch (eager mode, fp32)."""
    import torch

    torch.set_num_threads(threads)
    bundle = read_bundle(run)
    module = classifier_module(bundle.backbone, bundle.head)

    def predict(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(pixels)).numpy()

    return predict


def measure(
    predict: Predict, pixels: np.ndarray, labels: np.ndarray, latency_images: int
) -> dict[str, float]:
    """Accuracy over every image, batch-1 latency on the first ``latency_images``, batch-32 speed."""
    proba = np.concatenate([predict(pixels[i : i + 32]) for i in range(0, len(pixels), 32)])
    for i in range(3):  # warm-up: first calls allocate and pick kernels
        predict(pixels[i : i + 1])
    times = []
    for i in range(latency_images):
        t = time.perf_counter()
        predict(pixels[i % len(pixels) : i % len(pixels) + 1])
        times.append((time.perf_counter() - t) * 1000)
    batches = [pixels[i : i + 32] for i in range(0, len(pixels) - 31, 32)] or [pixels[:32]]
    t = time.perf_counter()
    for batch in batches:
        predict(batch)
    seconds = time.perf_counter() - t
    return {
        "accuracy": float((proba.argmax(1) == labels).mean()),
        "p50_ms": float(np.percentile(times, 50)),
        "p99_ms": float(np.percentile(times, 99)),
        "images_per_s": sum(len(b) for b in batches) / seconds,
    }


def file_size_mb(model_file: Path) -> float:
    files = [model_file, model_file.with_suffix(".bin")] if model_file.suffix == ".xml" else [model_file]
    return sum(f.stat().st_size for f in files if f.exists()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a run folder (or model.safetensors) whose test images exist")
    parser.add_argument("--latency-images", type=int, default=100, help="batch-1 calls timed per model")
    parser.add_argument("--threads", type=int, default=usable_core_count())
    args = parser.parse_args()
    bundle = read_bundle(args.run)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for fmt, precision in VARIANTS:
            files[fmt, precision] = export_model(
                args.run, Path(tmp) / f"{fmt}-{precision}", fmt, precision, force=True
            )
        first = load_exported(files["onnx", "fp32"])
        pixels, labels, split = test_pixels(bundle.meta, first.preprocessing)
        print(f"exports and {len(pixels)} {split} images ready in {time.perf_counter() - t:.0f}s")
        rows = [
            (
                "torch eager",
                "fp32",
                None,
                measure(torch_eager(args.run, args.threads), pixels, labels, args.latency_images),
            )
        ]
        for (fmt, precision), path in files.items():
            model = load_exported(path, threads=args.threads)
            runtime = "onnxruntime" if fmt == "onnx" else "openvino"
            rows.append(
                (
                    runtime,
                    precision,
                    file_size_mb(path),
                    measure(model.predict_proba, pixels, labels, args.latency_images),
                )
            )
    print_table(rows, len(pixels), split)
    for runtime in ("onnxruntime", "openvino"):
        speed = {p: m["images_per_s"] for r, p, _, m in rows if r == runtime}
        print(f"{runtime}: int8/fp32 batch-32 throughput ratio {speed['int8'] / speed['fp32']:.2f}x")
    print(f"CPU: {cpu_summary()}; {args.threads} inference threads")


def print_table(rows: list[tuple[str, str, float | None, dict[str, float]]], n: int, split: str) -> None:
    print(
        f"\n{'runtime':<12} {'precision':<9} {'size MB':>8} {'p50 ms':>8} {'p99 ms':>8} {'img/s b32':>10} {'acc':>7}"
    )
    for runtime, precision, size, m in rows:
        size_text = f"{size:.1f}" if size is not None else "-"
        print(
            f"{runtime:<12} {precision:<9} {size_text:>8} {m['p50_ms']:>8.1f} {m['p99_ms']:>8.1f} "
            f"{m['images_per_s']:>10.1f} {m['accuracy']:>7.2%}"
        )
    print(
        f"(batch-1 latency and batch-32 throughput on the same {n} {split} images; accuracy on all of them)\n"
    )


if __name__ == "__main__":
    main()
