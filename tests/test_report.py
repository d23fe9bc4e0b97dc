"""The HTML report, the feature map, annotated predictions: on synthetic runs and a real small one.

The browser checks (marked ``browser``) open the page in headless Chromium (Debian's `chromium`,
which .ci/run installs). Without it they are skipped with the reason, unless
HEADSTART_REQUIRE_BROWSER=1 (as in CI) makes a missing browser a failure; see conftest.find_chromium.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, make_class_folders, make_image, require_chromium

import headstart
from headstart.core.io import write_json, write_rows
from headstart.evaluation.calibration import expected_calibration_error
from headstart.evaluation.metrics import classification_metrics
from headstart.reporting.maps import embed_features
from headstart.reporting.plots import (
    axis_label,
    class_distribution,
    fallback_fonts,
    feature_map,
    font_file_for,
    most_confused_classes,
)
from headstart.reporting.run_report import build_report, write_run_report


def run(*args, check=True):
    proc = cli(*args)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def open_in_browser(html: Path, screenshot: Path | None = None, size=(1280, 2000)) -> dict[str, str]:
    """Load the page in headless Chromium; returns the page-check marker the page's script wrote."""
    chromium = require_chromium()
    with tempfile.TemporaryDirectory() as profile:
        base = [
            str(chromium),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            f"--window-size={size[0]},{size[1]}",
        ]
        url = html.resolve().as_uri()
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        if screenshot is not None:
            subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
            assert screenshot.is_file() and screenshot.stat().st_size > 10_000
            artifacts = os.environ.get("HEADSTART_ARTIFACTS")
            if artifacts:
                Path(artifacts).mkdir(parents=True, exist_ok=True)
                shutil.copy(screenshot, Path(artifacts) / screenshot.name)
    marker = re.search(r'<p id="page-check"([^>]*)>([^<]*)<', dom)
    assert marker, "the page-check script did not run in the browser"
    attrs = dict(re.findall(r'(data-[a-z]+)="([^"]*)"', marker.group(1)))
    return {**attrs, "text": marker.group(2), "dom": dom}


# --------------------------------------------------------------------------- synthetic runs

SPECIAL = [
    "<script>alert('x')</script>",
    "Ελληνικά λουλούδια",
    "猫の写真",
    "a_class_name_that_goes_on_and_on_" * 5,
    "עברית",
    "Çok uzun Türkçe sınıf adı ile boşluklar ve daha fazla kelime burada",
]


def synthetic_run(root: Path, n_classes: int, seed: int = 0, history: bool = False) -> tuple[Path, dict]:
    """A run folder as train writes it, from made-up predictions (no backbone involved).

    Class 1 has no test image, class 2 has a single image, some names are long, non-ASCII or
    HTML; a few file names are long/non-ASCII real images, the rest are missing files.
    """
    rng = np.random.default_rng(seed)
    classes = sorted(
        [f"class {i:03d}" for i in range(n_classes - len(SPECIAL))] + SPECIAL[: max(0, n_classes - 2)]
    )
    classes = classes[:n_classes]
    data = root / "data"
    rows, test = [], []
    for c_i, c in enumerate(classes):
        n = 1 if c_i == 2 else 4
        for k in range(n):
            name = f"{c_i}_{k}_фото_{'long' * 12}.jpg" if k == 0 else f"{c_i}_{k}.jpg"
            split = "train" if (c_i in (1, 2) or k < 2) else ("val" if k == 2 else "test")
            if c_i < 12 and k == 0:
                make_image(data / name, (50 + 15 * c_i, 90, 160), c_i)
            rows.append([name, c, split])
            if split == "test":
                test.append((str(data / name), c_i))
    y = np.array([t for _, t in test])
    logits = rng.normal(0, 1, (len(y), n_classes))
    logits[np.arange(len(y)), y] += 2.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    scores = classification_metrics(y, proba, classes, 3)
    counts = {s: {} for s in ("train", "val", "test")}
    for _, c, s in rows:
        counts[s][c] = counts[s].get(c, 0) + 1
    metrics = {
        "test": {k: scores[k] for k in ("accuracy", "n", "top_k", "top_k_accuracy", "macro_f1")},
        "evaluated_on": "test",
        "classes": classes,
        "per_class": scores["per_class"],
        "confusion_matrix": scores["confusion_matrix"],
        "backbone": {"name": "synthetic"},
        "strategy": "finetune" if history else "feature-extraction",
        "data": {"source": str(data), "kind": "csv", "split": {"counts": counts}},
    }
    run_dir = root / "run"
    run_dir.mkdir(parents=True)
    write_rows(run_dir / "split.csv", ["path", "label", "split"], rows)
    write_rows(
        run_dir / "skipped.csv",
        ["path", "reason", "stage"],
        [[str(data / "ünïcode_bröken.jpg"), "truncated image (file cut short)", "decode"]],
    )
    if history:
        write_rows(
            run_dir / "history.csv",
            ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s", "seconds"],
            [
                [e, 1.5 / e, 0.5 + 0.1 * e, 1.6 / e + 0.1, 0.45 + 0.09 * e, 1e-3, 50.0, 10.0]
                for e in range(1, 5)
            ],
        )
    features = rng.normal(0, 1, (len(y), 32)).astype(np.float32) + y[:, None] * 0.5
    test_set = {"paths": [p for p, _ in test], "y": y, "proba": proba}
    write_run_report(run_dir, metrics, test_set, features, "pca", 0, root / "cache")
    write_json(run_dir / "metrics.json", metrics)
    return run_dir, metrics


