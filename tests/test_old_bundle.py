"""A bundle written by the old headstart (commit 4c66612) still loads and predicts the same.

The fixture (tests/fixtures/old_bundle, made by its record.py) holds the old bundle's metadata
header, its head's arrays and its probabilities on generated images; the backbone weights are
the default backbone's offline weights, so the old file is rebuilt here tensor for tensor.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import headstart
from headstart.models.backbones import create_backbone

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "old_bundle"


def recorder():
    """The fixture's own script: its image generator made the images the old code predicted."""
    spec = importlib.util.spec_from_file_location("old_bundle_record", FIXTURE / "record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rebuild_old_bundle(path: Path) -> dict:
    """The file as the old ``save_bundle`` wrote it: backbone.* and head.* tensors, JSON header."""
    from safetensors.numpy import save_file

    header = (FIXTURE / "header.json").read_text().strip()
    meta = json.loads(header)
    backbone = create_backbone(meta["backbone"]["name"])
    assert backbone.weights_id == meta["backbone"]["weights_id"], "not the weights the old bundle held"
    tensors = {f"backbone.{k}": np.ascontiguousarray(v) for k, v in backbone.state_arrays().items()}
    with np.load(FIXTURE / "head.npz") as head:
        tensors.update({f"head.{k}": np.ascontiguousarray(head[k]) for k in head.files})
    save_file(tensors, str(path), metadata={"headstart": header})
    return meta


@pytest.fixture(scope="module")
def old_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("old_bundle")
    images = recorder().make_images(root / "images")
    meta = rebuild_old_bundle(root / "model.safetensors")
    return {"path": root / "model.safetensors", "root": root / "images", "images": images, "meta": meta}


def test_the_fixture_images_are_the_recorded_ones(old_bundle):
    recorded = json.loads((FIXTURE / "predictions.json").read_text())
    assert [str(p.relative_to(old_bundle["root"])) for p in old_bundle["images"]] == recorded["images"]


def test_old_bundle_loads_and_predicts_the_same(old_bundle):
    recorded = json.loads((FIXTURE / "predictions.json").read_text())
    clf = headstart.load(old_bundle["path"], engine=recorded["engine"], verbose=False)
    assert list(clf.classes_) == recorded["classes"] == old_bundle["meta"]["classes"]
    proba = clf.predict_proba(old_bundle["images"])
    old = np.array(recorded["proba"])
    assert proba.shape == old.shape
    np.testing.assert_array_equal(proba.argmax(1), old.argmax(1))
    np.testing.assert_allclose(proba, old, atol=1e-5, rtol=1e-3)
    top = clf.predict_top_k(old_bundle["images"][:3], k=2)
    assert [r["predictions"][0]["label"] for r in top] == [recorded["classes"][i] for i in old[:3].argmax(1)]


def test_old_bundle_loads_from_its_run_folder(old_bundle, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rebuild_old_bundle(run_dir / "model.safetensors")
    clf = headstart.load(run_dir, engine="torch", verbose=False)
    assert clf.meta_["strategy"] == "feature-extraction"
    assert clf.meta_["head"]["name"] == "logistic"


# --------------------------------------------------------------- bundles of today's format (274ab38)

CURRENT = Path(__file__).resolve().parent / "fixtures" / "current_bundles"
CURRENT_KINDS = ("probe", "finetune", "multilabel")


def current_recorder():
    """tests/fixtures/current_bundles/record.py: its ``rebuild`` and image makers, as recorded."""
    spec = importlib.util.spec_from_file_location("current_bundles_record", CURRENT / "record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def current_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("current_images")
    return root, current_recorder().make_images(root)


@pytest.mark.parametrize("kind", CURRENT_KINDS)
def test_a_bundle_of_todays_format_loads_and_predicts_the_same(kind, current_images, tmp_path):
    """A linear probe, a fine-tuned network and a multi-label probe, as 274ab38 wrote them."""
    root, images = current_images
    recorded = json.loads((CURRENT / kind / "predictions.json").read_text())
    assert [str(p.relative_to(root)) for p in images] == recorded["images"]
    header = (CURRENT / kind / "header.json").read_text().strip()
    with np.load(CURRENT / kind / "head.npz") as npz:
        head = {k: npz[k] for k in npz.files}
    path = tmp_path / "model.safetensors"
    current_recorder().rebuild(path, header, head)
    clf = headstart.load(path, engine=recorded["engine"], verbose=False, cache_dir=tmp_path / "cache")
    assert list(clf.classes_) == recorded["classes"]
    assert clf.strategy_ == json.loads(header)["strategy"]
    assert clf.multi_label_ is (kind == "multilabel")
    proba = clf.predict_proba(images)
    np.testing.assert_allclose(proba, np.array(recorded["proba"]), atol=1e-5, rtol=1e-3)
    assert clf.predict(images) == recorded["predict"]


@pytest.mark.parametrize("kind", CURRENT_KINDS)
def test_the_card_reads_and_writes_todays_header_unchanged(kind):
    from headstart.models.card import parse_card

    header = (CURRENT / kind / "header.json").read_text().strip()
    card = parse_card(header, kind)
    assert card.to_header() == header
    meta = json.loads(header)
    assert card.classes == meta["classes"] and card.head.name == meta["head"]["name"]
    assert card.is_multilabel == ("multi_label" in meta)
