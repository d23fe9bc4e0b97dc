import sqlite3

import numpy as np
import pytest
from conftest import make_class_folders, make_image

from headstart.features.cache import FeatureCache
from headstart.features.extractor import FeatureExtractor
from headstart.models.backbones import create_backbone


@pytest.fixture(scope="module")
def backbone(cache_dir):
    return create_backbone(cache_dir=cache_dir)


def test_second_run_extracts_nothing_and_a_changed_file_alone(tmp_path, backbone):
    root = make_class_folders(tmp_path / "d", per_class=4)
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    cache = FeatureCache(tmp_path / "cache")
    ex = FeatureExtractor(backbone, cache)
    first = ex.extract(paths)
    assert first.n_extracted == len(paths) and not first.errors
    assert np.isfinite(first.features).all() and first.features.shape == (len(paths), 1280)
    second = ex.extract(paths)
    assert second.n_extracted == 0 and second.n_cached == len(paths)
    np.testing.assert_array_equal(first.features, second.features)
    make_image(tmp_path / "d" / "red" / "red_0.jpg", (0, 255, 0), 99)  # changed content
    make_image(tmp_path / "d" / "red" / "new.jpg", (255, 0, 0), 98)  # added image
    third = ex.extract(paths + [str(tmp_path / "d" / "red" / "new.jpg")])
    assert third.n_extracted == 2 and third.n_cached == len(paths) - 1


def test_a_file_rewritten_with_its_size_and_mtime_put_back_is_read_again(tmp_path, backbone):
    """Issue 24: the stat check includes ctime, which no user call can put back."""
    import os
    import time

    from PIL import Image

    root = tmp_path / "d"
    root.mkdir()
    a, b = root / "a.bmp", root / "b.bmp"  # BMP: the same size for any colour
    Image.new("RGB", (40, 40), (250, 10, 10)).save(a)
    Image.new("RGB", (40, 40), (10, 10, 250)).save(b)
    ex = FeatureExtractor(backbone, FeatureCache(tmp_path / "cache"))
    red = ex.extract([str(a)]).features
    before = os.stat(a)
    time.sleep(0.02)
    a.write_bytes(b.read_bytes())  # same size, other content
    os.utime(a, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(a)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )
    again = ex.extract([str(a)])
    assert again.n_extracted == 1
    np.testing.assert_allclose(again.features, ex.extract([str(b)]).features, atol=1e-5)
    assert not np.allclose(again.features, red, atol=1e-3)


def test_damaged_cache_entry_is_recomputed(tmp_path, backbone):
    root = make_class_folders(tmp_path / "d", per_class=2, classes=("red",))
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    cache = FeatureCache(tmp_path / "cache")
    good = FeatureExtractor(backbone, cache).extract(paths).features
    db = sqlite3.connect(cache.path)
    db.execute(
        "UPDATE features SET data = substr(data, 1, 100) WHERE rowid = (SELECT min(rowid) FROM features)"
    )
    db.commit()
    db.close()
    again = FeatureExtractor(backbone, FeatureCache(tmp_path / "cache")).extract(paths)
    assert again.n_damaged_cache == 1 and again.n_extracted == 1
    np.testing.assert_allclose(again.features, good, atol=1e-5)


def test_unreadable_cache_file_is_moved_aside(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "features.sqlite").write_bytes(b"garbage" * 1000)
    with pytest.warns(UserWarning, match="damaged"):
        cache = FeatureCache(tmp_path / "c")
    cache.put_many("ns", [("k", np.ones(4, np.float32))])
    assert cache.get_many("ns", ["k"])["k"].tolist() == [1, 1, 1, 1]


def test_bad_files_are_reported_not_fatal(tmp_path, backbone):
    good = make_image(tmp_path / "ok.png", (1, 2, 3), 1)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    res = FeatureExtractor(backbone, FeatureCache(tmp_path / "c")).extract(
        [good, empty, fake, tmp_path / "gone.jpg"]
    )
    assert res.ok.tolist() == [True, False, False, False]
    assert "empty" in res.errors[1] and "not an image" in res.errors[2] and "not found" in res.errors[3]


def test_engines_agree(tmp_path, backbone):
    root = make_class_folders(tmp_path / "d", per_class=2, classes=("red", "blue"))
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    feats = {
        e: FeatureExtractor(backbone, FeatureCache(tmp_path / e), engine=e).extract(paths).features
        for e in ("torch", "onnxruntime", "openvino")
    }
    np.testing.assert_allclose(feats["onnxruntime"], feats["torch"], atol=1e-3)
    # OpenVINO runs bf16 where the CPU supports it: close, not identical
    cos = (feats["openvino"] * feats["torch"]).sum(1) / (
        np.linalg.norm(feats["openvino"], axis=1) * np.linalg.norm(feats["torch"], axis=1)
    )
    assert cos.min() > 0.99


def test_asynchronous_batches_stay_aligned_with_their_paths(tmp_path, backbone):
    """Many small batches in flight at once, a bad file mid-batch, a batch of only bad files
    and a short last batch: every row still holds its own image's features."""
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    paths = [make_image(tmp_path / f"img{i}.png", colors[i % 6], i, size=(40 + 7 * i, 48)) for i in range(18)]
    bad = []
    for k in range(5):  # distinct bytes, so the cache does not fold them into one
        (tmp_path / f"bad{k}.jpg").write_bytes(f"not an image {k}".encode())
        bad.append(tmp_path / f"bad{k}.jpg")
    # batches of 4: one bad file in batch 2, batch 3 only bad files, batch 6 short
    order = paths[:5] + [bad[0]] + paths[5:7] + bad[1:5] + paths[7:]
    ov = FeatureExtractor(backbone, FeatureCache(tmp_path / "ov"), engine="openvino", batch_size=4).extract(
        order
    )
    ref = FeatureExtractor(backbone, FeatureCache(tmp_path / "t"), engine="torch", batch_size=4).extract(
        order
    )
    assert sorted(ov.errors) == sorted(ref.errors) == [5, 8, 9, 10, 11]
    good = ov.ok
    a, b = ov.features[good], ref.features[good]
    sims = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    assert (sims.argmax(1) == np.arange(len(a))).all()
    assert sims.diagonal().min() > 0.99


def test_auto_engine_falls_back_when_openvino_is_not_installed(monkeypatch):
    """An install without OpenVINO (no wheel for the platform) extracts with ONNX Runtime."""
    import importlib.util

    from headstart.core.errors import ParameterError
    from headstart.features import engines

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "openvino" else real(name))
    assert engines.available_engines() == ["onnxruntime", "torch"]
    assert engines.resolve_engine("auto") == "onnxruntime"
    with pytest.raises(
        ParameterError, match="'openvino' is not installed here: choose auto or onnxruntime, torch"
    ):
        engines.resolve_engine("openvino")
    with pytest.raises(ParameterError, match="unknown engine 'tensorrt'"):
        engines.resolve_engine("tensorrt")
