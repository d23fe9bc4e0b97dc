"""Feature engines: the backbone as one network from uint8 pixels to pooled features, run by
OpenVINO, ONNX Runtime or torch.

Why it is fast on a CPU: the backbone runs as a static-shape ONNX graph in OpenVINO (bf16 where
the CPU has it) or ONNX Runtime, with uint8 pixels in and normalisation inside the graph, and
OpenVINO overlaps several batches in asynchronous requests.
"""

from __future__ import annotations

import importlib.util
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from headstart.core.choices import FEATURE_PRECISIONS
from headstart.core.errors import HeadstartError, ParameterError
from headstart.core.io import atomic_path
from headstart.core.runtimes import compile_openvino, onnx_session, openvino_precision
from headstart.features.quantize import quantize_qdq
from headstart.models.backbones import Backbone
from headstart.models.taps import multi_layer_module

if TYPE_CHECKING:
    from torch.nn import Module

Tag = TypeVar("Tag")  # what a caller attaches to a batch to know its features again


def pixels_to_features(backbone: Backbone, layers: str = "last", flip: bool = False) -> Module:
    """uint8 NHWC pixels -> normalised NCHW floats -> pooled features, as one torch module.

    Args:
        layers: ``last`` (the backbone's pooled output) or ``multi`` (``models.taps``).
        flip: mirror the pixels left-right first (test-time augmentation inside a graph).
    """
    import torch

    net = backbone.model if layers == "last" else multi_layer_module(backbone.model)

    class PixelsToFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.mean: torch.Tensor
            self.std: torch.Tensor
            mean = torch.tensor(backbone.data_config["mean"], dtype=torch.float32) * 255.0
            std = torch.tensor(backbone.data_config["std"], dtype=torch.float32) * 255.0
            self.register_buffer("mean", mean.view(1, 3, 1, 1))
            self.register_buffer("std", std.view(1, 3, 1, 1))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = pixels.permute(0, 3, 1, 2).float()
            if flip:
                x = torch.flip(x, dims=[3])
            return self.net((x - self.mean) / self.std)

    return PixelsToFeatures().eval()


def export_onnx(backbone: Backbone, path: Path, batch_size: int | None, layers: str = "last") -> Path:
    """Export the feature network; a static batch is ~1.7x faster on CPU than a dynamic one."""
    _, h, w = backbone.data_config["input_size"]
    return export_pixels_module(pixels_to_features(backbone, layers), (h, w), path, batch_size, "features")


def export_pixels_module(
    module: Module, size: tuple[int, int], path: Path, batch_size: int | None, output: str | Sequence[str]
) -> Path:
    """Export a torch module that takes uint8 NHWC ``pixels`` of ``size`` (H, W) to ONNX.

    Args:
        batch_size: a static batch, or None for a dynamic batch axis.
        output: the name of the graph's one output, or the names of its outputs in order.
    """
    outputs = [output] if isinstance(output, str) else list(output)
    import torch

    h, w = size
    example = torch.zeros((batch_size or 2, h, w, 3), dtype=torch.uint8)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=["pixels"],
            output_names=outputs,
            dynamic_axes=None if batch_size else {name: {0: "batch"} for name in ["pixels", *outputs]},
            opset_version=17,
            dynamo=False,
        )
    return path


class Engine:
    """Runs the feature network on a uint8 batch; subclasses pick the runtime."""

    name = "base"
    precision = "fp32"
    static_batch: int | None = None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """Features of one uint8 NHWC batch of exactly the engine's batch size."""
        raise NotImplementedError

    def _pad(self, pixels: np.ndarray) -> np.ndarray:
        n = len(pixels)
        if self.static_batch and n != self.static_batch:
            padded = np.zeros((self.static_batch, *pixels.shape[1:]), dtype=pixels.dtype)
            padded[:n] = pixels
            return padded
        return pixels

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.run(self._pad(pixels))[: len(pixels)]

    def stream(self, batches: Iterable[tuple[Tag, np.ndarray]]) -> Iterator[tuple[Tag, np.ndarray]]:
        """Run ``(tag, pixels)`` batches, yielding ``(tag, features)`` in the same order.

        This one runs them one after another; runtimes with asynchronous requests overlap
        several batches, which keeps every core busy while Python decodes the next ones.
        """
        for tag, pixels in batches:
            yield tag, self(pixels)


class TorchEngine(Engine):
    """The torch module itself: always available, and the reference the others must match."""

    name = "torch"

    def __init__(self, backbone: Backbone, threads: int, layers: str = "last") -> None:
        import torch

        torch.set_num_threads(threads)
        self.module = pixels_to_features(backbone, layers).to(memory_format=torch.channels_last)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(pixels)).float().numpy()


