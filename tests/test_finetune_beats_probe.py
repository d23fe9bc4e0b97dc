"""A fine-tuned network that the run keeps (not the probe): its bundle loads and predicts the same.

Other fine-tuning tests may end with the linear probe kept, which saves the pretrained backbone;
here the tuned network must be the model, so the fine-tuned bundle's path is exercised: a tuned
backbone with its own weights, saved, loaded fresh and run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import headstart

pytestmark = pytest.mark.slow


def make_gratings(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    """Fine stripes (period 3 px) in noise, horizontal or vertical, on random tints."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    for name, coord in (("horizontal", yy), ("vertical", xx)):
        for i in range(per_class):
            stripes = 20 * np.sin(2 * np.pi * coord / 3 + rng.uniform(0, 2 * np.pi))
            arr = rng.uniform(80, 170, 3) + stripes[..., None] + rng.normal(0, 60, (64, 64, 3))
            path = root / name / f"{name}_{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
    return root


def test_tuned_network_is_kept_and_its_bundle_predicts_the_same(tmp_path):
    data = make_gratings(tmp_path / "gratings")
    run_dir = tmp_path / "run"
    clf = headstart.FineTuneClassifier(
        unfreeze="last:1",
        epochs=2,
        lr=1e-4,
        train_batch_size=8,
        augment="none",
        loader_workers=0,
        precision="fp32",
        engine="torch",
        check_data=False,
        verbose=False,
    ).fit(data, out_dir=run_dir)
    ft = clf.metrics_["finetune"]
    assert ft["probe_kept"] is False, ft
    assert ft["best_epoch"] >= 1 and ft["epochs_run"] == 2
    assert ft["history"][ft["best_epoch"] - 1]["val_accuracy"] >= ft["start_val"]["val_accuracy"]
    # the model's backbone is the tuned one: other weights, so another feature-cache key
    assert clf.backbone_.weights_id != clf.probe_backbone_.weights_id
    assert clf.backbone_.key != clf.probe_backbone_.key

    paths = sorted(str(p) for p in data.rglob("*.png"))
    fitted = clf.predict_proba(paths)
    loaded = headstart.load(run_dir, engine="torch", verbose=False)
    assert loaded.meta_["strategy"] == "finetune"
    assert loaded.backbone_.weights_id == clf.backbone_.weights_id
    proba = loaded.predict_proba(paths)
    np.testing.assert_array_equal(proba.argmax(1), fitted.argmax(1))
    np.testing.assert_allclose(proba, fitted, atol=1e-4)
    pretrained = headstart.ImageClassifier(engine="torch", check_data=False, verbose=False).fit(data)
    assert not np.allclose(pretrained.predict_proba(paths), proba, atol=1e-2), "the probe was kept after all"
