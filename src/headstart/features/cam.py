"""Class activation maps: where in the photo the model found its answer.

For a backbone that ends in global average pooling and a linear head on standardised
features, the map is exact, not an estimate (Zhou et al., CVPR 2016): a feature is the mean of
a feature map F_d(h, w) over its positions, so class c's logit is

    z_c = sum_d w_cd (mean_hw F_d(h, w) - m_d) / s_d + b_c = mean_hw M_c(h, w) + const,
    M_c(h, w) = sum_d (w_cd / s_d) F_d(h, w),

and M_c says how much each position adds to the logit. Rules for the other feature options:

- ``multi`` layers (pooled activations of several block groups, concatenated): every group is a
  global average too, so each group's map is computed the same way with its own block of the
  weights, resampled to a common grid and summed: exact up to the resampling (the head may use
  shallow groups, whose maps are finer). Unselected groups have no weights and add nothing.
- ensembles: each member's map, summed; ``tta="flip"``: the mirrored view's map, mirrored back,
  averaged with the plain one (as the features are).
- a fine-tuned model: its tuned backbone and head; the rule is the same.
- heads that are not linear (``mlp``, ``knn``) have no such map: refused, not approximated.

The weights are centred over the classes first: the softmax sees only differences between
logits, so what every class shares says nothing about why this one won (a multinomial fit with
an L2 penalty is centred already; a one-vs-rest multi-label head is not, and is left as is).
The map shown is clipped at 0 (evidence against the class is not "where it looked") and scaled
to [0, 1] by its maximum.

The image is resized so its shorter side is the backbone's input size, keeping its aspect and
not cropped, so the map covers the whole photo; it is then resized to the photo's own size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from headstart.data.images import DataConfig
from headstart.features.composite import FeatureSpec
from headstart.models.taps import stage_widths

if TYPE_CHECKING:
    from torch import Tensor

    from headstart.models.backbones import TimmModel

MAX_ASPECT = 3.0  # a panorama is resized to at most 3x the input size on its long side


def network_input(image: Image.Image, data_config: DataConfig) -> Tensor:
    """The normalised (1, 3, h, w) tensor of a whole RGB image, shorter side at the input size."""
    import torch

    _, size, _ = data_config["input_size"]
    w, h = image.size
    scale = size / min(w, h)
    new_w = int(round(min(w * scale, size * MAX_ASPECT)))
    new_h = int(round(min(h * scale, size * MAX_ASPECT)))
    pixels = np.asarray(image.resize((new_w, new_h), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    mean = np.asarray(data_config["mean"], dtype=np.float32)
    std = np.asarray(data_config["std"], dtype=np.float32)
    return torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1)[None].copy())


def group_maps(model: TimmModel, x: Tensor, layers: str) -> list[Tensor]:
    """The (1, D_g, h_g, w_g) feature maps whose global averages are the features, in order."""
    if layers == "last":
        return [model.forward_features(x)]
    final, stages = model.forward_intermediates(x)
    return [*stages, final]


def member_map(
    model: TimmModel, x: Tensor, layers: str, weights: np.ndarray, grid: tuple[int, int]
) -> Tensor:
    """One network's class map on ``grid`` for one view: each group's maps weighted and summed.

    Args:
        weights: (D,) the member's full feature vector's weights (``w_cd / s_d``; 0: unused).
    """
    import torch
    import torch.nn.functional as F

    widths = [*stage_widths(model), int(model.num_features)] if layers == "multi" else [model.num_features]
    bounds = np.cumsum([0, *widths])
    total = torch.zeros(grid, dtype=torch.float32)
    for g, fmap in enumerate(group_maps(model, x, layers)):
        w = weights[bounds[g] : bounds[g + 1]]
        if not np.any(w):
            continue
        m = torch.einsum("d,dhw->hw", torch.from_numpy(w.astype(np.float32)), fmap[0].float())
        total += F.interpolate(m[None, None], size=grid, mode="bilinear", align_corners=False)[0, 0]
    return total


def class_map(spec: FeatureSpec, weights: np.ndarray, image: Image.Image) -> np.ndarray:
    """The class map of one RGB image at its own size, in [0, 1].

    Args:
        spec: the model's features (members, layers, TTA, selected groups).
        weights: (spec.width,) the class's weights on the model's features, over the scale.
    """
    import torch

    full = np.zeros(sum(spec.group_widths), dtype=np.float64)
    columns = spec.columns
    full[np.arange(len(full)) if columns is None else columns] = weights
    grid: tuple[int, int] | None = None
    total: Tensor | None = None
    offset = 0
    with torch.no_grad():
        for i, member in enumerate(spec.members):
            width = sum(spec.widths_of(i))
            member_weights = full[offset : offset + width]
            offset += width
            x = network_input(image, member.data_config)
            grid = grid or (int(x.shape[2]), int(x.shape[3]))
            views = [member_map(member.model, x, spec.layers, member_weights, grid)]
            if spec.tta == "flip":
                mirrored = member_map(
                    member.model, torch.flip(x, dims=[3]), spec.layers, member_weights, grid
                )
                views.append(torch.flip(mirrored, dims=[1]))
            view_mean = torch.stack(views).mean(0)
            total = view_mean if total is None else total + view_mean
    assert total is not None, "a feature spec has at least one member"
    return to_unit_heatmap(total.numpy(), image.size)


def to_unit_heatmap(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A class map clipped at 0, scaled by its maximum and resized to ``size`` (W, H): float32
    (H, W) in [0, 1] (all 0 where nothing speaks for the class)."""
    cam = np.clip(np.nan_to_num(cam.astype(np.float32)), 0, None)
    peak = float(cam.max()) if cam.size else 0.0
    if peak > 0:
        cam = cam / peak
    resized = Image.fromarray(cam, mode="F").resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def class_weights(coef: np.ndarray, scale: np.ndarray, centre: bool) -> np.ndarray:
    """(C, D) the weights of each class on the raw features: a standardising linear head's
    ``coef / scale``, centred over the classes for a softmax head (see the module's rule)."""
    w = np.asarray(coef, dtype=np.float64) / np.asarray(scale, dtype=np.float64)[None, :]
    return w - w.mean(axis=0, keepdims=True) if centre and len(w) > 1 else w


def heatmaps(spec: FeatureSpec, weights: np.ndarray, images: Sequence[Image.Image]) -> list[np.ndarray]:
    """``class_map`` of each image, each with its own row of ``weights``."""
    return [class_map(spec, w, image) for w, image in zip(weights, images)]
