"""Exported models against torch: latency, throughput, file size and accuracy, on one run's test split.

    headstart train ../shared/datasets/flower_photos --out /tmp/flowers-run
    python benchmarks/export_speed.py /tmp/flowers-run

Exports the run's model (fp32, fp16, int8; ONNX and OpenVINO) into a temporary folder, prepares the
test images once (headstart's own decode, resize and crop), then for torch eager and each exported
file: batch-1 latency (p50, p99) and batch-32 throughput (best of ``--rounds`` rounds that take every
model in turn), all on the same pixels, file size, and top-1 accuracy on the whole test split.
Prints the int8/fp32 throughput ratio per runtime and the CPU with its instruction sets (int8 gains
depend on VNNI/AMX).
Figures from a machine shared with other work are noisy: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


def accuracy(predict: Predict, pixels: np.ndarray, labels: np.ndarray) -> float:
    proba = np.concatenate([predict(pixels[i : i + 32]) for i in range(0, len(pixels), 32)])
    return float((proba.argmax(1) == labels).mean())


def one_round(predict: Predict, pixels: np.ndarray, latency_images: int) -> tuple[list[float], float]:
    """Batch-1 latencies (ms) on the first ``latency_images`` images, and batch-32 images/s on all."""
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
    return times, sum(len(b) for b in batches) / (time.perf_counter() - t)


def measure_all(
    predictors: dict[str, Predict], pixels: np.ndarray, labels: np.ndarray, latency_images: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Accuracy over every image; speed in ``rounds`` rounds that take every model in turn, so load
    from elsewhere on the machine falls on all of them alike: p50/p99 over every round's calls, and
    the best round's throughput."""
    out = {name: {"accuracy": accuracy(predict, pixels, labels)} for name, predict in predictors.items()}
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(rounds):
        for name, predict in predictors.items():
            latencies, speed = one_round(predict, pixels, latency_images)
            times[name] += latencies
            out[name]["images_per_s"] = max(out[name].get("images_per_s", 0.0), speed)
    for name, values in times.items():
        out[name].update(p50_ms=float(np.percentile(values, 50)), p99_ms=float(np.percentile(values, 99)))
    return out


def file_size_mb(model_file: Path) -> float:
    files = [model_file, model_file.with_suffix(".bin")] if model_file.suffix == ".xml" else [model_file]
    return sum(f.stat().st_size for f in files if f.exists()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a run folder (or model.safetensors) whose test images exist")
    parser.add_argument(
        "--latency-images", type=int, default=100, help="batch-1 calls timed per model a round"
    )
    parser.add_argument("--rounds", type=int, default=3, help="speed rounds, each taking every model in turn")
    parser.add_argument("--threads", type=int, default=usable_core_count())
    args = parser.parse_args()
    bundle = read_bundle(args.run)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        predictors: dict[str, Predict] = {"torch-eager fp32": torch_eager(args.run, args.threads)}
        sizes: dict[str, float | None] = {"torch-eager fp32": None}
        for fmt, precision in VARIANTS:
            path = export_model(args.run, Path(tmp) / f"{fmt}-{precision}", fmt, precision, force=True)
            name = f"{'onnxruntime' if fmt == 'onnx' else 'openvino'} {precision}"
            predictors[name] = load_exported(path, threads=args.threads).predict_proba
            sizes[name] = file_size_mb(path)
        pixels, labels, split = test_pixels(bundle.card, load_exported(path).preprocessing)
        print(f"exports and {len(pixels)} {split} images ready in {time.perf_counter() - t:.0f}s")
        figures = measure_all(predictors, pixels, labels, args.latency_images, args.rounds)
    rows = [(*name.split(" "), sizes[name], figures[name]) for name in predictors]
    print_table(rows, len(pixels), split)
    for runtime in ("onnxruntime", "openvino"):
        ratio = figures[f"{runtime} int8"]["images_per_s"] / figures[f"{runtime} fp32"]["images_per_s"]
        print(f"{runtime}: int8/fp32 batch-32 throughput ratio {ratio:.2f}x")
    print(f"CPU: {cpu_summary()}; {args.threads} inference threads")


def print_table(rows: Sequence[tuple[Any, ...]], n: int, split: str) -> None:
    """One line a model: runtime, precision, file size, latency, throughput, accuracy."""
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
