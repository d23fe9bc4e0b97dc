"""``--format tflite``: the whole classifier as a LiteRT (TensorFlow Lite) flatbuffer, checked with
the LiteRT interpreter against the torch module it was converted from.

The converter is ``litert-torch``: it converts the very torch module the ONNX export is built
from (``export.graph.classifier_module``: uint8 NHWC in, normalisation, calibrated probabilities,
the reject score where the model has one), so no second graph (ONNX -> TensorFlow -> TFLite, with
its layout transposes) stands between the file and ``predict``. It is heavy (jax, transformers,
torchao...), hence the optional extra ``headstart[tflite]``; running the file needs only
``ai-edge-litert``. The file holds batch 1 (a phone classifies one frame at a time).

The labels, preprocessing and figures are also inside the file, as the flatbuffer's ``headstart``
metadata entry (JSON; read with any flatbuffers reader), besides ``labels.txt`` and ``export.json``.
int8 is ``ai-edge-quantizer``'s int8 weights with float activations (no calibration set).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import HeadstartError, ParameterError
from headstart.core.io import atomic_path

TFLITE_FILE = "model.tflite"
METADATA_NAME = "headstart"
EXTRA = "pip install 'headstart[tflite]'"


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise HeadstartError(f"--format tflite needs {module.split('.')[0]}: {EXTRA}") from e


def convert(module: Any, size: tuple[int, int], path: Path) -> Path:
    """``module`` (uint8 (1, H, W, 3) in) as an fp32 ``.tflite`` file at ``path``."""
    import torch

    litert_torch = _require("litert_torch")
    sample = torch.zeros((1, *size, 3), dtype=torch.uint8)
    litert_torch.convert(module.eval(), (sample,)).export(str(path))
    return path


def interpreter(model: Path | bytes) -> Any:
    """A LiteRT interpreter on a file or its bytes, tensors allocated."""
    litert = _require("ai_edge_litert.interpreter")
    runner = (
        litert.Interpreter(model_content=model)
        if isinstance(model, bytes)
        else litert.Interpreter(str(model))
    )
    runner.allocate_tensors()
    return runner


def run_tflite(model: Path | bytes, pixels: np.ndarray) -> list[np.ndarray]:
    """Every output of the file on (N, H, W, 3) uint8 images, one image at a time."""
    runner = interpreter(model)
    (inp,) = runner.get_input_details()
    outputs = sorted(runner.get_output_details(), key=lambda d: d["index"])
    rows: list[list[np.ndarray]] = [[] for _ in outputs]
    for image in pixels:
        runner.set_tensor(inp["index"], image[None])
        runner.invoke()
        for row, detail in zip(rows, outputs):
            row.append(np.asarray(runner.get_tensor(detail["index"])).reshape(1, -1))
    return [np.concatenate(row) for row in rows]


def run_torch(module: Any, pixels: np.ndarray) -> list[np.ndarray]:
    """The torch module's outputs (what ``predict`` computes) on the same images."""
    import torch

    parts: list[list[np.ndarray]] = []
    with torch.no_grad():
        for i in range(0, len(pixels), 32):
            out = module(torch.from_numpy(pixels[i : i + 32]))
            parts.append([o.numpy().reshape(len(o), -1) for o in (out if isinstance(out, tuple) else (out,))])
    return [np.concatenate(p) for p in zip(*parts)]


def quantize_int8(fp32: Path, out: Path) -> Path:
    """int8 weights, float activations (``dynamic_wi8_afp32``): the uint8 input and the float
    probabilities stay as they are, which a static int8 recipe would turn into int8 tensors."""
    aeq = _require("ai_edge_quantizer")
    quantizer = aeq.quantizer.Quantizer(str(fp32))
    quantizer.load_quantization_recipe(aeq.recipe.dynamic_wi8_afp32())
    result = quantizer.quantize()
    with atomic_path(out) as tmp:
        tmp.write_bytes(result.quantized_model)
    return out