@pytest.mark.browser
def test_report_with_200_odd_classes_renders_readably(tmp_path):
    run_dir, metrics = synthetic_run(tmp_path, 200)
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "猫の写真" in html and "Ελληνικά λουλούδια" in html
    assert "Showing the 30 most confused of 200 classes" in html
    assert "1 class(es) with a single image" in html and "have no test image" in html
    assert "image unavailable" in html  # missing files: a grey tile, never a broken <img>
    assert re.findall(r'<img [^>]*src="(?!data:)', html) == [], "every image must be embedded"
    assert "http://" not in html and "https://" not in html, "no network needed"
    assert "Training curves" not in html  # no history.csv: the section is left out
    assert (run_dir / "test_probabilities.npy").is_file() and (run_dir / "map.csv").is_file()
    page = open_in_browser(run_dir / "report.html", run_dir / "report_screenshot.png", size=(1000, 3000))
    assert page["data-broken"] == "0", page["text"]
    assert int(page["data-images"]) >= 16  # 12 readable images + 4 figures
    assert page["data-overflow"] == "0", "the page must not be wider than the window"
    assert f"{metrics['test']['accuracy']:.1%}" in page["dom"]


@pytest.mark.cli
def test_report_curves_doctor_and_regeneration(tmp_path):
    run_dir, metrics = synthetic_run(tmp_path, 8, history=True)
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Training curves" in html and "4 epoch(s)" in html
    assert "Showing the" not in html  # few classes: the whole matrix
    (run_dir / "doctor.json").write_text(
        json.dumps({"bad_files": [1, 2], "duplicates": [[1]], "label_issues": [], "class_counts": {}})
    )
    (run_dir / "report.html").unlink()
    proc = run("report", run_dir)
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "report:" in proc.stderr and "Data doctor" in html and "2 bad files" in html
    # a run folder without the report inputs still renders (older runs, evaluate-only folders)
    for name in ("test_probabilities.npy", "map.csv", "map.json", "split.csv", "history.csv"):
        (run_dir / name).unlink()
    build_report(run_dir)
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "No map was saved" in html and "Misclassified" in html


@pytest.mark.cli
def test_report_command_errors_are_one_line(tmp_path):
    proc = run("report", tmp_path / "nope", check=False)
    assert proc.returncode == 2 and "run folder not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("report", tmp_path, check=False)
    assert proc.returncode == 2 and "no metrics.json" in proc.stderr


def test_calibration_confusion_and_labels():
    conf = np.array([0.9, 0.9, 0.6, 0.6])
    correct = np.array([1.0, 0.0, 1.0, 1.0])
    # bins 0.9 (acc .5, conf .9) and 0.6 (acc 1, conf .6): 0.5*0.4 + 0.5*0.4
    assert expected_calibration_error(conf, correct) == pytest.approx(0.4)
    assert expected_calibration_error(np.ones(5), np.ones(5)) == pytest.approx(0.0)
    cm = np.diag([10] * 40)
    cm[3, 7] = 5
    cm[20, 3] = 2
    keep = most_confused_classes(cm, limit=30)
    assert len(keep) == 30 and {3, 7, 20} <= set(keep) and keep == sorted(keep)
    assert axis_label("x" * 40, 1).endswith("…")
    assert axis_label("猫", 4) == ("猫" if font_file_for("猫") else "#4")  # a CJK font where installed
    assert axis_label("cat \U0010fffd", 4) == "#4"  # a private-use code point no font draws


