"""Class activation maps: on a 2x2 collage (a daisy top-left, a rose bottom-right, grey
elsewhere) the map for "daisy" weighs the top-left quadrant, the map for "roses" the bottom-right."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FLOWERS
from PIL import Image, ImageOps
from typer.testing import CliRunner

from headstart.cli.app import app
from headstart.core.errors import HeadstartError
from headstart.estimator.classifier import ImageClassifier
from headstart.features.cam import class_weights, to_unit_heatmap

SIDE = 224


def test_unit_heatmap_and_centred_weights():
    heat = to_unit_heatmap(np.array([[-1.0, 0.0], [1.0, 2.0]]), (4, 6))
    assert heat.shape == (6, 4) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    w = class_weights(np.array([[1.0, 2.0], [3.0, 0.0]]), np.array([1.0, 2.0]), centre=True)
    assert np.allclose(w.sum(axis=0), 0) and np.allclose(w[0], [-1.0, 0.5])


def _collage(tmp_path, daisy, rose):
    canvas = Image.new("RGB", (2 * SIDE, 2 * SIDE), (128, 128, 128))
    canvas.paste(ImageOps.fit(Image.open(daisy).convert("RGB"), (SIDE, SIDE)), (0, 0))
    canvas.paste(ImageOps.fit(Image.open(rose).convert("RGB"), (SIDE, SIDE)), (SIDE, SIDE))
    path = tmp_path / f"collage_{daisy.stem}_{rose.stem}.png"
    canvas.save(path)
    return path


@pytest.mark.slow
def test_collage_heatmaps_point_at_their_flower(flowers_csv, tmp_path):
    clf = ImageClassifier(strategy="feature-extraction", verbose=False, check_data=False, report_map="none")
    clf.fit(flowers_csv)
    daisies = sorted((FLOWERS / "daisy").glob("*.jpg"))[-3:]  # not among the 30 trained on
    roses = sorted((FLOWERS / "roses").glob("*.jpg"))[-3:]
    collages = [_collage(tmp_path, d, r) for d, r in zip(daisies, roses)]
    for label, (near, far) in {"daisy": ("tl", "br"), "roses": ("br", "tl")}.items():
        for e in clf.explain(collages, label=label):
            assert e.label == label and e.heatmap.shape == (2 * SIDE, 2 * SIDE)
            assert 0 <= e.heatmap.min() and e.heatmap.max() <= 1
            quadrant = {"tl": e.heatmap[:SIDE, :SIDE].sum(), "br": e.heatmap[SIDE:, SIDE:].sum()}
            assert quadrant[near] > quadrant[far], (e.path, label, quadrant)
    top = clf.explain([collages[0], tmp_path / "missing.jpg"])
    assert top[0].label in clf.classes_ and top[1].heatmap is None and top[1].error
    with pytest.raises(HeadstartError, match="not one of"):
        clf.explain(collages, label="tulipa")
    clf.save(tmp_path / "model.safetensors")
    out = tmp_path / "overlays"
    args = ["predict", str(tmp_path / "model.safetensors"), *map(str, collages[:2]), "--explain", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2 and Image.open(pngs[0]).size == (2 * SIDE, 2 * SIDE)


def test_the_map_averages_to_the_logit_exactly():
    """The module's claim: a class map's mean over positions is the head's logit (less its
    constant), exactly on the feature grid for the last features, and within resampling on the
    input grid for multi-layer features (the grid ``class_map`` uses)."""
    import torch

    from headstart.features.cam import member_map, network_input
    from headstart.models.backbones import create_backbone
    from headstart.models.taps import layer_group_widths, multi_layer_module

    backbone = create_backbone()
    model = backbone.model
    pixels = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    x = network_input(Image.fromarray(pixels), backbone.data_config)
    with torch.no_grad():
        fmap = model.forward_features(x)
        pooled = model.forward_head(fmap, pre_logits=True)[0].numpy()
        w = np.random.default_rng(1).normal(size=pooled.shape[0])
        cam = member_map(model, x, "last", w, tuple(fmap.shape[2:])).numpy()
        assert cam.mean() == pytest.approx(float(w @ pooled), rel=1e-4)
        multi = multi_layer_module(model)(x)[0].numpy()
        w = np.random.default_rng(2).normal(size=sum(layer_group_widths(model)))
        cam = member_map(model, x, "multi", w, (int(x.shape[2]), int(x.shape[3]))).numpy()
        assert cam.mean() == pytest.approx(float(w @ multi), rel=1e-2)