def with_metadata(model: bytes, entries: dict[str, Any]) -> bytes:
    """The flatbuffer with a ``headstart`` metadata entry holding ``entries`` as JSON."""
    import flatbuffers

    schema = _require("ai_edge_litert.schema_py_generated")
    tree = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    for old in tree.buffers or []:  # data stored after the flatbuffer (offset/size) goes inline
        if (old.offset or 0) > 1:
            old.data = np.frombuffer(model, dtype=np.uint8, count=old.size, offset=old.offset)
            old.offset = old.size = 0
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(entries).encode("utf-8"), dtype=np.uint8)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(tree.buffers) - 1
    tree.metadata = [m for m in (tree.metadata or []) if m.name != METADATA_NAME.encode()] + [entry]
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``headstart`` metadata entry of a ``.tflite`` file ({} if it has none)."""
    schema = _require("ai_edge_litert.schema_py_generated")
    tree = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    for entry in tree.metadata or []:
        if entry.name in (METADATA_NAME, METADATA_NAME.encode()):
            return dict(json.loads(bytes(tree.buffers[entry.buffer].data).decode("utf-8")))
    return {}


def check(module: Any, model: Path, pixels: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The file against the torch module on the evaluation images: top-1 agreement, the largest
    probability difference, and both accuracies (and the reject score's largest difference)."""
    mine, reference = run_tflite(model, pixels), run_torch(module, pixels)
    out = {
        "checked_with": "ai-edge-litert interpreter vs the torch module (what headstart predict computes)",
        "n": int(len(pixels)),
        "top1_agreement": float((mine[0].argmax(1) == reference[0].argmax(1)).mean()),
        "max_probability_diff": float(np.abs(mine[0] - reference[0]).max()),
        "accuracy": float((mine[0].argmax(1) == labels).mean()),
        "reference_accuracy": float((reference[0].argmax(1) == labels).mean()),
    }
    if len(mine) > 1:
        out["max_score_diff"] = float(np.abs(mine[1] - reference[1]).max())
    return out


def build_tflite(
    bundle: Any, module: Any, precision: str, work: Path, info: dict[str, Any], force: bool
) -> Path:
    """The described and checked ``.tflite`` file under ``work``; records ``info["check"]``."""
    from headstart.export.quantize import MAX_INT8_LOSS_POINTS, test_pixels

    if precision == "fp16":
        raise ParameterError(
            "precision", "tflite exports fp32 or int8 (fp16 is the GPU delegate's own choice)"
        )
    _, h, w = bundle.backbone.data_config["input_size"]
    model = convert(module, (h, w), work / "fp32.tflite")
    if precision == "int8":
        model = quantize_int8(model, work / "int8.tflite")
        info["quantization"] = {
            "method": "ai-edge-quantizer dynamic_wi8_afp32 (int8 weights, float activations)"
        }
    model = write_tflite(model, work / f"{precision}-described.tflite", info)
    try:
        pixels, labels, split = test_pixels(bundle.card, info["preprocessing"])
    except HeadstartError as e:
        raise HeadstartError(
            f"--format tflite is checked on the model's test images, which cannot be read ({e})"
        ) from e
    checked = check(module, model, pixels, labels)
    info["check"] = {**checked, "split": split}
    info["accuracy"].update({"fp32": checked["reference_accuracy"], precision: checked["accuracy"]})
    loss = (checked["reference_accuracy"] - checked["accuracy"]) * 100
    if precision == "int8" and loss > MAX_INT8_LOSS_POINTS and not force:
        raise ParameterError(
            "force",
            f"not set, and int8 loses {loss:.1f} points of {split} accuracy (fp32 "
            f"{checked['reference_accuracy']:.1%}, int8 {checked['accuracy']:.1%} on {len(labels)} images; "
            f"{MAX_INT8_LOSS_POINTS} allowed): nothing exported; set it to keep the int8 model anyway",
        )
    return model


def write_tflite(src: Path, dst: Path, info: dict[str, Any]) -> Path:
    """The file at ``dst`` with ``export.json``'s description inside (``with_metadata``); the
    figures of the check are in ``export.json`` (the file is checked after it is described)."""
    keys = (
        "classes",
        "preprocessing",
        "input",
        "output",
        "input_size",
        "score_output",
        "reject",
        "quantization",
    )
    entries: dict[str, Any] = {k: info[k] for k in keys if k in info}
    with atomic_path(dst) as tmp:
        tmp.write_bytes(with_metadata(src.read_bytes(), entries))
    return dst
