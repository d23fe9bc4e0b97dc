"""Progress lines a user sees during long stages, and a model trained from a local weights file."""

import io
import re
import time

import numpy as np
from conftest import make_class_folders

import headstart
from headstart.core.progress import ConsoleProgress


def test_progress_lines_show_rate_and_eta():
    out = io.StringIO()  # not a terminal: plain, throttled lines (as in a CI log)
    progress = ConsoleProgress(stream=out, every_s=0.0)
    progress.start("extracting features", 4)
    for _ in range(3):
        time.sleep(0.01)
        progress.advance(1)
    progress.advance(1)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"  extracting features: 1/4 \(\d+ img/s, ETA \d+s\)", lines[0]), lines[0]
    assert len(lines) == 4  # three updates (none when done) and the final summary
    assert re.fullmatch(r"  extracting features: 4/4 in [\d.]+s \(\d+ img/s\)", lines[-1]), lines[-1]


def test_eta_counts_down_at_the_measured_rate():
    out = io.StringIO()
    progress = ConsoleProgress(stream=out, every_s=0.0)
    progress.start("x", 100)
    progress.t0 -= 10.0  # as if 10 images took 10 s: 90 left at 1 img/s
    progress.advance(10)
    assert "ETA 1:30" in out.getvalue() or "ETA 1:29" in out.getvalue()


def test_bundle_from_local_weights_predicts_without_the_weights_file(tmp_path):
    """--weights FILE: the bundle carries those weights; it predicts the same with the file gone."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False)
    weights = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    data = make_class_folders(tmp_path / "photos", per_class=8)
    run = tmp_path / "run"
    clf = headstart.ImageClassifier(
        strategy="feature-extraction",
        backbone="resnet10t",
        weights=weights,
        verbose=False,
        cache_dir=tmp_path / "cache-a",
    ).fit(data, out_dir=run)
    files = sorted(str(p) for p in data.rglob("*.jpg"))[::3]
    expected = clf.predict_proba(files)
    weights.unlink()

    # a fresh cache: nothing memoised, so the features come from the bundled weights alone
    loaded = headstart.load(run / "model.safetensors", cache_dir=tmp_path / "cache-b", verbose=False)
    assert loaded.backbone_.name == "resnet10t" and loaded.classes_ == clf.classes_
    got = loaded.predict_proba(files)
    assert np.allclose(got, expected, atol=2e-3), np.abs(got - expected).max()
    assert loaded.predict(files) == clf.predict(files)