def test_cjk_class_names_use_an_installed_cjk_font(tmp_path):
    """With a CJK font on the system (CI installs WenQuanYi), plots and annotated images draw
    CJK class names with it: no missing-glyph boxes, no #n placeholders."""
    import warnings

    from PIL import Image

    from headstart.reporting.annotate import _font, annotate_image

    if not fallback_fonts():
        pytest.skip("no CJK font installed (Debian: apt-get install fonts-wqy-microhei)")
    classes = ["猫", "犬", "チューリップ"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = class_distribution({c: {"train": 3, "test": 1} for c in classes}, classes)
        feature_map(np.random.default_rng(0).normal(size=(9, 2)), [0, 1, 2] * 3, classes, "map")
    assert png.startswith(b"\x89PNG")
    assert not [w for w in caught if "missing from" in str(w.message)]
    assert all(axis_label(c, i) == c for i, c in enumerate(classes))
    assert _font(20, "1. 猫").path == font_file_for("猫") != font_file_for("cat")
    Image.new("RGB", (200, 150), "gray").save(tmp_path / "a.png")
    img = annotate_image(str(tmp_path / "a.png"), [{"label": "猫", "probability": 0.9}])
    band = np.asarray(img)[6:30, 14:60]
    assert (band.min(axis=2) < 100).sum() > 20  # dark text pixels were drawn for the label


def test_feature_map_cache_and_tiny_inputs(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 16)).astype(np.float32)
    first = embed_features(feats, "tsne", 0, tmp_path)
    again = embed_features(feats, "tsne", 0, tmp_path)
    assert first.xy.shape == (60, 2) and not first.cached and again.cached
    np.testing.assert_array_equal(first.xy, again.xy)
    assert not embed_features(feats + 1, "tsne", 0, tmp_path).cached  # other features, other key
    for n in (1, 2, 5):
        small = embed_features(feats[:n], "tsne", 0, None)
        assert small.xy.shape == (n, 2) and np.isfinite(small.xy).all()


# --------------------------------------------------------------------------- real runs


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.cli
def test_train_and_evaluate_write_a_report_that_a_browser_shows(flowers_csv, tmp_path):
    run_dir = tmp_path / "run"
    clf = headstart.ImageClassifier(strategy="feature-extraction", seed=1, verbose=False).fit(
        flowers_csv, out_dir=run_dir
    )
    accuracy = f"{clf.metrics_['test']['accuracy']:.1%}"
    info = json.loads((run_dir / "map.json").read_text())
    assert info["method"] == "tsne" and info["n"] == clf.metrics_["test"]["n"]
    assert np.load(run_dir / "test_probabilities.npy").shape == (15, 5)
    page = open_in_browser(run_dir / "report.html", run_dir / "report_screenshot.png")
    assert page["data-broken"] == "0" and int(page["data-images"]) >= 40, page["text"]
    assert page["data-overflow"] == "0"
    assert re.search(r'id="accuracy">' + re.escape(accuracy) + "<", page["dom"]), accuracy

    clf.evaluate(flowers_csv, out_dir=tmp_path / "eval")
    html = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    assert accuracy in html and "saved test split" in html

    before = (run_dir / "report.html").stat().st_mtime_ns
    run("report", run_dir, "--points", "all", "--method", "pca", "-q")
    info = json.loads((run_dir / "map.json").read_text())
    assert info == {**info, "method": "pca", "points": "all", "n": 150}
    assert (run_dir / "report.html").stat().st_mtime_ns > before
    with open(run_dir / "map.csv", encoding="utf-8") as f:
        assert {r["split"] for r in csv.DictReader(f)} == {"train", "val", "test"}


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.cli
def test_embed_and_annotated_predictions(tmp_path):
    data = make_class_folders(tmp_path / "photos", per_class=8)
    (data / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    odd = "grün зелёный 緑 <i>" + "-very-long-class-name" * 6
    (data / "green").rename(data / odd)
    (data / odd / "green_0.jpg").rename(data / odd / ("фото_" + "ü" * 120 + ".jpg"))
    out = tmp_path / "map"
    proc = run("embed", data, "--out", out, "--method", "tsne")
    assert "tsne map of 24 images" in proc.stderr
    assert (out / "map.png").stat().st_size > 5000 and (out / "map.html").is_file()
    with open(out / "map.csv", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 24
    from headstart.runs.embed import embed_map

    embed_map(data, out, verbose=False)
    assert json.loads((out / "map.json").read_text())["from_cache"] is True

    run_dir = tmp_path / "run"
    headstart.ImageClassifier(strategy="feature-extraction", verbose=False, report_map="none").fit(
        data, out_dir=run_dir
    )
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    assert not (run_dir / "map.csv").exists() and "No map was saved" in report
    assert "grün зелёный 緑 &lt;i&gt;-very-long" in report and "<i>" not in report
    ann = tmp_path / "annotated"
    proc = run("predict", run_dir, data / "blue", data / "red" / "broken.jpg", "-k", "2", "--annotate", ann)
    jpgs = sorted(ann.glob("*.jpg"))
    assert len(jpgs) == 8 and "contact sheet" in proc.stderr
    from PIL import Image

    with Image.open(jpgs[0]) as im:
        assert im.height > 48 + 2 * 20  # the photo plus a band of two labelled bars
    sheet = (ann / "index.html").read_text(encoding="utf-8")
    assert sheet.count('<figure class="tile sheet"') == 8 and "broken.jpg" in sheet
    page = open_in_browser(ann / "index.html")
    assert page["data-broken"] == "0" and page["data-images"] == "8"
