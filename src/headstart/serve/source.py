"""What ``headstart serve`` runs: an export folder as given, or a trained model exported first.

Why a subprocess for the export: exporting needs torch (about 1 GB of memory once imported),
and the server must stay small. ``python -m headstart export`` runs in its own process, writes
into the cache, and exits; the server process only ever imports the exported model's runtime.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from headstart.core.errors import HeadstartError
from headstart.features.cache import default_cache_dir

EXPORT_JSON = "export.json"
MODEL_FILE = "model.safetensors"


def is_export(path: Path) -> bool:
    """An export folder (``export.json`` inside), or an exported model file beside its ``export.json``."""
    if path.is_dir():
        return (path / EXPORT_JSON).is_file()
    return path.suffix in (".onnx", ".xml") and (path.parent / EXPORT_JSON).is_file()


def _model_file(path: Path) -> Path:
    candidate = path / MODEL_FILE if path.is_dir() else path
    if candidate.is_file() and candidate.suffix == ".safetensors":
        return candidate
    raise HeadstartError(
        f"{path} is neither an export folder (with {EXPORT_JSON}) nor a model ({MODEL_FILE} or its run folder)"
    )


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:20]


def export_for_serving(model: Path, cache_dir: Path | None = None, fmt: str = "openvino") -> Path:
    """The export folder of ``model`` in the cache, made by ``python -m headstart export`` when missing.

    The folder is named by the model file's content hash, so a retrained model is exported again
    and an unchanged one is not.

    Args:
        model: ``model.safetensors`` or its run folder.
        cache_dir: the cache (default ``$HEADSTART_CACHE`` or ``~/.cache/headstart``).
        fmt: ``openvino`` (the default: on this project's x86 CPUs it runs the exported network
            about 1.5x faster than ONNX Runtime, and it is headstart predict's own default engine)
            or ``onnx``.
    """
    model_file = _model_file(model)
    target = Path(cache_dir or default_cache_dir()) / "exports" / f"{_file_digest(model_file)}-{fmt}"
    if is_export(target):
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "headstart",
        "export",
        str(model_file),
        "--format",
        fmt,
        "--out",
        str(partial),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not is_export(partial):
        shutil.rmtree(partial, ignore_errors=True)
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise HeadstartError(f"exporting {model_file} for serving failed: {detail[0][:300]}")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # whole or absent: a half-written export is never served
    return target


def resolve_model(path: Path, cache_dir: Path | None = None) -> Path:
    """The export to serve for ``path`` (an export folder or file, a model, or a run folder)."""
    if not path.exists():
        raise HeadstartError(f"not found: {path}")
    return path if is_export(path) else export_for_serving(path, cache_dir)
