"""The model card: what a bundle says about itself, as one typed schema.

A bundle's safetensors header holds this card as JSON (``models.bundle``); ``export.json`` holds
an :class:`ExportCard` derived from it; ``GET /v1/model`` answers a :class:`ModelSummary`. Every
reader of a saved model reads these fields, never pieces of a ``dict``.

Why pydantic (v2) and not dataclasses: a header is untrusted input (a crafted file is a threat
the server and ``headstart predict`` meet), and pydantic validates it field by field with bounds,
literal choices and nested shapes, reporting the path of the first bad field; the same models give
the OpenAPI schema of ``GET /v1/model`` (FastAPI's ``response_model``). Dataclasses would need
the hand-written checks this module replaced and a second description for the API.

Parsing is strict (the JSON types as written: ``true`` is not a number, ``"3"`` is not an int), and
every size is bounded, so a crafted header gives one line naming its field instead of a
traceback or a huge allocation. Fields a reader does not use (``created``, the split's counts,
the metrics' details) are kept as written (``extra="allow"``), and a card is written back with
exactly the keys it was given, so a default model's header stays the format older versions read.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from headstart.core.errors import HeadstartError
from headstart.models.taps import LAYER_CHOICES, TTA_CHOICES

BUNDLE_FORMAT = 1
MAX_CLASSES = 100_000
MAX_SIDE = 4096  # input side in pixels
MAX_FEATURES = 65_536
MAX_MEMBERS = 8
FEATURE_EXTRACTION = "feature-extraction"

Side = Annotated[int, Field(ge=1, le=MAX_SIDE)]
Three = Annotated[list[float], Field(min_length=3, max_length=3)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Width = Annotated[int, Field(ge=1, le=MAX_FEATURES)]


class _Card(BaseModel):
    """Strict JSON types; fields this schema does not name are kept as written."""

    model_config = ConfigDict(strict=True, extra="allow")


def _problem(message: str) -> PydanticCustomError:
    return PydanticCustomError("card", message)


class DataConfig(_Card):
    """The backbone's eval preprocessing (timm's data config)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    input_size: Annotated[list[Side], Field(min_length=3, max_length=3)]
    interpolation: str | None = None
    mean: Three | None = None
    std: Three | None = None
    crop_pct: Annotated[float, Field(ge=0.05, le=4)] = 1.0
    crop_mode: str | None = None

    @field_validator("input_size")
    @classmethod
    def _channels(cls, size: list[int]) -> list[int]:
        if size[0] != 3:
            raise _problem("must be [3, height, width]")
        return size

    def timm(self) -> dict[str, Any]:
        """As timm's ``resolve_data_config`` gives it (tuples), with only the keys the file has."""
        return {
            k: tuple(v) if isinstance(v, (list, tuple)) else v
            for k, v in self.model_dump(exclude_unset=True).items()
            if v is not None
        }


class BackboneCard(_Card):
    name: str
    weights_source: str = "bundle"
    weights_id: str = ""
    num_features: Width
    data_config: DataConfig

    @field_validator("name", mode="before")
    @classmethod
    def _timm_name(cls, value: Any) -> Any:
        if not (isinstance(value, str) and 0 < len(value) <= 200):
            raise _problem("must be a timm model name")
        return value

    def describe(self) -> dict[str, Any]:
        """The ``Backbone.describe()`` dict this card was made from."""
        return self.model_dump(exclude_unset=True)


class Calibration(_Card):
    temperature: Annotated[float, Field(gt=0, lt=1e6)] = 1.0


class RejectCard(_Card):
    """The reject option as saved: off when ``threshold`` is None."""

    mode: Literal["auto", "off"] | Fraction = "auto"
    threshold: Fraction | None = None
    score: str | None = None
    target_accuracy: float = 0.95
    # saved before the coverage target existed: 1, the accuracy rule its threshold came from
    target_coverage: Annotated[float, Field(gt=0, le=1)] = 1.0


class HeadCard(_Card):
    name: str
    params: dict[str, Any]
    calibration: Calibration = Calibration()
    reject: RejectCard = RejectCard()


class Settings(_Card):
    """What a loaded model reuses of its training parameters."""

    seed: Annotated[int, Field(ge=0, le=2**63)] = 0
    split: Three = [0.8, 0.1, 0.1]
    top_k: Annotated[int, Field(ge=1, le=MAX_CLASSES)] = 3
    feature_precision: str = "auto"


