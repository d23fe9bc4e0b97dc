"""int8: post-training static quantisation, calibrated on the model's own training images, and
checked on its test split before anything is written.

How: ONNX Runtime's ``quantize_static`` turns the fp32 ONNX graph into a QDQ graph (int8 weights
per output channel, uint8 activations, MinMax ranges from up to 300 training images). The same QDQ
file serves both formats: ONNX Runtime runs it in int8, and OpenVINO reads QuantizeLinear /
DequantizeLinear pairs as its own FakeQuantize and runs int8 kernels, so an OpenVINO int8 model is
the QDQ graph converted to IR.

Why not NNCF (OpenVINO's own quantiser): nncf 3.4 would install without touching torch, but it adds
five packages (networkx, ninja, pydot, tabulate and its own pins) for what ORT's quantiser, part of
onnxruntime (a required dependency), already does; and one calibration for both formats gives them
the same int8 ranges, so their accuracies compare. On flowers the QDQ graph keeps accuracy in both
runtimes (test split: fp32 93.4%, int8 94.2% in ONNX Runtime and 93.7% in OpenVINO).

The bundle records its split (data root and every file's split), so a bare ``model.safetensors``
calibrates as well as its run folder, as long as the training images are still where they were.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import BadImageError, HeadstartError, ParameterError
from headstart.core.system import usable_core_count
from headstart.data.images import decode_image, read_bytes
from headstart.export.graph import HEAD_SCOPE
from headstart.export.runtime import prepare_pixels
from headstart.features.quantize import quantize_qdq
from headstart.models.card import ModelCard

CALIBRATION_IMAGES = 300
MAX_INT8_LOSS_POINTS = 1.0


def split_files(card: ModelCard, split: str) -> list[tuple[Path, str]]:
    """(path, label) of the bundle's files in ``split``; a clear error when the images are gone."""
    record = card.split
    root = record.root if record is not None else None
    if record is None or not root or not record.files:
        raise HeadstartError(
            "int8 needs calibration images, and this model records no training split (a model saved "
            "without one): export fp32 or fp16, or retrain with headstart train to record it"
        )
    chosen = [(Path(root) / rel, label) for rel, label in record.rows(split)]
    if chosen and not any(p.is_file() for p, _ in chosen[:20]):
        raise HeadstartError(
            f"int8 needs the model's {split} images for calibration and checking, and they are not under "
            f"{root} any more: put the data back there, or export fp32 or fp16"
        )
    return chosen


