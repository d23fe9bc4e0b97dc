"""Cold feature extraction, decode included: headstart's pipeline vs a plain PyTorch eager loop.

Both run in this one process over the same files and the same backbone, side by side, and the
ratio is printed. headstart starts from an empty feature cache (its ONNX export and compile are
counted); the baseline is what the tutorials do: decode one image after another with the
timm transform, batch, and call the model in fp32 eager mode.

    python benchmarks/extraction_speed.py ../shared/datasets/flower_photos --limit 800 [--tuned]

``--tuned`` also times a well-tuned PyTorch loop (channels_last, bf16 where native, threaded
decoding), for a ratio against the best plain PyTorch rather than against the tutorials'.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def plain_pytorch(backbone, paths: list[str], batch_size: int = 32) -> tuple[float, np.ndarray]:
    import torch
    from PIL import Image
    from timm.data import create_transform

    transform = create_transform(**backbone.data_config, is_training=False)
    model = backbone.model.eval()
    out = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(paths), batch_size):
            batch = [transform(Image.open(p).convert("RGB")) for p in paths[i : i + batch_size]]
            out.append(model(torch.stack(batch)).numpy())
    return time.perf_counter() - t0, np.concatenate(out)


def tuned_pytorch(backbone, paths: list[str], batch_size: int = 32) -> tuple[float, np.ndarray, str]:
    """A well-tuned PyTorch loop, for context: channels_last, bf16 autocast where the CPU has
    native bf16, inference mode, and headstart's threaded decoding feeding it."""
    import torch

    from headstart.core.system import usable_core_count
    from headstart.data.images import Preprocessor
    from headstart.features.engines import TorchEngine
    from headstart.training.settings import resolve_precision

    precision = resolve_precision("auto")
    engine = TorchEngine(backbone, usable_core_count())
    prep = Preprocessor(backbone.data_config)
    out = []
    t0 = time.perf_counter()
    with (
        ThreadPoolExecutor(usable_core_count()) as pool,
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"),
    ):
        batches = (pool.map(prep.load, paths[i : i + batch_size]) for i in range(0, len(paths), batch_size))
        for batch in batches:
            out.append(engine(np.stack(list(batch))))
    return time.perf_counter() - t0, np.concatenate(out), precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder of class sub-folders")
    parser.add_argument("--limit", type=int, default=800, help="images used (0 = all)")
    parser.add_argument("--engine", default="auto")
    parser.add_argument(
        "--tuned", action="store_true", help="also time a tuned PyTorch loop (bf16, channels_last)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="headstart's batch (train's default is 8)")
    args = parser.parse_args()

    from headstart.core.progress import NullProgress
    from headstart.core.system import cpu_summary
    from headstart.data.discovery import discover
    from headstart.features.cache import FeatureCache
    from headstart.features.extractor import FeatureExtractor
    from headstart.models.backbones import create_backbone

    paths = discover(args.data).paths
    rng = np.random.default_rng(0)
    if args.limit and args.limit < len(paths):
        paths = [paths[i] for i in sorted(rng.choice(len(paths), args.limit, replace=False))]
    backbone = create_backbone()
    print(f"{len(paths)} images from {args.data}, backbone {backbone.name}")
    print(f"CPU: {cpu_summary()}")

    # The baseline runs first, so neither side inherits the other's thread pools.
    base_s, base_feats = plain_pytorch(backbone, paths)
    if args.tuned:
        tuned_s, _, tuned_precision = tuned_pytorch(backbone, paths)
    with tempfile.TemporaryDirectory() as cache_dir:
        t0 = time.perf_counter()
        ex = FeatureExtractor(
            backbone,
            FeatureCache(cache_dir),
            engine=args.engine,
            batch_size=args.batch_size,
            progress=NullProgress(),
        )
        res = ex.extract(paths)
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ex.extract(paths)
        warm_s = time.perf_counter() - t0

    ok = res.ok
    cos = (res.features[ok] * base_feats[ok]).sum(1) / (
        np.linalg.norm(res.features[ok], axis=1) * np.linalg.norm(base_feats[ok], axis=1)
    )
    ours_rate, base_rate = len(paths) / ours, len(paths) / base_s
    print(
        f"headstart cold ({res.engine}, cache empty, export+compile included): "
        f"{ours:.1f}s = {ours_rate:.0f} images/s  [steady {res.new_images_per_s:.0f} images/s]"
    )
    print("  stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in res.seconds.items()))
    print(f"headstart warm (all cached): {warm_s:.2f}s = {len(paths) / warm_s:.0f} images/s")
    print(f"plain PyTorch eager fp32 loop: {base_s:.1f}s = {base_rate:.0f} images/s")
    print(
        f"ratio headstart/plain: {ours_rate / base_rate:.2f}x   "
        f"(feature cosine similarity vs fp32 eager: min {cos.min():.4f}, mean {cos.mean():.4f})"
    )
    if args.tuned:
        tuned_rate = len(paths) / tuned_s
        print(
            f"tuned PyTorch loop (channels_last, {tuned_precision}, threaded decode): {tuned_s:.1f}s = "
            f"{tuned_rate:.0f} images/s; ratio headstart/tuned: {ours_rate / tuned_rate:.2f}x"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MiB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
