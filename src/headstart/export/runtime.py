"""Run an exported model (ONNX or OpenVINO) with only its runtime, Pillow and numpy.

    model = load_exported("export/")            # the folder, or its model.onnx / model.xml
    pixels = model.load_image("rose.jpg")      # (H, W, 3) uint8, exactly as headstart predict sees it
    proba = model.predict_proba(pixels[None])  # (1, C) float32
    model.classes[int(proba.argmax())]
    proba, scores = model.predict_scored(pixels[None])  # and the reject score of each image
    model.answer(proba[0], k=3, score=scores[0])  # as headstart predict --format json answers

Nothing here imports torch or timm, so a server that uses it stays small. The resize and centre
crop are headstart's own (``data.images.Preprocessor``'s fast path), read from ``export.json``:
the same pixels give the same probabilities as ``headstart predict``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import ValidationError

from headstart.core.errors import HeadstartError, ParameterError
from headstart.core.runtimes import compile_openvino, onnx_session
from headstart.data.images import decode_image, read_bytes, to_rgb
from headstart.evaluation.answers import answer
from headstart.evaluation.reject import KNN_SCORE_KIND, SCORE_KIND, reject_scores
from headstart.models.card import ExportCard, ModelCard, field_problem

EXPORT_JSON = "export.json"
LABELS_TXT = "labels.txt"
MODEL_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resize_crop(img: Image.Image, resize: int, size: tuple[int, int], interpolation: str) -> Image.Image:
    """Resize the shorter side to ``resize``, then centre-crop to ``size`` (H, W), in one resample.

    The same geometry and rounding as ``data.images.Preprocessor`` (timm's Resize + CenterCrop),
    computing only the kept pixels.
    """
    height, width = size
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    top = int(round((new_h - height) / 2.0))
    left = int(round((new_w - width) / 2.0))
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + width) * sx, (top + height) * sy)
    return img.resize((width, height), RESAMPLING[interpolation], box=box)


def prepare_pixels(image: Image.Image, preprocessing: dict[str, Any]) -> np.ndarray:
    """A decoded image -> (H, W, 3) uint8 by ``export.json``'s ``preprocessing``: RGB, resize, crop."""
    height, width = preprocessing["crop"]
    img = resize_crop(
        to_rgb(image), int(preprocessing["resize"]), (height, width), preprocessing["interpolation"]
    )
    return np.asarray(img, dtype=np.uint8)


def reliability_info(card: ModelCard) -> dict[str, Any]:
    """``export.json``'s ``calibration`` (the temperature, already applied inside the graph) and,
    when the model has the reject option on, ``reject`` (threshold and score kind)."""
    out: dict[str, Any] = {"calibration": {"temperature": card.temperature, "in_graph": True}}
    if card.reject_threshold is not None:
        out["reject"] = card.head.reject.model_dump(
            mode="json",
            exclude_unset=True,
            include={"mode", "threshold", "score", "target_accuracy", "target_coverage"},
        )
    return out


def reliability_props(info: dict[str, Any]) -> dict[str, str]:
    """The same in the model file's own metadata, as strings (``reject_threshold`` empty when off)."""
    reject = info.get("reject") or {}
    return {
        "temperature": repr(float((info.get("calibration") or {}).get("temperature", 1.0))),
        "temperature_in_graph": "true",
        "reject_threshold": "" if reject.get("threshold") is None else repr(float(reject["threshold"])),
        "reject_score": str(reject.get("score", "")),
    }


class _Runner:
    """One runtime's session: ``run(uint8 NHWC) -> float32 (N, C)``; ``run_all``: every output."""

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.run_all(pixels)[0]

    def run_all(self, pixels: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError


class _OnnxRunner(_Runner):
    def __init__(self, path: Path, threads: int | None) -> None:
        self.session = onnx_session(path, threads)
        self.input = self.session.get_inputs()[0].name

    def run_all(self, pixels: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(out, dtype=np.float32) for out in self.session.run(None, {self.input: pixels})]


class _OpenVinoRunner(_Runner):
    def __init__(self, path: Path, threads: int | None, precision: str = "fp32") -> None:
        # fp32: exact, what parity is checked with. "auto": OpenVINO's own choice, bf16 where the
        # CPU has it natively (as headstart predict's default engine), which moves probabilities by
        # ~1e-2 and runs ~1.4x faster; an fp16 or int8 file keeps its own weights' precision.
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = compile_openvino(path, config)
        self.request = self.compiled.create_infer_request()

    def run_all(self, pixels: np.ndarray) -> list[np.ndarray]:
        results = self.request.infer({0: pixels})
        return [np.array(results[i], dtype=np.float32, copy=True) for i in range(len(self.compiled.outputs))]


@dataclass
class ExportedModel:
    """An exported classifier: its classes, ``export.json`` and a session of its runtime.

    Attributes:
        path: the model file (``model.onnx`` or ``model.xml``).
        format: ``onnx`` or ``openvino``.
        classes: class names, index-aligned with the probabilities.
        metadata: ``export.json`` as a dict.
        card: ``export.json`` as read (``models.card.ExportCard``).
        input_size: (H, W) of the images ``predict_proba`` takes.
    """

    path: Path
    format: str
    classes: list[str]
    metadata: dict[str, Any]
    input_size: tuple[int, int]
    _runner: _Runner = field(repr=False)
    card: ExportCard = field(repr=False)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.metadata["preprocessing"])

    @property
    def reject_threshold(self) -> float | None:
        """The model's reject threshold (None when its reject option is off)."""
        return self.card.reject_threshold

    @property
    def score_kind(self) -> str | None:
        """The reject score's kind (``evaluation.reject``; None when the option is off)."""
        reject = self.card.reject
        return None if reject is None or reject.threshold is None else reject.score or SCORE_KIND

    def answer(self, proba_row: np.ndarray, k: int, score: float | None = None) -> dict[str, Any]:
        """One image's answer (``evaluation.answers.answer``): top-k, labels, unknown, score.

        ``score``: the image's reject score from ``predict_scored``; a ``max_probability`` model
        may leave it out (it is the top probability), a ``max_probability*knn`` one may not (it
        needs the image's features, which only the graph sees).
        """
        if score is None and self.score_kind == KNN_SCORE_KIND:
            raise HeadstartError(
                f"this model's reject score is {KNN_SCORE_KIND}: pass the score predict_scored gives"
            )
        return answer(self.classes, proba_row, min(k, len(self.classes)), self.reject_threshold, score)

    def prepare(self, image: Image.Image) -> np.ndarray:
        """A decoded image -> (H, W, 3) uint8: to RGB, headstart's resize and centre crop."""
        return prepare_pixels(image, self.metadata["preprocessing"])

    def decode(self, data: bytes) -> Image.Image:
        """Bytes of an image file -> upright RGB image, decoded as headstart predict does (large
        JPEGs at reduced size, which the resize makes invisible); ``BadImageError`` if unreadable."""
        return decode_image(data, int(self.metadata["preprocessing"]["decode_min_side"]))

    def load_image(self, source: str | Path | bytes) -> np.ndarray:
        """A file path or its bytes -> (H, W, 3) uint8, the very pixels headstart predict uses."""
        data = source if isinstance(source, bytes) else read_bytes(source)
        return self.prepare(self.decode(data))

    @property
    def thresholds(self) -> list[float] | None:
        """A multi-label model's per-class thresholds (its outputs are independent sigmoids); None
        for a single-label model."""
        thresholds = self.card.thresholds if self.card.multi_label else None
        return list(thresholds) if thresholds is not None else None

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> (N, C) float32 probabilities."""
        pixels = self._batch(pixels)
        if len(pixels) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return self._runner.run(pixels)

    def _batch(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels`` as a contiguous uint8 (N, H, W, 3) batch of the model's size, or a clear error."""
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        if pixels.ndim == 3:
            pixels = pixels[None]
        if pixels.ndim != 4 or pixels.shape[1:] != (*self.input_size, 3):
            raise HeadstartError(
                f"expected uint8 images of shape (N, {self.input_size[0]}, {self.input_size[1]}, 3), "
                f"got {pixels.shape}: use prepare() or load_image() first"
            )
        return pixels

    def predict_scored(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W, 3) uint8 RGB -> (N, C) probabilities and (N,) reject scores: the graph's
        ``score`` output for a ``max_probability*knn`` model, else the top probability."""
        pixels = self._batch(pixels)
        if self.score_kind != KNN_SCORE_KIND or len(pixels) == 0:
            proba = self.predict_proba(pixels)
            return proba, reject_scores(proba).astype(np.float32)
        outputs = self._runner.run_all(pixels)
        if len(outputs) < 2:
            raise HeadstartError(
                f"{self.path} has no score output although export.json says its reject score is "
                f"{KNN_SCORE_KIND}: export the model again with headstart export"
            )
        return outputs[0], outputs[1].reshape(-1)


def runner_for(model_path: Path, fmt: str, threads: int | None) -> _Runner:
    """A session of the runtime for ``fmt`` (``onnx`` or ``openvino``) on ``model_path``."""
    return _OnnxRunner(model_path, threads) if fmt == "onnx" else _OpenVinoRunner(model_path, threads)


def _model_file(path: Path) -> tuple[Path, str]:
    if path.is_dir():
        for fmt, name in MODEL_FILES.items():
            if (path / name).is_file():
                return path / name, fmt
        raise HeadstartError(
            f"{path} holds no exported model (model.onnx or model.xml): run headstart export"
        )
    if not path.is_file():
        raise HeadstartError(f"exported model not found: {path}")
    if path.suffix == ".onnx":
        return path, "onnx"
    if path.suffix == ".xml":
        return path, "openvino"
    raise HeadstartError(f"{path} is not an exported model: give a .onnx or .xml file or its folder")


def load_exported(
    path: str | os.PathLike[str], threads: int | None = None, precision: str = "fp32"
) -> ExportedModel:
    """Load an exported model: its folder (from ``headstart export``) or the model file in it.

    Args:
        path: the export folder, ``model.onnx`` or ``model.xml``; ``export.json`` must be beside it.
        threads: inference threads (default: the runtime's choice, every core).
        precision: OpenVINO files: ``fp32`` (exact) or ``auto`` (bf16 where the CPU has it
            natively, as ``headstart predict``'s default engine). ONNX Runtime always runs the
            file's own precision.
    """
    if precision not in ("fp32", "auto"):
        raise ParameterError("precision", f"must be fp32 or auto (got {precision!r})")
    model_path, fmt = _model_file(Path(path).expanduser())
    meta_path = model_path.parent / EXPORT_JSON
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
        card = ExportCard.model_validate(metadata)
    except FileNotFoundError as e:
        raise HeadstartError(f"{meta_path} is missing: export the model again with headstart export") from e
    except ValidationError as e:
        raise HeadstartError(f"{meta_path} is damaged ({field_problem(e)}): export the model again") from None
    except ValueError as e:
        raise HeadstartError(f"{meta_path} is damaged ({type(e).__name__}): export the model again") from e
    try:
        runner: _Runner = (
            _OnnxRunner(model_path, threads)
            if fmt == "onnx"
            else _OpenVinoRunner(model_path, threads, precision)
        )
    except Exception as e:  # noqa: BLE001 - each runtime raises its own types for a bad file
        raise HeadstartError(
            f"cannot load {model_path} ({type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''})"
        ) from e
    return ExportedModel(model_path, fmt, list(card.classes), metadata, card.input_size, runner, card)