def load_pixels(paths: Sequence[Path], preprocessing: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) uint8 of the readable images, as the runtime prepares them, and which were read."""
    min_side = int(preprocessing["decode_min_side"])

    def one(path: Path) -> np.ndarray | None:
        try:
            return prepare_pixels(decode_image(read_bytes(path), min_side), preprocessing)
        except BadImageError:
            return None

    with ThreadPoolExecutor(max(1, usable_core_count())) as pool:
        arrays = list(pool.map(one, paths))
    ok = np.array([a is not None for a in arrays], dtype=bool)
    h, w = preprocessing["crop"]
    kept = [a for a in arrays if a is not None]
    return (np.stack(kept) if kept else np.zeros((0, h, w, 3), np.uint8)), ok


def calibration_pixels(card: ModelCard, preprocessing: dict[str, Any], limit: int) -> np.ndarray:
    """Up to ``limit`` training images, drawn evenly at random (fixed seed) so every class is seen."""
    train = split_files(card, "train")
    random.Random(0).shuffle(train)
    pixels, _ = load_pixels([p for p, _ in train[:limit]], preprocessing)
    if len(pixels) == 0:
        raise HeadstartError(
            "int8 needs calibration images: none of the model's training images could be read"
        )
    return pixels


def quantize_onnx(fp32: Path, out: Path, pixels: np.ndarray) -> Path:
    """QDQ ONNX calibrated on ``pixels`` (see ``features.quantize.quantize_qdq``).

    The head stays fp32: it is a few thousand multiply-adds, and its standardised weights can hold
    outliers that int8 would flatten. So does the reject score of a model with a neighbour bank
    (its nodes are in the head's scope): its similarities to the bank stay float products, and
    only the int8 backbone's features move it (``score_drift`` measures by how much).
    """
    return quantize_qdq(fp32, out, pixels, keep_fp32=HEAD_SCOPE)


def run_outputs(model_file: Path, fmt: str, pixels: np.ndarray) -> list[np.ndarray]:
    """Every output of a model file on prepared images, with the export runtime."""
    from headstart.export.runtime import runner_for

    runner = runner_for(model_file, fmt, None)
    batches = [runner.run_all(pixels[i : i + 32]) for i in range(0, len(pixels), 32)]
    return [np.concatenate(parts) for parts in zip(*batches)]


def accuracy(model_file: Path, fmt: str, pixels: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """Top-1 accuracy of a model file on prepared images, with the export runtime."""
    proba = run_outputs(model_file, fmt, pixels)[0]
    return float((proba.argmax(1) == labels).mean())


def score_drift(
    fp32: Path, int8: Path, fmt: str, pixels: np.ndarray, threshold: float | None
) -> dict[str, float]:
    """How far the int8 graph's reject scores are from the fp32 graph's on the same images (its
    features are int8's, its bank products float), and how often both turn an image down alike.
    Recorded in ``export.json`` so the threshold's meaning under int8 is known, not assumed."""
    reference, scores = run_outputs(fp32, "onnx", pixels)[1], run_outputs(int8, fmt, pixels)[1]
    diff = np.abs(scores - reference)
    out = {"score_max_abs_diff": float(diff.max()), "score_mean_abs_diff": float(diff.mean())}
    if threshold is not None:
        out["unknown_agreement"] = float(((scores <= threshold) == (reference <= threshold)).mean())
    return out


def test_pixels(card: ModelCard, preprocessing: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, str]:
    """The bundle's evaluation images (test split; val where it has none) and their class indices."""
    split = card.evaluated_on if card.evaluated_on in ("test", "val") else "test"
    files = split_files(card, split)
    if not files:
        raise HeadstartError(
            f"int8 needs test images to check its accuracy: the model's {split} split is empty"
        )
    index = {c: i for i, c in enumerate(card.classes)}
    pixels, ok = load_pixels([p for p, _ in files], preprocessing)
    labels = np.array([index[label] for (_, label), good in zip(files, ok) if good], dtype=np.int64)
    return pixels, labels, split


def quantize_checked(
    bundle: Any, fp32: Path, fmt: str, work: Path, info: dict[str, Any], force: bool
) -> Path:
    """The int8 QDQ ONNX file, after checking its test accuracy against fp32's in ``fmt``'s runtime.

    Records ``info["accuracy"]`` (fp32, int8, split and image count) and the calibration set in
    ``info["calibration"]``; raises when int8 loses more than ``MAX_INT8_LOSS_POINTS`` unless ``force``.
    """
    spec = info["preprocessing"]
    calibration = calibration_pixels(bundle.card, spec, CALIBRATION_IMAGES)
    int8 = quantize_onnx(fp32, work / "int8.onnx", calibration)
    checked_int8 = int8 if fmt == "onnx" else _openvino_ir(int8, work / "int8.xml")
    pixels, labels, split = test_pixels(bundle.card, spec)
    n_classes = len(bundle.card.classes)
    fp32_acc = accuracy(fp32, "onnx", pixels, labels, n_classes)
    int8_acc = accuracy(checked_int8, fmt, pixels, labels, n_classes)
    info["accuracy"].update({"fp32": fp32_acc, "int8": int8_acc, "split": split, "n": int(len(labels))})
    if getattr(bundle, "bank", None) is not None and len(pixels):
        threshold = (info.get("reject") or {}).get("threshold")
        info["accuracy"].update(score_drift(fp32, checked_int8, fmt, pixels, threshold))
    info["calibration"] = {
        "images": int(len(calibration)),
        "split": "train",
        "method": "minmax, QDQ, per-channel",
    }
    loss = (fp32_acc - int8_acc) * 100
    if loss > MAX_INT8_LOSS_POINTS and not force:
        raise ParameterError(
            "force",
            f"not set, and int8 loses {loss:.1f} points of {split} accuracy (fp32 {fp32_acc:.1%}, int8 "
            f"{int8_acc:.1%} on {len(labels)} images; {MAX_INT8_LOSS_POINTS} allowed): nothing exported; "
            "set it to keep the int8 model anyway, or export fp16",
        )
    return int8


def _openvino_ir(onnx_path: Path, xml: Path) -> Path:
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml
