"""The whole classifier as one torch module: uint8 NHWC pixels -> backbone -> head -> softmax.

Built from a bundle with headstart's own pieces (the feature network of ``features.engines``
and the head's saved arrays), so the exported graph computes what ``headstart predict`` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.features.engines import pixels_to_features
from headstart.models.backbones import Backbone
from headstart.models.heads import Head

KNN_REFUSAL = (
    "a kNN head cannot be exported: it would carry every training feature inside the file and its "
    "distance ties break differently in fp16/int8; retrain with --head logistic or mlp to export"
)


def head_module(head: Head) -> Any:
    """The head as torch layers on features: standardise, then the head's own layers, then softmax.

    The logistic and MLP heads both standardise features with their saved ``mean`` and ``scale``
    before their linear layers; a kNN head is refused (see ``KNN_REFUSAL``).
    """
    import torch

    arrays = head.arrays()
    if head.name == "logistic":
        layers: list[Any] = [_linear(arrays["coef"], arrays["intercept"])]
    elif head.name == "mlp":
        layers = [
            _linear(arrays["net.0.weight"], arrays["net.0.bias"]),
            torch.nn.ReLU(),
            _linear(arrays["net.3.weight"], arrays["net.3.bias"]),
        ]
    elif head.name == "knn":
        raise HeadstartError(KNN_REFUSAL)
    else:
        raise HeadstartError(f"cannot export a '{head.name}' head: only logistic and mlp heads export")
    return torch.nn.Sequential(
        _Standardise(arrays["mean"], arrays["scale"]), *layers, torch.nn.Softmax(dim=1)
    )


def _linear(weight: np.ndarray, bias: np.ndarray) -> Any:
    import torch

    weight = np.asarray(weight, dtype=np.float32)
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)))
    return layer


def _standardise_class() -> type:
    import torch

    class Standardise(torch.nn.Module):
        """(x - mean) / scale, with the head's saved statistics."""

        def __init__(self, mean: np.ndarray, scale: np.ndarray) -> None:
            super().__init__()
            self.mean: torch.Tensor
            self.scale: torch.Tensor
            self.register_buffer("mean", torch.from_numpy(np.asarray(mean, dtype=np.float32)).view(1, -1))
            self.register_buffer("scale", torch.from_numpy(np.asarray(scale, dtype=np.float32)).view(1, -1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - self.mean) / self.scale

    return Standardise


def _Standardise(mean: np.ndarray, scale: np.ndarray) -> Any:  # noqa: N802 - reads as a layer
    return _standardise_class()(mean, scale)


def classifier_module(backbone: Backbone, head: Head) -> Any:
    """uint8 (N, H, W, 3) pixels -> (N, C) probabilities, in eval mode."""
    import torch

    return torch.nn.Sequential(pixels_to_features(backbone), head_module(head)).eval()
