"""The backbones headstart knows (``models.backbones.ZOO``), with what each costs on this machine.

What ``headstart backbones`` lists: for each backbone, whether its weights are here offline
(a weights package, or timm hub weights already downloaded) or must come from the hub, its input
size and parameter count (from timm), its published ImageNet top-1, and the images per second
the default feature engine runs it at here, timed on synthetic pixels after a warm-up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import ParameterError
from headstart.core.system import usable_core_count
from headstart.features.cache import default_cache_dir
from headstart.features.engines import build_engine, resolve_engine
from headstart.models.backbones import ZOO, ZooEntry, create_backbone, zoo_facts


@dataclass
class SpeedTrial:
    """How ``images_per_s`` is measured: ``batches`` timed batches of ``batch_size`` synthetic
    images, after ``warmup`` batches that are not timed (the first runs of a compiled graph are
    slower), in the ``engine`` (auto: the default one)."""

    batches: int = 8
    warmup: int = 2
    batch_size: int = 8
    engine: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        for param, value, least in (
            ("batches", self.batches, 1),
            ("warmup", self.warmup, 0),
            ("batch_size", self.batch_size, 1),
        ):
            if value < least:
                raise ParameterError(param, f"must be at least {least} (got {value})")

    @property
    def images(self) -> int:
        return self.batches * self.batch_size


def hub_weights_cached(name: str) -> bool:
    """Whether timm's hub weights of ``name`` are in the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    hub_id = zoo_facts(name)["hub_id"]
    if not hub_id:
        return False
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(hub_id, filename), str):
            return True
    return False


def zoo_row(entry: ZooEntry) -> dict[str, Any]:
    """One backbone's facts, without measuring anything."""
    facts = zoo_facts(entry.name)
    offline = entry.weights_package is not None or hub_weights_cached(entry.name)
    return {
        "name": entry.name,
        "weights": entry.weights_package or ("timm hub cache" if offline else "timm hub"),
        "offline": offline,
        "input_size": facts["input_size"],
        "params": facts["params"],
        "imagenet_top1": entry.imagenet_top1,
        "images_per_s": None,
        "note": "" if offline else "weights not downloaded: needs the timm hub (online) or --weights FILE",
    }


def measure_images_per_s(name: str, trial: SpeedTrial, cache_dir: Path) -> float:
    """Images per second of backbone ``name`` in the trial's engine, on synthetic uint8 pixels of
    its input size (export and compile happen before the clock starts)."""
    backbone = create_backbone(name, cache_dir=cache_dir)
    engine = build_engine(backbone, trial.engine, trial.batch_size, usable_core_count(), cache_dir)
    _, height, width = backbone.data_config["input_size"]
    rng = np.random.default_rng(trial.seed)
    pixels = rng.integers(0, 256, size=(trial.batch_size, height, width, 3), dtype=np.uint8)
    for _ in engine.stream((i, pixels) for i in range(trial.warmup)):
        pass
    start = time.perf_counter()
    for _ in engine.stream((i, pixels) for i in range(trial.batches)):
        pass
    return trial.images / (time.perf_counter() - start)


def list_backbones(
    measure: bool = True, trial: SpeedTrial | None = None, cache_dir: str | Path | None = None
) -> dict[str, Any]:
    """Every backbone of the zoo, measured where its weights are here (see ``SpeedTrial``).

    Args:
        measure: time each available backbone (some seconds each: export, compile, the trial).
        trial: how to time them (default: 2 warm-up and 8 timed batches of 8 images).
        cache_dir: where the exported graphs and compiled blobs are kept (default: the feature cache).

    Returns:
        ``{"backbones": [row, ...], "measurement": {...} or None}``; a row's ``images_per_s`` is
        None where it was not measured, and ``note`` says why.
    """
    trial = trial or SpeedTrial()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    rows = [zoo_row(entry) for entry in ZOO]
    for row in rows:
        if not measure:
            row["note"] = row["note"] or "not measured (--no-measure)"
        elif row["offline"]:
            row["images_per_s"] = measure_images_per_s(row["name"], trial, root)
    measurement = None
    if measure:
        measurement = {
            "engine": resolve_engine(trial.engine),
            "batch_size": trial.batch_size,
            "warmup_batches": trial.warmup,
            "timed_batches": trial.batches,
            "timed_images": trial.images,
            "threads": usable_core_count(),
            "pixels": "synthetic uint8, each backbone's input size",
        }
    return {"backbones": rows, "measurement": measurement}


def backbone_table(listing: dict[str, Any]) -> str:
    """``list_backbones``'s result as aligned text: one line per backbone, then how it was timed."""
    header = ("backbone", "weights", "input", "params", "top-1", "images/s", "note")
    lines = [header]
    for row in listing["backbones"]:
        rate = row["images_per_s"]
        lines.append(
            (
                row["name"],
                f"offline: {row['weights']}" if row["offline"] else "hub",
                "x".join(str(v) for v in row["input_size"]),
                f"{row['params'] / 1e6:.1f}M",
                f"{row['imagenet_top1']:.1f}%",
                f"{rate:.1f}" if rate is not None else "-",
                row["note"],
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    m = listing["measurement"]
    if m:
        text.append(
            f"images/s: {m['engine']} engine, {m['threads']} thread(s), {m['timed_batches']} batches of "
            f"{m['batch_size']} synthetic images ({m['timed_images']}) timed after {m['warmup_batches']} "
            "warm-up batch(es)"
        )
    text.append("top-1: published ImageNet accuracy (TF EfficientNet-Lite README; timm model cards)")
    return "\n".join(text)