class OnnxRuntimeEngine(Engine):
    """ONNX Runtime on the static-batch graph."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, batch_size: int, threads: int) -> None:
        self.session = onnx_session(onnx_path, threads)
        self.static_batch = batch_size

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"pixels": pixels})[0]


class OpenVinoEngine(Engine):
    """OpenVINO on the static-batch graph, bf16 where the CPU has it, batches overlapped in
    asynchronous infer requests."""

    name = "openvino"

    def __init__(self, onnx_path: Path, batch_size: int, threads: int, cache_dir: Path) -> None:
        self.precision = openvino_precision()
        # THROUGHPUT: several single-threaded streams instead of one multi-threaded one, so
        # no inference thread spins at a barrier while a decode thread holds its core
        # (~15% more images/s end to end on 2 cores than LATENCY).
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "THROUGHPUT",
        }
        self.compiled = compile_openvino(onnx_path, config, cache_dir / "openvino")
        self.requests = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.request = self.compiled.create_infer_request()
        self.static_batch = batch_size

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: pixels})[0], dtype=np.float32, copy=True)

    def stream(self, batches: Iterable[tuple[Tag, np.ndarray]]) -> Iterator[tuple[Tag, np.ndarray]]:
        import openvino as ov

        queue = ov.AsyncInferQueue(self.compiled, self.requests)
        done: dict[int, np.ndarray] = {}
        lock = threading.Lock()

        def finished(request: Any, seq: int) -> None:
            out = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
            with lock:
                done[seq] = out

        queue.set_callback(finished)
        waiting: deque[tuple[int, Tag, int]] = deque()

        def ready() -> Iterator[tuple[Tag, np.ndarray]]:
            while waiting:
                seq, tag, n = waiting[0]
                with lock:
                    out = done.pop(seq, None)
                if out is None:
                    return
                waiting.popleft()
                yield tag, out[:n]

        for seq, (tag, pixels) in enumerate(batches):
            queue.start_async({0: self._pad(pixels)}, seq)  # blocks while all requests are busy
            waiting.append((seq, tag, len(pixels)))
            yield from ready()
        queue.wait_all()
        yield from ready()
        if waiting:
            raise RuntimeError("OpenVINO inference did not return every batch")


ENGINE_MODULES = {"openvino": "openvino", "onnxruntime": "onnxruntime", "torch": "torch"}


def available_engines() -> list[str]:
    """The engines installed here, fastest first. All three are required dependencies, but an
    install without a wheel for this platform (or a broken one) must fall back, not fail."""
    return [name for name, module in ENGINE_MODULES.items() if importlib.util.find_spec(module) is not None]


def check_feature_precision(precision: str, engine: str) -> None:
    """``precision`` is one the extractor knows, and ``engine`` can run it (int8 needs ONNX)."""
    if precision not in FEATURE_PRECISIONS:
        raise ParameterError("feature_precision", f"unknown value '{precision}': choose auto or int8")
    if precision == "int8" and engine == "torch":
        raise ParameterError("feature_precision", "int8 runs in openvino or onnxruntime, not engine='torch'")


def engine_precision(engine: str, precision: str = "auto") -> str:
    """What numerics an engine will use here, known without building it (part of the cache key)."""
    if precision == "int8":
        return "int8"
    return openvino_precision() if engine == "openvino" else "fp32"


def resolve_engine(engine: str) -> str:
    """The engine ``engine`` names (``auto``: the fastest)."""
    names = available_engines()
    if engine == "auto":
        return names[0]
    if engine not in ENGINE_MODULES:
        raise ParameterError(
            "engine", f"unknown engine '{engine}': choose auto, openvino, onnxruntime or torch"
        )
    if engine not in names:
        raise ParameterError("engine", f"'{engine}' is not installed here: choose auto or {', '.join(names)}")
    return engine


def build_engine(
    backbone: Backbone,
    engine: str,
    batch_size: int,
    threads: int,
    cache_dir: Path,
    precision: str = "auto",
    calibration: Callable[[], np.ndarray] | None = None,
    layers: str = "last",
) -> Engine:
    """A ready engine; the ONNX graph is exported once per backbone and batch size into
    ``cache_dir/models`` (and OpenVINO keeps its compiled blobs in ``cache_dir/openvino``).

    Args:
        precision: ``auto`` (the runtime's native numerics) or ``int8`` (the graph quantised once,
            calibrated on ``calibration()``, and kept beside the fp32 one).
        calibration: the (N, H, W, 3) uint8 images to calibrate int8 on; called only when no
            quantised graph is cached yet.
        layers: ``last`` or ``multi`` (pooled block groups too; a graph of its own).
    """
    engine = resolve_engine(engine)
    check_feature_precision(precision, engine)
    if engine == "torch":
        return TorchEngine(backbone, threads, layers)
    tag = "" if layers == "last" else f"-{layers}"
    onnx_path = cache_dir / "models" / f"{backbone.key}{tag}-b{batch_size}.onnx"
    if not onnx_path.exists():
        export_onnx(backbone, onnx_path, batch_size, layers)
    if precision == "int8":
        onnx_path = _int8_graph(onnx_path, batch_size, calibration)
    if engine == "openvino":
        return OpenVinoEngine(onnx_path, batch_size, threads, cache_dir)
    return OnnxRuntimeEngine(onnx_path, batch_size, threads)


def _int8_graph(fp32: Path, batch_size: int, calibration: Callable[[], np.ndarray] | None) -> Path:
    """The cached int8 graph beside ``fp32``, quantised on first use.

    Rule: once written it is reused as it is (never recalibrated), so every feature cached under
    the int8 namespace comes from the same graph.
    """
    int8 = fp32.with_name(fp32.stem + "-int8.onnx")
    if int8.exists():
        return int8
    pixels = calibration() if calibration is not None else None
    if pixels is None or len(pixels) < batch_size:
        raise HeadstartError(
            f"int8 features need at least {batch_size} readable images (one batch) to calibrate on"
        )
    return quantize_qdq(fp32, int8, pixels, static_batch=batch_size)
