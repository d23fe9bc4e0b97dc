"""The network that fine-tunes, and which of its parts train.

The network is the backbone plus the linear probe fitted on cached features (so training starts
from a good head, never from random). Which backbone parts train is chosen by ``unfreeze``,
counted in the backbone's own block groups from timm (stem, stages, head conv):

- ``head``: nothing of the backbone (its features, augmented images, the head trains);
- ``last:N``: the last N groups; ``half``: the later half; ``all``: everything.

Frozen parts stay in eval mode (BatchNorm running statistics never move) and need no gradient,
so autograd stores nothing for them and a partial fine-tune costs little more than inference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict, cast

import numpy as np

from headstart.core.errors import ParameterError
from headstart.data.images import DataConfig
from headstart.models.heads import Head, LinearOnStandardised
from headstart.training.settings import FineTuneSettings

if TYPE_CHECKING:
    from torch import Tensor
    from torch.nn import Linear, Module

    from headstart.models.backbones import TimmModel

    class Network(Module):
        """What :func:`make_network` returns, as the loop and the estimator use it."""

        net: TimmModel
        fc: Linear
        feature_mean: Tensor
        feature_scale: Tensor

        def use_prefix(self, prefix: Callable[[Tensor], Tensor] | None, rest: list[Module]) -> None: ...


UNFREEZE_HELP = "use head, last:N, half or all"


def block_groups(model: Module) -> list[list[str]]:
    """Parameter names of the backbone's block groups, first to last (timm's coarse grouping)."""
    from timm.models._manipulate import group_parameters

    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        raise ParameterError(
            "unfreeze", f"{type(model).__name__} has no block structure in timm: use head or all"
        )
    grouped = group_parameters(model, matcher(coarse=True))
    return [list(names) for _, names in sorted(grouped.items())]


class FreezeInfo(TypedDict):
    """What :func:`freeze` did: the parameter names of each training group (last first), and counts."""

    groups: list[list[str]]
    n_groups: int
    n_trainable_groups: int
    trainable_params: int
    total_params: int


def trainable_groups(spec: str, n_groups: int) -> int:
    """How many of the last groups train for ``head``, ``last:N``, ``half`` or ``all``."""
    spec = spec.strip().lower()
    if spec == "head":
        return 0
    if spec == "all":
        return n_groups
    if spec == "half":
        return n_groups // 2
    if spec.startswith("last:"):
        try:
            n = int(spec[5:])
        except ValueError:
            n = -1
        if 1 <= n <= n_groups:
            return n
        raise ParameterError("unfreeze", f"{spec}: N must be between 1 and {n_groups} for this backbone")
    raise ParameterError("unfreeze", f"unknown value '{spec}': {UNFREEZE_HELP}")


def freeze(model: Module, spec: str) -> FreezeInfo:
    """Set ``requires_grad`` per ``spec``; return the groups that train (last first) and counts."""
    groups = block_groups(model)
    n = trainable_groups(spec, len(groups))
    train_names = groups[len(groups) - n :][::-1] if n else []
    wanted = {name for g in train_names for name in g}
    for name, p in model.named_parameters():
        p.requires_grad_(name in wanted)
    return {
        "groups": train_names,
        "n_groups": len(groups),
        "n_trainable_groups": n,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
    }


def set_train_mode(model: Module, freeze_bn_stats: bool = False) -> None:
    """Train mode only where something trains: frozen modules (and their BatchNorm) stay in eval;
    with ``freeze_bn_stats`` every BatchNorm does (its affine weights still train)."""
    import torch

    model.train()
    for module in model.modules():
        if freeze_bn_stats and isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
            continue
        own = list(module.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            module.eval()
        elif not own and not any(p.requires_grad for p in module.parameters()):
            module.eval()


LINEAR_PARTS = ("mean", "scale", "coef", "intercept")


def linear_head(head: Head) -> LinearOnStandardised:
    """``head`` as the linear head on standardised features that fine-tuning starts from: any
    object with its four arrays (``LinearOnStandardised``'s), so tests and callers may pass
    their own."""
    if not all(hasattr(head, part) for part in LINEAR_PARTS):
        name = getattr(head, "name", type(head).__name__)
        raise ParameterError("head", f"fine-tuning starts from a linear head, not {name!r}")
    return cast(LinearOnStandardised, head)


def make_network(backbone_model: Module, data_config: DataConfig, head: Head) -> Network:
    """uint8 NCHW pixels -> normalise -> backbone -> standardise -> linear (the probe's weights)."""
    import torch

    linear = linear_head(head)

    class PixelsToLogits(torch.nn.Module):
        pixel_mean: torch.Tensor
        pixel_std: torch.Tensor
        feature_mean: torch.Tensor
        feature_scale: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.net = backbone_model
            mean = torch.tensor(data_config["mean"], dtype=torch.float32) * 255.0
            std = torch.tensor(data_config["std"], dtype=torch.float32) * 255.0
            self.register_buffer("pixel_mean", mean.view(1, 3, 1, 1))
            self.register_buffer("pixel_std", std.view(1, 3, 1, 1))
            self.register_buffer("feature_mean", torch.as_tensor(np.asarray(linear.mean, dtype=np.float32)))
            # A feature that barely varied in the probe's data must not blow up once the backbone
            # moves: its scale gets a floor (a tenth of the median feature's).
            scale = np.asarray(linear.scale, dtype=np.float32)
            scale = np.maximum(scale, 0.1 * float(np.median(scale)))
            self.register_buffer("feature_scale", torch.as_tensor(scale))
            coef = np.asarray(linear.coef, dtype=np.float32)
            self.fc = torch.nn.Linear(coef.shape[1], coef.shape[0])
            with torch.no_grad():
                self.fc.weight.copy_(torch.from_numpy(coef))
                self.fc.bias.copy_(torch.from_numpy(np.asarray(linear.intercept, dtype=np.float32)))
            # Not submodules (a plain object and a list): the state dict stays the network's own.
            self.prefix: Callable[[Tensor], Tensor] | None = None
            self.rest: list[Module] = []

        def use_prefix(self, prefix: Callable[[Tensor], Tensor] | None, rest: list[Module]) -> None:
            """Run the frozen leading stages with ``prefix`` (see ``prefix.py``), then ``rest``
            and the backbone's pooling; None runs the backbone whole."""
            self.prefix, self.rest = prefix, rest

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = (pixels.float() - self.pixel_mean) / self.pixel_std
            x = x.contiguous(memory_format=torch.channels_last)
            if self.prefix is None:
                features = self.net(x).float()
            else:
                x = self.prefix(x).contiguous(memory_format=torch.channels_last)
                for stage in self.rest:
                    x = stage(x)
                features = cast("Callable[[Tensor], Tensor]", self.net.forward_head)(x).float()
            return self.fc((features - self.feature_mean) / self.feature_scale)

    return cast("Network", PixelsToLogits())


def param_groups(
    network: Network, trainable: list[list[str]], settings: FineTuneSettings
) -> list[dict[str, Any]]:
    """Optimiser groups: the head at ``lr``; each trainable backbone group (last first) at
    ``lr * backbone_lr_scale * layer_decay ** depth``."""
    s = settings
    params = dict(network.net.named_parameters())
    groups = [{"params": list(network.fc.parameters()), "lr": s.lr, "name": "head"}]
    for depth, names in enumerate(trainable):
        lr = s.lr * s.backbone_lr_scale * s.layer_decay**depth
        groups.append({"params": [params[n] for n in names], "lr": lr, "name": f"backbone-{depth}"})
    return groups


def contiguous_state(module: Module) -> dict[str, Tensor]:
    """A detached, contiguous copy of ``module``'s state (what a checkpoint and the best model keep)."""
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def head_arrays(network: Network) -> dict[str, np.ndarray]:
    """The head's arrays (standardisation and linear layer), as a LogisticHead restores them."""
    return {
        "mean": network.feature_mean.numpy().copy(),
        "scale": network.feature_scale.numpy().copy(),
        "coef": network.fc.weight.detach().numpy().copy(),
        "intercept": network.fc.bias.detach().numpy().copy(),
    }
