"""The offline backbone zoo (EfficientNet-Lite0/1/2 from their weight packages) and
``headstart backbones``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FLOWERS
from typer.testing import CliRunner

from headstart.cli.app import app
from headstart.core.errors import HeadstartError
from headstart.features import zoo
from headstart.models.backbones import (
    ZOO,
    _line_up,
    _load_into,
    _packaged_weights_file,
    _read_weights_file,
    create_backbone,
    zoo_entry,
)

LITES = {"tf_efficientnet_lite1": 240, "tf_efficientnet_lite2": 260}


@pytest.mark.parametrize("name", sorted(LITES))
def test_lite_weights_load_offline_every_tensor(name: str) -> None:
    """Every tensor of the package's file lands in timm's network, in its place."""
    package = zoo_entry(name).weights_package
    shipped = list(_read_weights_file(_packaged_weights_file(package)).values())
    backbone = create_backbone(name)
    assert backbone.weights_source == package and backbone.num_features == 1280
    assert backbone.data_config["input_size"] == (3, LITES[name], LITES[name])
    loaded = list(backbone.model.state_dict().values())
    assert len(loaded) == len(shipped) - 2  # all but the ImageNet classifier (weight, bias)
    assert all(torch.equal(a, b) for a, b in zip(loaded, shipped))


def test_positional_loading_refuses_tensors_of_another_kind() -> None:
    import timm

    model = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    state = _read_weights_file(_packaged_weights_file(zoo_entry("tf_efficientnet_lite1").weights_package))
    keys = list(state)
    assert _line_up(state, model.state_dict())
    # running_mean and running_var have one shape: swapped, the shapes still fit but the kinds do not
    keys[3], keys[4] = keys[4], keys[3]
    swapped = {k: state[k] for k in keys}
    assert not _line_up(swapped, model.state_dict())
    with pytest.raises(HeadstartError, match="do not fit"):
        _load_into(model, swapped, "swapped")


def test_lite2_recognises_daisies() -> None:
    """Sane features: with its ImageNet classifier, Lite2 puts ImageNet's 'daisy' (985) in the top 5
    for most daisy photos (random weights almost never would)."""
    if not FLOWERS.is_dir():
        pytest.skip("shared flowers photos not present")
    import timm

    from headstart.data.images import Preprocessor

    package = zoo_entry("tf_efficientnet_lite2").weights_package
    model = timm.create_model("tf_efficientnet_lite2", pretrained=False).eval()
    _load_into(model, _read_weights_file(_packaged_weights_file(package)), package)
    pre = Preprocessor(timm.data.resolve_model_data_config(model))
    files = sorted((FLOWERS / "daisy").glob("*.jpg"))[:8]
    x = np.stack([pre.load(f) for f in files]).astype(np.float32) / 255.0
    with torch.no_grad():
        top5 = model((torch.from_numpy(x).permute(0, 3, 1, 2) - 0.5) / 0.5).topk(5).indices
    assert (top5 == 985).any(dim=1).float().mean() >= 0.75


@pytest.mark.cli
def test_backbones_lists_the_zoo_without_measuring() -> None:
    result = CliRunner().invoke(app, ["backbones", "--no-measure", "--format", "json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    rows = {row["name"]: row for row in listing["backbones"]}
    assert [row["name"] for row in listing["backbones"]] == [entry.name for entry in ZOO]
    for name, size in {"tf_efficientnet_lite0": 224, **LITES}.items():
        assert rows[name]["offline"] is True and rows[name]["input_size"] == [size, size]
        assert rows[name]["images_per_s"] is None and 70 < rows[name]["imagenet_top1"] < 80
    assert rows["tf_efficientnet_lite2"]["params"] == 6092072
    hub = [row for row in listing["backbones"] if not row["offline"]]
    assert all("hub" in row["note"] for row in hub)
    assert listing["measurement"] is None


@pytest.mark.cli
def test_backbones_measures_what_is_offline(monkeypatch) -> None:
    """A short timed run (torch engine, one batch of two images) on Lite0 and one hub backbone."""
    monkeypatch.setattr(zoo, "ZOO", (zoo_entry("tf_efficientnet_lite0"), zoo_entry("resnet50")))
    monkeypatch.setattr(zoo, "hub_weights_cached", lambda name: False)
    args = ["backbones", "--engine", "torch", "--batches", "1", "--warmup", "1", "--batch-size", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    lite0 = next(line for line in lines if line.startswith("tf_efficientnet_lite0"))
    resnet = next(line for line in lines if line.startswith("resnet50"))
    assert float(lite0.split()[6]) > 0  # name, "offline: package", input, params, top-1, images/s
    assert " - " in resnet and "hub" in resnet
    assert "1 batches of 2 synthetic images (2) timed after 1 warm-up" in result.stdout


@pytest.mark.cli
def test_backbones_refuses_zero_batches() -> None:
    result = CliRunner().invoke(app, ["backbones", "--batches", "0"])
    assert result.exit_code == 2 and "--batches" in result.output
