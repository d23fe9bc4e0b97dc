"""Augmentation presets for fine-tuning (torchvision.transforms.v2), and the eval transform.

Every transform maps a decoded RGB PIL image to a uint8 CHW tensor of the backbone's input size;
normalisation happens inside the network, so workers pass small uint8 tensors. Validation and
test images always get the backbone's own eval transform (resize + centre crop), never these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from headstart.core.errors import ParameterError
from headstart.data.images import DataConfig

if TYPE_CHECKING:
    from PIL import Image
    from torch import Tensor
    from torchvision.transforms import InterpolationMode

PRESETS = ("default", "keras", "randaugment", "trivialaugment", "none")


def _size(data_config: DataConfig) -> tuple[int, int]:
    _, h, w = data_config["input_size"]
    return int(h), int(w)


def _interpolation(data_config: DataConfig) -> InterpolationMode:
    from torchvision.transforms import InterpolationMode

    return {
        "bicubic": InterpolationMode.BICUBIC,
        "bilinear": InterpolationMode.BILINEAR,
        "nearest": InterpolationMode.NEAREST,
    }.get(str(data_config.get("interpolation", "bilinear")), InterpolationMode.BILINEAR)


def train_transform(preset: str, data_config: DataConfig) -> Callable[[Image.Image], Tensor]:
    """The named augmentation pipeline.

    - ``default``: random resized crop (35-100% of the area) and horizontal flip;
    - ``keras``: the Keras tutorials' ImageDataGenerator settings (rotation 40, shifts 0.2,
      shear 0.2, zoom 0.2, horizontal flip) on the resized, centre-cropped image. Shear 0.2 is
      read as radians (11.5 degrees), as the Keras of those tutorials did; Keras 2.2 and later
      read it as 0.2 degrees, which hardly shears at all;
    - ``randaugment`` / ``trivialaugment``: the default crop and flip, then that policy;
    - ``none``: the eval transform (no augmentation).
    """
    from torchvision.transforms import v2

    h, w = _size(data_config)
    interp = _interpolation(data_config)
    crop = [
        v2.RandomResizedCrop((h, w), scale=(0.35, 1.0), interpolation=interp, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if preset == "default":
        steps = crop
    elif preset == "randaugment":
        steps = [*crop, v2.RandAugment()]
    elif preset == "trivialaugment":
        steps = [*crop, v2.TrivialAugmentWide()]
    elif preset == "keras":
        crop_pct = float(data_config.get("crop_pct") or 1.0)
        steps = [
            v2.Resize(int(min(h, w) / crop_pct), interpolation=interp, antialias=True),
            v2.RandomAffine(
                degrees=40, translate=(0.2, 0.2), scale=(0.8, 1.2), shear=0.2 * 57.3, interpolation=interp
            ),
            v2.CenterCrop((h, w)),
            v2.RandomHorizontalFlip(),
        ]
    elif preset == "none":
        crop_pct = float(data_config.get("crop_pct") or 1.0)
        steps = [
            v2.Resize(int(min(h, w) / crop_pct), interpolation=interp, antialias=True),
            v2.CenterCrop((h, w)),
        ]
    else:
        raise ParameterError("augment", f"unknown value '{preset}': choose one of {', '.join(PRESETS)}")
    return v2.Compose([*steps, v2.PILToTensor()])  # geometry on PIL: faster than on tensors


class EvalTransform:
    """The backbone's eval preprocessing (the same as the feature path's), as a uint8 CHW tensor."""

    def __init__(self, data_config: DataConfig) -> None:
        from headstart.data.images import Preprocessor

        self.preprocess = Preprocessor(data_config)

    def __call__(self, img: Image.Image) -> Tensor:
        import torch

        return torch.from_numpy(np.array(self.preprocess(img))).permute(2, 0, 1).contiguous()
