"""``export_model``: a headstart bundle -> an ONNX or OpenVINO file, with ``labels.txt`` and
``export.json`` beside it.

The graph is the whole classifier (``export.graph``): uint8 (N, H, W, 3) RGB pixels, already
resized and centre-cropped (``export.runtime.resize_crop``), in; probabilities out (and the reject
score, for a model whose score is ``max_probability*knn``); dynamic batch.
fp16 and int8 files are derived from the fp32 ONNX graph (see ``export.quantize``).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.choices import EXPORT_FORMATS, EXPORT_PRECISIONS
from headstart.core.errors import HeadstartError, ParameterError
from headstart.core.folders import staging_folder, swap_in
from headstart.core.io import atomic_path, write_json, write_text
from headstart.data.images import DataConfig, Preprocessor
from headstart.evaluation.reject import restore_bank
from headstart.export.coreml import COREML_FILE, write_coreml
from headstart.export.graph import KNN_REFUSAL, OUTPUT, SCORE_OUTPUT, classifier_module
from headstart.export.multilabel import check_precision, export_entries, file_entries
from headstart.export.runtime import (
    EXPORT_JSON,
    LABELS_TXT,
    MODEL_FILES,
    reliability_info,
    reliability_props,
)
from headstart.export.tflite import TFLITE_FILE, build_tflite
from headstart.export.web import WEB_FILES, write_web
from headstart.features.composite import FeatureSpec, spec_from_bundle
from headstart.features.engines import export_pixels_module
from headstart.models.backbones import Backbone
from headstart.models.bundle import library_versions, load_bundle
from headstart.models.card import ExportCard, ModelCard
from headstart.models.heads import Head, restore_head

FORMATS = EXPORT_FORMATS
EDGE_FILES = {"tflite": TFLITE_FILE, "coreml": COREML_FILE}  # formats converted from the torch module
PRECISIONS = EXPORT_PRECISIONS
EXPORT_FORMAT_VERSION = 1
logger = logging.getLogger(__name__)
# What an export folder holds: an earlier export alone is replaced whole by the next one.
EXPORT_FILES = frozenset(
    {*MODEL_FILES.values(), "model.bin", LABELS_TXT, EXPORT_JSON, *WEB_FILES, *EDGE_FILES.values()}
)


@dataclass
class Bundle:
    """A loaded headstart model: its card, backbone and head."""

    card: ModelCard
    backbone: Backbone
    head: Head
    source: Path
    features: FeatureSpec | None = None  # the FeatureSpec: multi-layer features, TTA, ensemble members
    bank: np.ndarray | None = None  # the reject score's neighbour bank (None: the score is max_probability)


def read_bundle(source: str | Path) -> Bundle:
    """A bundle (``model.safetensors`` or its run folder) ready to export."""
    card, state, head_arrays = load_bundle(source)
    try:
        spec = spec_from_bundle(card, state)
        bank = restore_bank(card.reject_score, head_arrays, spec.width)
        head = restore_head(card.head.name, head_arrays, card.head.params)
    except (KeyError, RuntimeError, ValueError) as e:
        raise HeadstartError(f"model file {source} is damaged or incomplete ({type(e).__name__})") from e
    return Bundle(card, spec.members[0], head, Path(source), spec, bank)


def preprocessing_spec(data_config: DataConfig) -> dict[str, Any]:
    """The exact eval transform headstart applies before the network (``data.images.Preprocessor``),
    as plain values a runtime without timm can follow; normalisation is inside the graph."""
    pre = Preprocessor(data_config)
    if not pre._fast:
        raise HeadstartError(
            f"cannot export: the backbone's eval transform ({[type(s).__name__ for s in pre._steps]}) is not "
            "a resize of the shorter side plus a centre crop, which exported models reproduce"
        )
    return {
        "resize": pre.scale_size,
        "crop": [pre.height, pre.width],
        "interpolation": pre._resample.name.lower(),
        "decode_min_side": pre.min_side,
        "mean": [float(v) for v in data_config["mean"]],
        "std": [float(v) for v in data_config["std"]],
        "steps": "decode (EXIF-upright RGB, alpha over white); resize the shorter side to `resize`; "
        "centre-crop to `crop` (H, W); uint8 NHWC into the graph, which normalises with mean/std",
    }


def _write_edge(
    bundle: Bundle, fmt: str, precision: str, work: Path, info: dict[str, Any], force: bool
) -> Path:
    """A TFLite or Core ML file converted from the classifier's torch module, checked where it can
    run here; written into ``work``'s parent folder (the stage)."""
    module = classifier_module(
        bundle.features or bundle.backbone, bundle.head, bundle.card.temperature, bundle.bank
    )
    target = work.parent / EDGE_FILES[fmt]
    info["output"]["shape"][0] = 1  # one image per call: what a phone app runs
    if "score_output" in info:
        info["score_output"]["shape"][0] = 1
    if fmt == "tflite":
        shutil.move(str(build_tflite(bundle, module, precision, work, info, force)), target)
    else:
        write_coreml(bundle, module, precision, work, info, target)
    return target