class SplitRecord(_Card):
    """Which file went to which split (``files``: rows of [path, label, split]), and how."""

    method: str | None = None
    seed: int | None = None
    fractions: list[float] | None = None
    root: str | None = None
    counts: dict[str, dict[str, int]] | None = None
    files: list[Any] = []

    @field_validator("files")
    @classmethod
    def _rows(cls, files: list[Any]) -> list[Any]:
        if not all(isinstance(r, list) and len(r) == 3 and all(isinstance(v, str) for v in r) for r in files):
            raise _problem("must be rows of [path, label, split]")
        return files

    def rows(self, split: str) -> list[tuple[str, str]]:
        """(path relative to the root, label) of each file in ``split``."""
        return [(path, label) for path, label, part in self.files if part == split]


class Metrics(_Card):
    """The held-out scores saved with the model (``test`` and ``val`` summaries, per class)."""

    test: dict[str, Any] | None = None
    val: dict[str, Any] | None = None
    evaluated_on: str | None = None


class MultiLabelEntry(_Card):
    thresholds: list[float]
    threshold_metric: str = "f1"


class FeaturesCard(_Card):
    """Multi-layer features, test-time flips and ensemble members (absent: one backbone's last
    features, as every bundle written before the entry)."""

    members: Annotated[list[BackboneCard], Field(min_length=1, max_length=MAX_MEMBERS)]
    layers: Literal[LAYER_CHOICES] = "last"  # type: ignore[valid-type]
    tta: Literal[TTA_CHOICES] = "none"  # type: ignore[valid-type]
    group_widths: list[list[Width]] = []
    selected_groups: list[Annotated[int, Field(ge=0)]] | None = None

    @model_validator(mode="after")
    def _groups(self) -> FeaturesCard:
        flat = [w for ws in self.group_widths for w in ws]
        if len(self.group_widths) not in (0, len(self.members)):
            raise _problem("group_widths must be a list of feature widths per backbone")
        if sum(flat) > MAX_FEATURES:
            raise _problem(f"more than {MAX_FEATURES} features")
        if self.selected_groups is not None and any(g >= len(flat) for g in self.selected_groups):
            raise _problem("selected_groups must index its feature groups")
        return self


class ModelCard(_Card):
    """What a bundle says about itself: the header of ``model.safetensors``."""

    format: str = "headstart"
    format_version: Annotated[int, Field(ge=0, le=BUNDLE_FORMAT)] = 0
    classes: list[str]
    strategy: str = FEATURE_EXTRACTION
    backbone: BackboneCard
    head: HeadCard
    settings: Settings = Settings()
    split: SplitRecord | None = None
    metrics: Metrics | None = None
    versions: dict[str, str] = {}
    created: str | None = None
    multi_label: MultiLabelEntry | None = None
    features: FeaturesCard | None = None

    @field_validator("classes", mode="before")
    @classmethod
    def _classes(cls, value: Any) -> Any:
        if not (isinstance(value, list) and 0 < len(value) <= MAX_CLASSES):
            raise _problem(f"must be a list of 1 to {MAX_CLASSES} names")
        if not all(isinstance(c, str) for c in value) or len(set(value)) != len(value):
            raise _problem("must be distinct names")
        return value

    @model_validator(mode="after")
    def _one_threshold_per_class(self) -> ModelCard:
        if self.multi_label is not None and len(self.multi_label.thresholds) != len(self.classes):
            raise _problem("'multi_label' must be an object with one threshold per class")
        return self

    # ---------------------------------------------------------------- what readers ask

    @property
    def is_multilabel(self) -> bool:
        return self.multi_label is not None

    @property
    def temperature(self) -> float:
        """The calibration temperature (1 for a model saved without one)."""
        return self.head.calibration.temperature

    @property
    def reject_threshold(self) -> float | None:
        """The saved reject threshold (None: the option is off, or the model predates it)."""
        return self.head.reject.threshold

    @property
    def reject_score(self) -> str | None:
        """The reject score's kind while the option is on (``max_probability`` for an older
        bundle that did not name it), None while it is off."""
        if self.reject_threshold is None:
            return None
        return self.head.reject.score or "max_probability"

    @property
    def test_metrics(self) -> dict[str, Any]:
        return dict((self.metrics.test if self.metrics else None) or {})

    @property
    def evaluated_on(self) -> str:
        return (self.metrics.evaluated_on if self.metrics else None) or "test"

    def members(self) -> list[BackboneCard]:
        """Every backbone whose features the head reads (the first is ``backbone``)."""
        return self.features.members if self.features is not None else [self.backbone]

    def to_meta(self) -> dict[str, Any]:
        """The card as the header's JSON object, with exactly the keys it was built from."""
        return self.model_dump(exclude_unset=True)

    def to_header(self) -> str:
        return json.dumps(self.to_meta())

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ModelCard:
        """A card from a writer's dict (tuples and numpy scalars as JSON has them), checked."""
        return parse_card(json.dumps(meta, default=_plain), "the model")


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON values (writers hand in fitted attributes)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def field_problem(error: ValidationError) -> str:
    """The first problem of ``error`` as one line naming its field: ``'classes': field required``,
    ``backbone data_config input_size: ...``."""
    first = error.errors(include_url=False)[0]
    loc = [str(part) for part in first["loc"]]
    if first["type"] in ("model_type", "model_attributes_type", "dict_type"):
        message = "must be an object"
    else:
        message = first["msg"][:1].lower() + first["msg"][1:]
    if not loc:
        return message
    where = f"'{loc[0]}'" if len(loc) == 1 else " ".join(loc)
    return f"{where}: {message}"


