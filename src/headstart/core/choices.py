"""Every fixed choice a user makes, written once: a ``typing.Literal`` for type checkers and a tuple
of its values for the checks, the estimator's constraints and the CLI (typer reads a ``Literal``
as the flag's choices).

A name here is the only place its values are spelled; a layer that checks one imports it from
here (the lowest layer), so a new value is added in one line and reaches the estimator, the CLI
and every check at once.
"""

from __future__ import annotations

from typing import Literal, get_args

from headstart.core.errors import ParameterError

Strategy = Literal["auto", "feature-extraction", "finetune"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)

# The heads a user may ask for; the library registers internal ones too (``logistic-sgd`` for
# data that does not fit in memory, ``multilabel-logistic`` for several labels per image), which
# it chooses itself and never takes from a user.
HeadName = Literal["logistic", "mlp", "knn"]
HEADS: tuple[HeadName, ...] = get_args(HeadName)

Engine = Literal["auto", "openvino", "onnxruntime", "torch"]
ENGINES: tuple[Engine, ...] = get_args(Engine)

FeatureLayers = Literal["last", "multi"]
FEATURE_LAYERS: tuple[FeatureLayers, ...] = get_args(FeatureLayers)

TestTimeAugmentation = Literal["none", "flip"]
TTA_CHOICES: tuple[TestTimeAugmentation, ...] = get_args(TestTimeAugmentation)

FeaturePrecision = Literal["auto", "int8"]
FEATURE_PRECISIONS: tuple[FeaturePrecision, ...] = get_args(FeaturePrecision)

TrainingPrecision = Literal["auto", "bf16", "fp32"]
TRAINING_PRECISIONS: tuple[TrainingPrecision, ...] = get_args(TrainingPrecision)

InferencePrecision = Literal["auto", "fp32"]
INFERENCE_PRECISIONS: tuple[InferencePrecision, ...] = get_args(InferencePrecision)

ExportFormat = Literal["onnx", "openvino", "web", "tflite", "coreml"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)

ExportPrecision = Literal["fp32", "fp16", "int8"]
EXPORT_PRECISIONS: tuple[ExportPrecision, ...] = get_args(ExportPrecision)

LabelsFrom = Literal["auto", "folder", "filename", "csv"]
LABEL_SOURCES: tuple[LabelsFrom, ...] = get_args(LabelsFrom)

MapMethod = Literal["tsne", "pca"]
MAP_METHODS: tuple[MapMethod, ...] = get_args(MapMethod)
ReportMap = Literal["tsne", "pca", "none"]
REPORT_MAPS: tuple[ReportMap, ...] = get_args(ReportMap)

MapPoints = Literal["test", "all"]
MAP_POINTS: tuple[MapPoints, ...] = get_args(MapPoints)

# ``class_weight``: the API takes None or "none" for no weighting (the CLI flag's word).
ClassWeight = Literal["none", "balanced"]
CLASS_WEIGHTS: tuple[ClassWeight, ...] = get_args(ClassWeight)


def class_weight_value(value: str | None) -> Literal["balanced"] | None:
    """``class_weight`` as the training loop takes it: None (no weighting) or ``balanced``.

    The one place ``none``/None become the same thing; anything else is a :class:`ParameterError`.
    """
    if value is None or value == "none":
        return None
    if value == "balanced":
        return "balanced"
    raise ParameterError("class_weight", f"unknown value {value!r}: use balanced or none")


def check_choice(param: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise :class:`ParameterError` naming ``param`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ParameterError(param, f"must be one of {', '.join(choices)} (got {value!r})")
