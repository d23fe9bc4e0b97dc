"""The whole classifier as one torch module: uint8 NHWC pixels -> backbone -> head -> softmax
(and, for a model whose reject score is ``max_probability*knn``, that score as a second output).

Built from a bundle with headstart's own pieces (the feature network of ``features.engines``
and the head's saved arrays), so the exported graph computes what ``headstart predict`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.features.composite import FeatureSpec, feature_module
from headstart.features.engines import pixels_to_features
from headstart.models.backbones import Backbone
from headstart.models.heads import Head
from headstart.models.multilabel import MULTILABEL_HEAD

if TYPE_CHECKING:
    from torch import Tensor
    from torch.nn import Linear, Module


KNN_REFUSAL = (
    "a kNN head cannot be exported: it would carry every training feature inside the file and its "
    "distance ties break differently in fp16/int8; retrain with --head logistic or mlp to export"
)


def head_module(head: Head, temperature: float = 1.0) -> Module:
    """The head as torch layers on features, softmax included (a sigmoid for the multi-label head).

    The model's calibration temperature divides the last layer's weights and bias, so the
    graph's probabilities are the calibrated ones ``predict_proba`` gives (no extra op).

    The logistic and MLP heads both standardise features with their saved ``mean`` and ``scale``
    before their first linear layer; that affine step is folded into the layer's weights
    (``W / scale``, ``b - W @ (mean / scale)``), the same function in one op. A kNN head is refused
    (see ``KNN_REFUSAL``).
    """
    import torch

    arrays = head.arrays()
    mean, scale = arrays["mean"], arrays["scale"]
    if head.name == MULTILABEL_HEAD:  # independent probabilities: a sigmoid per class
        linear = _standardised_linear(arrays["coef"], arrays["intercept"], mean, scale)
        return torch.nn.Sequential(linear, torch.nn.Sigmoid())
    if head.name in ("logistic", "logistic-sgd"):  # logistic-sgd: the same model, fitted in mini-batches
        layers: list[Module] = [_standardised_linear(arrays["coef"], arrays["intercept"], mean, scale)]
    elif head.name == "mlp":
        layers = [
            _standardised_linear(arrays["net.0.weight"], arrays["net.0.bias"], mean, scale),
            torch.nn.ReLU(),
            _linear(arrays["net.3.weight"], arrays["net.3.bias"]),
        ]
    elif head.name == "knn":
        raise HeadstartError(KNN_REFUSAL)
    else:
        raise HeadstartError(f"cannot export a '{head.name}' head: only logistic and mlp heads export")
    if temperature != 1.0:
        with torch.no_grad():
            last = cast("Linear", layers[-1])  # every head ends in its linear layer
            last.weight.div_(temperature)
            last.bias.div_(temperature)
    return torch.nn.Sequential(*layers, torch.nn.Softmax(dim=1))


def _standardised_linear(weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> Module:
    """``Linear`` of ``(x - mean) / scale``, computed in float64 before rounding to float32."""
    w = np.asarray(weight, dtype=np.float64) / np.asarray(scale, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64) - w @ np.asarray(mean, dtype=np.float64)
    return _linear(w, b)


def _linear(weight: np.ndarray, bias: np.ndarray) -> Module:
    import torch

    weight = np.asarray(weight, dtype=np.float32)
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)))
    return layer


HEAD_SCOPE = "/head/"  # the head's nodes in the exported ONNX graph are named /head/...
OUTPUT = "probabilities"
SCORE_OUTPUT = "score"  # the reject score, the graph's second output when the model has a bank
UNIT_EPS = 1e-12  # a feature row's norm is at least this before dividing (an all-zero row stays 0)


def scored_head(classify: Module, bank: np.ndarray) -> Module:
    """``classify`` (features -> calibrated probabilities) followed by the ``max_probability*knn``
    score: the top probability times the largest cosine similarity of the unit features to the
    neighbour bank, clipped to [0, 1] (``evaluation.reject.reject_scores``).

    The bank is a float16 buffer cast to float in the graph (half the file of a float32 one, the
    same numbers as ``predict``'s bank). Its nodes are in the head's scope, which int8 export keeps
    in float (``export.quantize``), so the product never sees int8 rounding.
    """
    import torch

    class ScoredHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classify = classify
            self.register_buffer("bank", torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float16)))

        def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
            proba = self.classify(features)
            unit = features / features.norm(dim=1, keepdim=True).clamp_min(UNIT_EPS)
            similarity = (unit @ self.bank.float().T).amax(dim=1).clamp(0.0, 1.0)
            return proba, proba.amax(dim=1) * similarity

    return ScoredHead()


def classifier_module(
    backbone: Backbone | FeatureSpec, head: Head, temperature: float = 1.0, bank: np.ndarray | None = None
) -> Module:
    """uint8 (N, H, W, 3) pixels -> (N, C) calibrated probabilities, in eval mode; its parts are
    named ``features`` and ``head`` (so are the exported graph's nodes). A ``FeatureSpec`` brings its
    multi-layer features, mirror (TTA) and ensemble members into the graph. With a neighbour
    ``bank`` the module gives (probabilities, (N,) reject scores) (``scored_head``)."""
    from collections import OrderedDict

    import torch

    if isinstance(backbone, FeatureSpec) and backbone.is_plain and backbone.selected is None:
        backbone = backbone.members[0]
    features = pixels_to_features(backbone) if isinstance(backbone, Backbone) else feature_module(backbone)
    classify = head_module(head, temperature)
    parts = OrderedDict(features=features, head=classify if bank is None else scored_head(classify, bank))
    return torch.nn.Sequential(parts).eval()