def parse_card(header: str | bytes, where: str) -> ModelCard:
    """The card of a header (JSON text): a HeadstartError of one line for a damaged or crafted
    one. ``where`` names the file in that line. Python's own JSON reader parses it, as it wrote
    it: class names from file names may hold lone surrogates (undecodable bytes), which it
    escapes and a strict JSON parser refuses."""
    try:
        return ModelCard.model_validate(json.loads(header))
    except ValidationError as e:
        raise HeadstartError(f"model file {where} is damaged or crafted: {field_problem(e)}") from None


# ------------------------------------------------------------------------- exported models


class ExportCard(_Card):
    """``export.json``: what an exported model (ONNX or OpenVINO) says about itself, made from
    the bundle's card by ``export.exporter``. A runtime needs ``classes`` and ``input_size``;
    ``preprocessing`` (``resize``, ``crop``, ``interpolation``, ``decode_min_side``, ``mean``,
    ``std``) to prepare images as headstart does."""

    model_config = ConfigDict(strict=False, extra="allow")

    format_version: int = 1
    format: Literal["onnx", "openvino"] | None = None
    precision: str | None = None
    model_file: str | None = None
    classes: Annotated[list[str], Field(min_length=1, max_length=MAX_CLASSES)]
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    score_output: dict[str, Any] | None = None
    input_size: tuple[Side, Side]
    preprocessing: dict[str, Any] | None = None
    backbone: str | None = None
    strategy: str | None = None
    head: str | None = None
    features: dict[str, Any] | None = None
    source_model: str | None = None
    test_metrics: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    headstart_version: str | None = None
    versions: dict[str, str] | None = None
    multi_label: bool = False
    output_activation: str | None = None
    thresholds: list[float] | None = None
    threshold_metric: str | None = None
    calibration: dict[str, Any] | None = None
    reject: RejectCard | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)

    @property
    def reject_threshold(self) -> float | None:
        return self.reject.threshold if self.reject is not None else None


class ModelSummary(BaseModel):
    """``GET /v1/model``: what a client needs to send images and read answers (classes, the
    preprocessing, the task and its thresholds, held-out metrics, headstart's version), and
    nothing about the server (no file paths, no other libraries' versions)."""

    classes: list[str]
    task: Literal["single-label", "multi-label"] = "single-label"
    input_size: list[int]
    backbone: str | None = None
    head: str | None = None
    strategy: str | None = None
    format: str | None = None
    precision: str | None = None
    preprocessing: dict[str, Any] | None = None
    test_metrics: dict[str, Any] | None = None
    thresholds: list[float] | None = Field(None, description="multi-label: each class's threshold")
    reject_threshold: float | None = Field(None, description="answers scored at or below it are 'unknown'")
    headstart_version: str | None = None

    @classmethod
    def of(cls, classes: list[str], input_size: Any, export: dict[str, Any]) -> ModelSummary:
        """The summary of a served model: its classes and input size, and ``export.json``."""
        reject = export.get("reject") or {}
        return cls(
            classes=list(classes),
            task="multi-label" if export.get("multi_label") else "single-label",
            input_size=[int(v) for v in input_size],
            backbone=export.get("backbone"),
            head=export.get("head"),
            strategy=export.get("strategy"),
            format=export.get("format"),
            precision=export.get("precision"),
            preprocessing=export.get("preprocessing"),
            test_metrics=export.get("test_metrics", export.get("metrics")),
            thresholds=export.get("thresholds") if export.get("multi_label") else None,
            reject_threshold=reject.get("threshold"),
            headstart_version=export.get("headstart_version", export.get("version")),
        )
