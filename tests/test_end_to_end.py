"""The CLI and the Python API as a user runs them, on generated images and real flower photos."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, make_class_folders, make_image, tree_digest
from PIL import Image

import headstart

CLI = [sys.executable, "-m", "headstart"]
TRAIN = ("train", "--strategy=feature-extraction")  # a quick probe, not the search that is the default


def run(*args, check=True):
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def in_process(*args):
    proc = cli(*args)
    if proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def add_bad_files(root: Path) -> dict[str, str]:
    """Every kind of bad input the core issue names, in the class folders; name -> expected reason."""
    red = root / "red"
    (red / "zero.jpg").write_bytes(b"")
    data = (red / "red_0.jpg").read_bytes()
    (red / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (red / "text.png").write_text("I am not a picture")
    (red / "unreadable.jpg").write_bytes(data)
    os.chmod(red / "unreadable.jpg", 0)
    img = Image.new("RGB", (60, 40), (200, 40, 40))
    img.convert("L").save(red / "gray.png")
    img.convert("CMYK").save(red / "cmyk.jpg")
    img.convert("P").save(red / "palette.gif")
    img.convert("RGBA").save(red / "rgba.png")
    Image.fromarray((np.full((40, 60), 50000)).astype(np.uint16)).save(red / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(red / "rotated.jpg", exif=exif.tobytes())
    return {"zero.jpg": "empty", "truncated.jpg": "truncated", "text.png": "not an image"}


@pytest.mark.slow
@pytest.mark.cli
def test_train_predict_evaluate_with_bad_files(tmp_path):
    data = make_class_folders(tmp_path / "photos", per_class=10)
    expected = add_bad_files(data)
    before = tree_digest(data)
    run_dir = tmp_path / "run"
    proc = run(*TRAIN, data, "--out", run_dir)  # a real process; predict and evaluate run in this one
    assert "skipped" in proc.stderr and "Traceback" not in proc.stderr

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("classes", "per_class", "confusion_matrix", "backbone", "strategy", "head", "timings"):
        assert key in metrics
    assert {"accuracy", "n", "top_k_accuracy"} <= set(metrics["test"])
    assert metrics["test"]["accuracy"] >= 0.66 and metrics["test"]["n"] >= 3
    assert metrics["timings"]["extract_images_per_s"] > 0
    assert metrics["classes"] == ["blue", "green", "red"]
    assert metrics["strategy"] == "feature-extraction" and metrics["head"]["name"] == "logistic"
    for f in ("model.safetensors", "split.csv", "skipped.csv", "confusion_matrix.png", "log.txt"):
        assert (run_dir / f).is_file(), f

    skipped = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(open(run_dir / "skipped.csv"))}
    for name, reason in expected.items():
        assert reason in skipped[name]
    if os.geteuid() != 0:  # root reads files whatever their mode
        assert "permission" in skipped["unreadable.jpg"]
    split_rows = list(csv.DictReader(open(run_dir / "split.csv")))
    used = {Path(r["path"]).name for r in split_rows}
    assert {"gray.png", "cmyk.jpg", "palette.gif", "rgba.png", "sixteen.png", "rotated.jpg"} <= used

    model = run_dir / "model.safetensors"
    out = json.loads(
        in_process("predict", model, data / "blue", data / "red" / "red_1.jpg", "--format", "json").stdout
    )
    assert len(out) == 11
    assert all(len(r["predictions"]) == 3 for r in out)
    assert out[-1]["predictions"][0]["label"] == "red"
    assert abs(sum(p["probability"] for p in out[0]["predictions"]) - 1) < 1e-4
    rows = list(
        csv.DictReader(
            io.StringIO(in_process("predict", model, data / "green", "-k", "2", "--format", "csv").stdout)
        )
    )
    assert len(rows) == 20 and rows[0]["rank"] == "1"
    table = in_process("predict", model, data / "red" / "zero.jpg", data / "red" / "red_2.jpg").stdout
    assert "red" in table and "skipped" in table

    ev = in_process("evaluate", model, data, "--out", tmp_path / "eval")
    assert "saved test split" in ev.stderr
    ev_metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert ev_metrics["test"]["n"] == metrics["test"]["n"]
    assert ev_metrics["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])

    os.chmod(data / "red" / "unreadable.jpg", 0o644)
    after = tree_digest(data)
    before["red/unreadable.jpg"] = after["red/unreadable.jpg"]
    assert after == before, "the user's folder must be byte-identical"


@pytest.mark.parametrize(
    "setup,message",
    [
        ("empty", "no labelled images"),
        ("one_class", "only one class"),
        ("missing", "not found"),
        ("tiny_class", "class 'blue' has 2 usable"),
    ],
)
@pytest.mark.cli
def test_training_errors_are_one_line(tmp_path, setup, message):
    data = tmp_path / "d"
    data.mkdir()
    if setup == "one_class":
        make_class_folders(data, per_class=4, classes=("red",))
    elif setup == "missing":
        data = tmp_path / "nope"
    elif setup == "tiny_class":
        make_class_folders(data, per_class=6, classes=("red",))
        make_class_folders(data, per_class=2, classes=("blue",))
    proc = cli(*TRAIN, data, "--out", tmp_path / "run")  # an uncaught exception fails here
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()[-1]) < 300


@pytest.mark.cli
def test_missing_or_corrupt_model_is_one_line(tmp_path):
    img = make_image(tmp_path / "x.jpg", (1, 2, 3), 0)
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 100)
    for model, message in [(tmp_path / "none.safetensors", "model file not found"), (bad, "damaged")]:
        proc = cli("predict", model, img)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_python_api_on_flower_photos(flowers_csv, tmp_path):
    clf = headstart.ImageClassifier(strategy="feature-extraction", head="logistic", seed=1, verbose=False)
    clf.fit(flowers_csv, out_dir=tmp_path / "run")
    assert clf.classes_ == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    # stable splits: each image draws its split from its bytes, so a class's test share is ~10%
    test_rows = [f for f, _label, g in clf.split_["files"] if g == "test"]
    assert clf.metrics_["test"]["n"] == len(test_rows) and 5 <= len(test_rows) <= 30
    assert clf.metrics_["test"]["accuracy"] >= 0.7
    files = clf.test_["paths"]
    loaded = headstart.load(tmp_path / "run" / "model.safetensors")
    np.testing.assert_allclose(loaded.predict_proba(files), clf.predict_proba(files), atol=1e-5)
    assert loaded.split_["seed"] == 1 and len(loaded.split_["files"]) == 150
    assert loaded.predict(files) == clf.predict(files)
    assert loaded.score(flowers_csv) == pytest.approx(
        clf.metrics_["test"]["accuracy"]
    )  # the saved test split


@pytest.mark.parametrize("head", ["mlp", "knn"])
def test_other_heads_train_and_bundle(colors_dir, tmp_path, head):
    clf = headstart.ImageClassifier(strategy="feature-extraction", head=head, verbose=False).fit(
        colors_dir, out_dir=tmp_path / "r"
    )
    loaded = headstart.load(tmp_path / "r")
    files = clf.test_["paths"]
    assert loaded.predict(files) == clf.predict(files)
    # the stable split leaves 5 of these 30 images for test: judged on all of them instead
    assert clf.evaluate(colors_dir, split="all")["test"]["accuracy"] >= 0.66
