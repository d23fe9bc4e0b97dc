"""The frozen prefix of a partly unfrozen backbone, run as inference (training/prefix.py): same
logits and gradients as the network run whole, in fp32."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from headstart.core.errors import ParameterError
from headstart.models.backbones import create_backbone
from headstart.training.network import freeze, make_network, set_train_mode
from headstart.training.prefix import build_prefix, network_stages


@pytest.fixture(scope="module")
def backbone():
    return create_backbone()


def _head(seed: int = 0) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    coef = rng.normal(size=(3, 1280)).astype(np.float32) * 0.05
    return SimpleNamespace(
        mean=np.zeros(1280, np.float32),
        scale=np.ones(1280, np.float32),
        coef=coef,
        intercept=np.zeros(3, np.float32),
    )


def _network(backbone, mode: str, unfreeze: str = "last:2", batch: int = 4):
    model = copy.deepcopy(backbone.model)
    freeze(model, unfreeze)
    network = make_network(model, backbone.data_config, _head()).to(memory_format=torch.channels_last)
    runner, rest, how = build_prefix(model, mode, "fp32", batch, (224, 224), 2)
    network.use_prefix(runner, rest)
    set_train_mode(network, freeze_bn_stats=True)
    return network, model, how


def _pixels(n: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).integers(0, 256, (n, 3, 224, 224), dtype=np.uint8))


@pytest.mark.parametrize("mode", ["torch", "openvino"])
def test_prefix_gives_the_same_logits_and_gradients_in_fp32(backbone, mode: str) -> None:
    pixels = _pixels(6)
    reference, ref_model, how = _network(backbone, "off")
    fast, fast_model, fast_how = _network(backbone, mode)
    assert how == "off" and fast_how == mode
    # the second batch (2 images) is smaller than the static batch (4): padded, then cut
    want = torch.cat([reference(pixels[:4]), reference(pixels[4:])])
    got = torch.cat([fast(pixels[:4]), fast(pixels[4:])])
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    want.sum().backward()
    got.sum().backward()
    for (name, a), b in zip(ref_model.named_parameters(), fast_model.parameters()):
        if a.requires_grad:
            # fp32 rounding of another convolution algorithm, carried through the backward pass
            assert float((a.grad - b.grad).norm()) <= 1e-3 * float(a.grad.norm()) + 1e-7, name
        else:
            assert b.grad is None


def test_prefix_leaves_the_state_dict_alone(backbone) -> None:
    reference, _, _ = _network(backbone, "off")
    fast, _, _ = _network(backbone, "torch")
    assert list(fast.state_dict()) == list(reference.state_dict())


def test_prefix_covers_the_frozen_stages_only(backbone) -> None:
    _, model, _ = _network(backbone, "off")
    stages = network_stages(model)
    runner, rest, how = build_prefix(model, "torch", "fp32", 4, (224, 224), 1)
    assert how == "torch" and 0 < len(rest) < len(stages)
    assert all(not p.requires_grad for stage in stages[: len(stages) - len(rest)] for p in stage.parameters())
    assert any(p.requires_grad for p in rest[0].parameters())
    all_model = copy.deepcopy(backbone.model)
    freeze(all_model, "all")
    assert build_prefix(all_model, "auto", "fp32", 4, (224, 224), 1)[2] == "none frozen"


def test_other_networks_run_whole_and_bad_modes_are_refused() -> None:
    import timm

    model = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    assert build_prefix(model, "auto", "fp32", 4, (224, 224), 1)[:1] == (None,)
    with pytest.raises(ParameterError, match="frozen_prefix"):
        build_prefix(model, "fast", "fp32", 4, (224, 224), 1)
