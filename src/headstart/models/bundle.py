"""One-file model bundle: a safetensors file (no pickle) with the model card in its header.

Tensors are ``backbone.*`` (the timm network's state) and ``head.*`` (the head's arrays); the
header's ``headstart`` entry is the :class:`~headstart.models.card.ModelCard` as JSON: class
names, backbone and preprocessing, head parameters, the split, metrics and library versions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.models.card import BUNDLE_FORMAT, ModelCard, parse_card

BUNDLE_SUFFIX = ".safetensors"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("headstart", "torch", "timm", "numpy", "scikit-learn", "onnxruntime", "openvino"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def save_bundle(
    path: str | Path,
    card: ModelCard,
    backbone_state: dict[str, np.ndarray],
    head_arrays: dict[str, np.ndarray],
) -> Path:
    """Write ``card`` and the arrays as one bundle (see :func:`write_bundle`)."""
    meta = {k: v for k, v in card.to_meta().items() if k not in ("format", "format_version")}
    header = {"format": "headstart", "format_version": BUNDLE_FORMAT, **meta}
    return write_bundle(path, header, backbone_state, head_arrays)


def write_bundle(
    path: str | Path,
    header: dict[str, Any],
    backbone_state: dict[str, np.ndarray],
    head_arrays: dict[str, np.ndarray],
) -> Path:
    """Write ``header`` as given (tests craft damaged ones with it) beside the arrays, atomically
    (temp file, then rename): an interrupted save never leaves half a model."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"backbone.{k}": np.ascontiguousarray(v) for k, v in backbone_state.items()}
    tensors.update({f"head.{k}": np.ascontiguousarray(v) for k, v in head_arrays.items()})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"headstart": json.dumps(header)})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; a model is shared like any file
    os.replace(tmp, path)
    return path


def load_bundle(path: str | Path) -> tuple[ModelCard, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Return (model card, backbone state, head arrays); a one-line error for anything else."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if path.is_dir() and (path / f"model{BUNDLE_SUFFIX}").is_file():
        path = path / f"model{BUNDLE_SUFFIX}"
    if not path.is_file():
        raise HeadstartError(
            f"model file not found: {path} (train one with: headstart train DATA --out RUN_DIR)"
        )
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
            if "headstart" not in header:
                raise HeadstartError(f"{path} is a safetensors file but not a headstart model")
            text = header["headstart"]
            meta = json.loads(text)
            backbone, head = {}, {}
            for key in f.keys():
                if key.startswith("backbone."):
                    backbone[key[len("backbone.") :]] = f.get_tensor(key)
                elif key.startswith("head."):
                    head[key[len("head.") :]] = f.get_tensor(key)
    except HeadstartError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors/json raise many types for damage
        raise HeadstartError(
            f"model file {path} is damaged or not a headstart model ({type(e).__name__}): "
            "re-run headstart train to write it again"
        ) from e
    if not isinstance(meta, dict):
        raise HeadstartError(f"model file {path} is damaged: its metadata is not a JSON object")
    version = meta.get("format_version", 0)
    if isinstance(version, (int, float)) and version > BUNDLE_FORMAT:
        raise HeadstartError(f"{path} was written by a newer headstart: pip install -U headstart")
    return parse_card(text, str(path)), backbone, head
