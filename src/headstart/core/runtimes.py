"""The one place that opens ONNX Runtime sessions and compiles OpenVINO models.

Feature extraction (``features.engines``), exported models (``export.runtime``), the export's
own checks and fine-tuning's frozen prefix (``training.prefix``) all run graphs on the CPU; they
ask here, so the provider, the thread setting and the compile lock are chosen once. Torch-free:
a server that runs an exported model imports only the runtime it uses, when it first needs it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

CPU_PROVIDERS = ["CPUExecutionProvider"]
COMPILE_LOCK = ".compile.lock"


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` of ``path`` on the CPU; ``threads`` intra-op threads
    (None or 0: ONNX Runtime's choice, every core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=CPU_PROVIDERS)


@functools.cache
def openvino_precision() -> str:
    """``bf16`` where this CPU computes it natively (OpenVINO's default there), else ``fp32``."""
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bf16" if "BF16" in caps else "fp32"


def compile_openvino(path: str | Path, config: dict[str, Any], cache_dir: Path | None = None) -> Any:
    """``path`` (ONNX or OpenVINO IR) compiled for the CPU with ``config``.

    With ``cache_dir``, OpenVINO keeps the compiled blob there (``CACHE_DIR``), and the compile
    holds a lock file in that folder. Rule: one compile at a time per cache folder, across
    processes. OpenVINO writes a compiled blob straight to its final name, so a second process
    (torchrun's other rank, a parallel run) compiling the same graph at the same moment could
    import half a blob; under the lock it waits and then imports the finished one.
    """
    import openvino as ov

    core = ov.Core()
    if cache_dir is None:
        return core.compile_model(core.read_model(str(path)), "CPU", config)
    from filelock import FileLock

    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / COMPILE_LOCK)):
        return core.compile_model(core.read_model(str(path)), "CPU", {**config, "CACHE_DIR": str(cache_dir)})