def model_format(fmt: str) -> str:
    """The model file a format writes: ``web`` is the ONNX export plus its page."""
    return "onnx" if fmt == "web" else fmt


def _check_choices(fmt: str, precision: str) -> None:
    if fmt not in FORMATS:
        raise ParameterError("format", f"unknown format '{fmt}': choose {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise ParameterError("precision", f"unknown precision '{precision}': choose fp32, fp16 or int8")


def export_fp32_onnx(bundle: Bundle, path: Path) -> Path:
    """The whole classifier as an fp32 ONNX graph with a dynamic batch axis (no metadata yet);
    with a neighbour bank, the reject score is its second output."""
    _, h, w = bundle.backbone.data_config["input_size"]
    module = classifier_module(
        bundle.features or bundle.backbone, bundle.head, bundle.card.temperature, bundle.bank
    )
    outputs = [OUTPUT] if bundle.bank is None else [OUTPUT, SCORE_OUTPUT]
    return export_pixels_module(module, (h, w), path, None, outputs)


def describe_export(bundle: Bundle, fmt: str, precision: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``export.json`` (accuracy figures are added once measured)."""
    card = bundle.card
    test = card.test_metrics
    _, h, w = bundle.backbone.data_config["input_size"]
    return {
        "format_version": EXPORT_FORMAT_VERSION,
        "format": fmt,
        "precision": precision,
        "model_file": EDGE_FILES.get(fmt) or MODEL_FILES[model_format(fmt)],
        "classes": list(card.classes),
        "input": {"name": "pixels", "dtype": "uint8", "layout": "NHWC", "channels": "RGB"},
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["N", len(card.classes)]},
        **(
            {}
            if bundle.bank is None
            else {"score_output": {"name": SCORE_OUTPUT, "dtype": "float32", "shape": ["N"]}}
        ),
        "input_size": [h, w],
        "preprocessing": spec,
        "backbone": card.backbone.name,
        "strategy": card.strategy,
        "head": card.head.name,
        **({"features": card.features.model_dump(exclude_unset=True)} if card.features else {}),
        "source_model": str(bundle.source),
        "test_metrics": {k: test[k] for k in ("accuracy", "top_k_accuracy", "n") if k in test},
        "accuracy": {"fp32_headstart": test.get("accuracy")},
        "headstart_version": library_versions().get("headstart", "unknown"),
        "versions": library_versions(),
        **export_entries(card),
        **reliability_info(card),
    }


def file_metadata(info: dict[str, Any]) -> dict[str, str]:
    """What the model file itself carries (ONNX metadata_props / OpenVINO rt_info), as strings."""
    accuracy = info["accuracy"].get(info["precision"], info["accuracy"].get("fp32_headstart"))
    return {
        "headstart_version": str(info["headstart_version"]),
        "classes": json.dumps(info["classes"]),
        "preprocessing": json.dumps(info["preprocessing"]),
        "input_size": json.dumps(info["input_size"]),
        "backbone": info["backbone"],
        "precision": info["precision"],
        "test_accuracy": "" if accuracy is None else f"{accuracy:.6f}",
        **file_entries(info),
        **reliability_props(info),
    }


def write_onnx(src: Path, dst: Path, props: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(src))
    onnx.helper.set_model_props(model, props)
    model.producer_name = "headstart"
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))


def write_openvino(src: Path, dst: Path, props: dict[str, str], compress_to_fp16: bool) -> None:
    """Convert (from ONNX) or re-save (from OpenVINO IR) with ``rt_info``, into ``dst`` (.xml + .bin)."""
    import openvino as ov

    model = ov.Core().read_model(str(src)) if src.suffix == ".xml" else ov.convert_model(str(src))
    for key, value in props.items():
        model.set_rt_info(value, ["headstart", key])
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".ov-") as tmp_dir:
        staged = Path(tmp_dir) / dst.name
        ov.save_model(model, str(staged), compress_to_fp16=compress_to_fp16)
        for suffix in (".bin", ".xml"):  # the weights first: a reader that sees the .xml finds its .bin
            with atomic_path(dst.with_suffix(suffix)) as final:
                shutil.move(str(staged.with_suffix(suffix)), final)


def export_stage(out: Path) -> Path:
    """Where an export is written: a staging folder swapped in whole at the end (``core.folders``)
    when ``out`` is new or holds an earlier export alone, so a crash leaves the old export or
    the new one; ``out`` itself when it also holds other files (they are never deleted)."""
    if out.is_dir() and any(not _export_file(p.name) for p in out.iterdir()):
        return out
    if out.exists() and not out.is_dir():
        raise HeadstartError(f"{out} is a file: give a folder for the export")
    return staging_folder(out)


def _export_file(name: str) -> bool:
    return name in EXPORT_FILES or name.startswith(".export-")


def write_beside(out_dir: Path, info: dict[str, Any]) -> None:
    write_text(out_dir / LABELS_TXT, "".join(f"{c}\n" for c in info["classes"]))
    write_json(out_dir / EXPORT_JSON, ExportCard.model_validate(info).to_json())


def _fp16_onnx(src: Path, dst: Path) -> Path:
    """Weights and arithmetic in fp16; the uint8 input and float32 output stay as they are."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst


def _build(bundle: Bundle, fmt: str, precision: str, work: Path, info: dict[str, Any], force: bool) -> Path:
    """The model file in its final format and precision under ``work`` (no metadata yet)."""
    fp32 = export_fp32_onnx(bundle, work / "fp32.onnx")
    if precision == "fp16" and fmt in ("onnx", "web"):
        return _fp16_onnx(fp32, work / "fp16.onnx")
    if precision == "int8":
        from headstart.export.quantize import quantize_checked

        return quantize_checked(bundle, fp32, model_format(fmt), work, info, force)
    return fp32


def _remove_other_models(stage: Path, kept: str) -> None:
    """One model per folder: the runtime loads whichever is there."""
    for other in [*MODEL_FILES.values(), "model.bin", *EDGE_FILES.values()]:
        path = stage / other
        if other == kept or (kept.endswith(".xml") and other == "model.bin"):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def export_model(
    source: str | Path,
    out_dir: str | Path,
    format: str = "onnx",  # noqa: A002 - the CLI's word for it
    precision: str = "fp32",
    force: bool = False,
) -> Path:
    """Export a headstart model to ``out_dir``: the model file, ``labels.txt`` and ``export.json``.

    Args:
        source: ``model.safetensors`` or the run folder holding it.
        out_dir: the folder to write (created; files of an earlier export there are replaced).
        format: ``onnx`` (``model.onnx``), ``openvino`` (``model.xml`` + ``model.bin``) or ``web``
            (``model.onnx`` and ``index.html``, which runs it in the browser: ``export.web``).
        precision: ``fp32``, ``fp16`` or ``int8`` (post-training static quantisation calibrated on the
            model's training images; refused if it loses over 1 point of test accuracy).
        force: keep an int8 model even when it loses more than that.

    Returns:
        The model file's path.
    """
    _check_choices(format, precision)
    bundle = read_bundle(source)
    if bundle.head.name == "knn":
        raise HeadstartError(KNN_REFUSAL)
    check_precision(bundle.card, precision)
    spec = preprocessing_spec(bundle.backbone.data_config)
    info = describe_export(bundle, format, precision, spec)
    out = Path(out_dir).expanduser()
    stage = export_stage(out)
    target = stage / (EDGE_FILES.get(format) or MODEL_FILES[model_format(format)])
    logger.info(
        f"exporting {bundle.source} ({info['backbone']}, {info['head']} head) to {out} in {precision}"
    )
    with tempfile.TemporaryDirectory(dir=stage, prefix=".export-") as tmp:
        if format in EDGE_FILES:
            _write_edge(bundle, format, precision, Path(tmp), info, force)
        elif model_format(format) == "onnx":
            write_onnx(_build(bundle, format, precision, Path(tmp), info, force), target, file_metadata(info))
        else:
            built = _build(bundle, format, precision, Path(tmp), info, force)
            write_openvino(built, target, file_metadata(info), compress_to_fp16=precision == "fp16")
    _remove_other_models(stage, target.name)
    write_beside(stage, info)
    if format == "web":
        write_web(stage, target, info, logger.info)
    if stage != out:
        swap_in(stage, out)
        target = out / target.name
    logger.info(f"wrote {target}, {LABELS_TXT} and {EXPORT_JSON}")
    return target
