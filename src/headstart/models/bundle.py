"""One-file model bundle: a safetensors file (no pickle) with the metadata in its header.

Tensors are ``backbone.*`` (the timm network's state) and ``head.*`` (the head's arrays); the
header's ``headstart`` entry is JSON with class names, backbone and preprocessing, head
parameters, the split, metrics and library versions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import HeadstartError

BUNDLE_FORMAT = 1
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
    meta: dict[str, Any],
    backbone_state: dict[str, np.ndarray],
    head_arrays: dict[str, np.ndarray],
) -> Path:
    """Write atomically (temp file, then rename): an interrupted save never leaves half a model."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"backbone.{k}": np.ascontiguousarray(v) for k, v in backbone_state.items()}
    tensors.update({f"head.{k}": np.ascontiguousarray(v) for k, v in head_arrays.items()})
    full_meta = {"format": "headstart", "format_version": BUNDLE_FORMAT, **meta}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"headstart": json.dumps(full_meta)})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; a model is shared like any file
    os.replace(tmp, path)
    return path


def load_bundle(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Return (metadata, backbone state, head arrays); a clear error for anything else."""
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
            meta = json.loads(header["headstart"])
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
    problem = meta_problem(meta)
    if problem:
        raise HeadstartError(f"model file {path} is damaged or crafted: {problem}")
    return meta, backbone, head


MAX_CLASSES = 100_000
MAX_SIDE = 4096  # input side in pixels
MAX_FEATURES = 65_536
DATA_CONFIG_KEYS = {"input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode"}


def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _numbers(value: object, n: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == n
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def _data_config_problem(cfg: object) -> str:
    if not isinstance(cfg, dict) or not set(cfg) <= DATA_CONFIG_KEYS:
        return f"backbone data_config must be an object with keys among {sorted(DATA_CONFIG_KEYS)}"
    size = cfg.get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and size[0] == 3):
        return "backbone input_size must be [3, height, width]"
    if not all(_is_int(v, 1, MAX_SIDE) for v in size[1:]):
        return f"backbone input_size must be between 1 and {MAX_SIDE} pixels a side"
    for key in ("mean", "std"):
        if key in cfg and not _numbers(cfg[key], 3):
            return f"backbone {key} must be three numbers"
    crop = cfg.get("crop_pct", 1.0)
    if not (isinstance(crop, (int, float)) and 0.05 <= crop <= 4):
        return "backbone crop_pct must be a number between 0.05 and 4"
    for key in ("interpolation", "crop_mode"):
        if key in cfg and not isinstance(cfg[key], str):
            return f"backbone {key} must be text"
    return ""


def _backbone_problem(b: object) -> str:
    if not isinstance(b, dict):
        return "'backbone' must be an object"
    if not (isinstance(b.get("name"), str) and 0 < len(b["name"]) <= 200):
        return "backbone name must be a timm model name"
    if not isinstance(b.get("weights_id", ""), str):
        return "backbone weights_id must be text"
    if not _is_int(b.get("num_features"), 1, MAX_FEATURES):
        return f"backbone num_features must be a whole number from 1 to {MAX_FEATURES}"
    return _data_config_problem(b.get("data_config"))


def meta_problem(meta: dict[str, Any]) -> str:
    """What is wrong with a bundle's metadata ('' when nothing): every field the loader uses is
    checked for its type, and every size for a sane bound, so a crafted header gives one line
    instead of a traceback or a huge allocation."""
    if not _is_int(meta.get("format_version", 0), 0, BUNDLE_FORMAT):
        return "'format_version' must be a whole number"
    classes = meta.get("classes")
    if not (isinstance(classes, list) and 0 < len(classes) <= MAX_CLASSES):
        return f"'classes' must be a list of 1 to {MAX_CLASSES} names"
    if not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
        return "'classes' must be distinct names"
    problem = _backbone_problem(meta.get("backbone"))
    if problem:
        return problem
    head = meta.get("head")
    if not (
        isinstance(head, dict) and isinstance(head.get("name"), str) and isinstance(head.get("params"), dict)
    ):
        return "'head' must be an object with a name and params"
    settings = meta.get("settings", {})
    if not isinstance(settings, dict):
        return "'settings' must be an object"
    if not _is_int(settings.get("top_k", 3), 1, MAX_CLASSES) or not _is_int(
        settings.get("seed", 0), 0, 2**63
    ):
        return "settings top_k and seed must be whole numbers"
    if "split" in settings and not _numbers(settings["split"], 3):
        return "settings split must be three fractions"
    for key in ("strategy",):
        if key in meta and not isinstance(meta[key], str):
            return f"'{key}' must be text"
    for key in ("split", "metrics"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return f"'{key}' must be an object"
    entry = meta.get("multi_label")
    if entry is not None and not (
        isinstance(entry, dict) and _numbers(entry.get("thresholds"), len(classes))
    ):
        return "'multi_label' must be an object with one threshold per class"
    files = (meta.get("split") or {}).get("files", [])
    if not (isinstance(files, list) and all(_is_row(f) for f in files)):
        return "split files must be rows of [path, label, split]"
    return _reliability_problem(head)


def bundle_temperature(meta: dict[str, Any]) -> float:
    """The calibration temperature saved with the head (1 for a model saved without one)."""
    return float(((meta.get("head") or {}).get("calibration") or {}).get("temperature", 1.0))


def bundle_reject(meta: dict[str, Any]) -> dict[str, Any]:
    """The reject option saved with the head: ``mode``, ``threshold``, ``score``,
    ``target_accuracy`` ({} for a model saved without it, or with it off)."""
    return dict((meta.get("head") or {}).get("reject") or {})


def _reliability_problem(head: dict[str, Any]) -> str:
    """``calibration.temperature`` a positive number; ``reject.threshold`` a number in [0, 1]."""
    calibration, reject = head.get("calibration", {}), head.get("reject", {})
    if not isinstance(calibration, dict) or not isinstance(reject, dict):
        return "head calibration and reject must be objects"
    t = calibration.get("temperature", 1.0)
    if not (_numbers([t], 1) and 0 < t < 1e6):
        return "calibration temperature must be a positive number"
    threshold = reject.get("threshold")
    if threshold is not None and not (_numbers([threshold], 1) and 0 <= threshold <= 1):
        return "reject threshold must be a number between 0 and 1"
    mode = reject.get("mode", "auto")
    if not (mode in ("auto", "off") or (_numbers([mode], 1) and 0 <= mode <= 1)):
        return "reject mode must be auto, off or a threshold between 0 and 1"
    return ""


def _is_row(row: object) -> bool:
    return isinstance(row, list) and len(row) == 3 and all(isinstance(v, str) for v in row)
