"""``--format coreml``: the whole classifier as a Core ML ``.mlpackage`` (ML program), made with
``coremltools`` from the torch module the ONNX export is built from (``export.graph``).

Its input is an RGB image (``image``, H x W, pixel values 0-255, already resized and centre-cropped
as ``export.json`` says), so Xcode shows it as an image and Vision can feed it; normalisation is
inside. Its outputs are the calibrated probabilities (``classLabel`` and ``probabilities`` as a
Core ML classifier; with a reject score, ``probabilities`` and ``score``, the labels in the metadata).

Core ML runs only on Apple systems: here the package is checked as far as Linux allows (the spec
loads; its input, outputs and class labels are the export's), never run. ``export.json`` says so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from headstart.core.errors import HeadstartError, ParameterError
from headstart.export.graph import OUTPUT, SCORE_OUTPUT

COREML_FILE = "model.mlpackage"
EXTRA = "pip install 'headstart[coreml]'"
INPUT = "image"


def _coremltools() -> Any:
    try:
        import coremltools
    except ImportError as e:
        raise HeadstartError(f"--format coreml needs coremltools: {EXTRA}") from e
    return coremltools


def image_module(module: Any) -> Any:
    """``module`` on float (1, 3, H, W) RGB pixels 0-255, the layout Core ML gives an image input
    (the feature network casts uint8 to float first, so float pixels compute the same)."""
    import torch

    class ImageInput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = module

        def forward(self, image: Any) -> Any:
            return self.classifier(image.permute(0, 2, 3, 1))

    return ImageInput().eval()


def convert(module: Any, size: tuple[int, int], classes: list[str], scored: bool, precision: str) -> Any:
    """The Core ML model (an ML program in ``precision``)."""
    import torch

    ct = _coremltools()
    wrapped = image_module(module)
    sample = torch.zeros((1, 3, *size), dtype=torch.float32)
    # torch.export, not jit.trace: traced "same" padding (timm's tf_* backbones) computes its
    # sizes with int ops coremltools cannot convert; the exported program has them as constants
    program = torch.export.export(wrapped, (sample,)).run_decompositions({})
    return ct.convert(
        program,
        inputs=[ct.ImageType(name=INPUT, shape=sample.shape, color_layout=ct.colorlayout.RGB)],
        outputs=None if not scored else [ct.TensorType(name=OUTPUT), ct.TensorType(name=SCORE_OUTPUT)],
        classifier_config=None if scored else ct.ClassifierConfig(classes),
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
        minimum_deployment_target=ct.target.iOS15,
    )


def describe(model: Any, info: dict[str, Any]) -> None:
    """What Xcode shows, and the export's description in the model's metadata."""
    model.short_description = (
        f"{info['backbone']} image classifier ({len(info['classes'])} classes), by headstart"
    )
    model.author = "headstart"
    model.version = str(info["headstart_version"])
    model.input_description[INPUT] = (
        f"RGB photo, {info['input_size'][1]}x{info['input_size'][0]}: resize the shorter side to "
        f"{info['preprocessing']['resize']} then centre-crop (Vision: .centerCrop after that resize)"
    )
    entries = {
        k: info[k] for k in ("classes", "preprocessing", "input_size", "reject", "calibration") if k in info
    }
    for key, value in entries.items():
        model.user_defined_metadata[f"headstart.{key}"] = json.dumps(value)


def program_labels(spec: Any) -> list[str]:
    """The class labels of an ML program classifier (its ``classify`` op's ``classes``)."""
    main = spec.mlProgram.functions["main"]
    for op in main.block_specializations[main.opset].operations:
        if op.type == "classify":
            listed = op.inputs["classes"].arguments[0].value.immediateValue.list.values
            return [str(v.immediateValue.tensor.strings.values[0]) for v in listed]
    return []


def check_spec(path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """What Linux can check: the package loads as a spec; its input is the image and its outputs
    and class labels are the export's."""
    ct = _coremltools()
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    inputs = [i.name for i in spec.description.input]
    outputs = [o.name for o in spec.description.output]
    image = spec.description.input[0].type.imageType
    labels = (
        program_labels(spec)
        if "score_output" not in info
        else json.loads(spec.description.metadata.userDefined["headstart.classes"])
    )
    checked = {
        "inputs": inputs,
        "outputs": outputs,
        "image": [int(image.height), int(image.width)],
        "class_labels": labels,
        "not_checked": "Core ML cannot run on Linux: the model's outputs were not computed here",
    }
    if (
        inputs != [INPUT]
        or [int(image.height), int(image.width)] != list(info["input_size"])
        or labels != list(info["classes"])
    ):
        raise HeadstartError(f"the Core ML package's input is not the export's: {checked}")
    return checked


def write_coreml(
    bundle: Any, module: Any, precision: str, work: Path, info: dict[str, Any], target: Path
) -> None:
    """The ``.mlpackage`` at ``target``, described and spec-checked; records ``info["check"]``."""
    if precision == "int8":
        raise ParameterError("precision", "coreml exports fp32 or fp16 (int8 cannot be checked on Linux)")
    _, h, w = bundle.backbone.data_config["input_size"]
    model = convert(module, (h, w), list(info["classes"]), "score_output" in info, precision)
    describe(model, info)
    staged = work / COREML_FILE
    model.save(str(staged))
    info["check"] = check_spec(staged, info)
    if "score_output" not in info:  # a Core ML classifier names its outputs itself
        info["output"] = {"name": "classLabel_probs", "dtype": "dict[str, float]", "top_label": "classLabel"}
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(staged), target)
