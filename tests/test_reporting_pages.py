"""Every HTML page (run report, doctor page, contact sheet, map page) is built on the one shared
shell, and names from files and classes appear escaped on each of them."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_image
from test_report import open_in_browser

from headstart.core.io import write_json, write_rows
from headstart.evaluation.calibration import expected_calibration_error, reliability_bins
from headstart.evaluation.confusion import confused_pairs
from headstart.evaluation.metrics import classification_metrics
from headstart.reporting.annotate import annotate_predictions
from headstart.reporting.doctor_page import write_doctor_page
from headstart.reporting.html import page
from headstart.reporting.plots import write_confusion_matrix
from headstart.reporting.run_report import write_map_page, write_run_report

SCRIPT = "<script>alert(1)</script>"
DOLLARS = "cost_$10_$20"
CLASSES = sorted([SCRIPT, DOLLARS, "plain"])
FILE_NAME = "<img src=x onerror=alert(1)> cost_$10_$20.jpg"  # no "/": it is a file name


def assert_shared_shell(html: str) -> None:
    """One shell: one style block with the shared CSS, one page-check element and its script."""
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("<style>") == 1 and html.count("box-sizing:border-box") == 1
    assert html.count('id="page-check"') == 1
    assert html.count("getElementById('page-check')") == 1
    assert html.count("<script>") == 1  # the check script only: every name stayed text


def assert_names_escaped(html: str) -> None:
    assert SCRIPT not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert DOLLARS in html  # no template or regex substitution mangled the dollars


def images(root, n: int = 3) -> list[str]:
    return [str(make_image(root / f"{i}_{FILE_NAME}", (60 + 50 * i, 90, 160), i)) for i in range(n)]


@pytest.fixture
def report(tmp_path):
    """A run folder with made-up predictions (no backbone) and its report.html."""
    paths = images(tmp_path / "data", 6)
    y = np.arange(6) % 3
    proba = np.full((6, 3), 0.1)
    proba[np.arange(6), (y + (np.arange(6) == 5)) % 3] = 0.8
    scores = classification_metrics(y, proba, CLASSES, 2)
    metrics = {
        "test": {k: scores[k] for k in ("accuracy", "n", "top_k", "top_k_accuracy", "macro_f1")},
        "evaluated_on": "test",
        "classes": CLASSES,
        "per_class": scores["per_class"],
        "confusion_matrix": scores["confusion_matrix"],
        "backbone": {"name": "synthetic"},
        "strategy": "feature-extraction",
        "data": {"source": str(tmp_path / "data"), "kind": "folders"},
    }
    run_dir = tmp_path / "run"
    write_json(run_dir / "metrics.json", metrics)
    write_rows(run_dir / "skipped.csv", ["path", "reason", "stage"], [[paths[0] + ".bad", SCRIPT, "decode"]])
    features = np.random.default_rng(0).normal(0, 1, (6, 8)).astype(np.float32)
    test = {"paths": paths, "y": y, "proba": proba}
    write_run_report(run_dir, metrics, test, features, "pca", 0, tmp_path / "cache")
    return run_dir / "report.html"


@pytest.fixture
def doctor_page(tmp_path):
    paths = images(tmp_path / "data")
    files = [{"path": p, "label": c, "split": "train"} for p, c in zip(paths, CLASSES)]
    doc = {
        "summary": {
            "images": 3,
            "usable": 3,
            "bad_files": 1,
            "warnings": 0,
            "exact_duplicate_groups": 1,
            "near_duplicate_groups": 0,
            "cross_class_groups": 1,
            "cross_split_groups": 0,
            "label_issues": 1,
        },
        "class_counts": {c: 1 for c in CLASSES},
        "imbalance": {"suggestion": f"add images to {SCRIPT}"},
        "bad_files": [{"path": paths[0] + ".x", "reason": DOLLARS, "severity": "error", "stage": "decode"}],
        "duplicates": [
            {
                "group": 1,
                "kind": "exact",
                "cross_class": True,
                "cross_split": False,
                "files": files[:2],
                "evidence": [{"a": 0, "b": 1, "sha256": SCRIPT}],
            }
        ],
        "label_issues": [
            {
                "rank": 1,
                "path": paths[2],
                "given_label": SCRIPT,
                "suggested_label": DOLLARS,
                "evidence": f"neighbours say {DOLLARS}",
                "neighbours": [{"path": paths[1], "label": DOLLARS, "cosine": 0.93}],
            }
        ],
    }
    return write_doctor_page(doc, tmp_path / "doctor" / "doctor.html")


@pytest.fixture
def contact_sheet(tmp_path):
    results = [
        {"path": p, "predictions": [{"label": c, "probability": 0.7}, {"label": "plain", "probability": 0.2}]}
        for p, c in zip(images(tmp_path / "data"), CLASSES)
    ]
    results.append({"path": str(tmp_path / f"gone {SCRIPT[:7]}.jpg"), "predictions": [], "error": DOLLARS})
    return annotate_predictions(results, tmp_path / "annotated", title=f"predictions of {SCRIPT}")


@pytest.fixture
def map_page(tmp_path):
    labels = [*CLASSES, *CLASSES]
    xy = np.random.default_rng(0).normal(0, 1, (len(labels), 2))
    info = {"method": "pca", "backbone": "synthetic", "seconds": 0.1, "from_cache": False}
    return write_map_page(tmp_path, xy, labels, info, str(tmp_path / DOLLARS))


PAGES = ["report", "doctor_page", "contact_sheet", "map_page"]


@pytest.mark.parametrize("name", PAGES)
def test_every_page_uses_the_shared_shell_and_escapes_names(name, request):
    html = request.getfixturevalue(name).read_text(encoding="utf-8")
    assert_shared_shell(html)
    assert_names_escaped(html)
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html or name == "map_page"


@pytest.mark.browser
@pytest.mark.parametrize("name", PAGES)
def test_every_page_loads_in_a_browser(name, request):
    shown = open_in_browser(request.getfixturevalue(name))
    assert shown["data-broken"] == "0" and int(shown["data-images"]) >= 1, shown["text"]
    assert shown["data-overflow"] == "0", "the page must not be wider than the window"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown["dom"]


def test_page_wraps_prebuilt_html_in_the_shell():
    html = page(SCRIPT, "<p>body</p>")
    assert_shared_shell(html)
    assert "<title>&lt;script&gt;" in html and "<p>body</p>" in html


def test_confusion_matrix_png_is_written(tmp_path):
    cm = [[3, 1, 0], [0, 2, 1], [1, 0, 4]]
    path = write_confusion_matrix(cm, CLASSES, tmp_path / "run" / "confusion_matrix.png", f"title {DOLLARS}")
    assert path == tmp_path / "run" / "confusion_matrix.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    many = np.diag(np.arange(1, 41))
    many[3, 7] = 5
    write_confusion_matrix(many, [f"class {i}" for i in range(40)], path)  # the 30 most confused
    assert sorted(p.name for p in path.parent.iterdir()) == ["confusion_matrix.png"]  # no temporary left


def test_calibration_and_confusion_numbers():
    bins = reliability_bins(np.array([0.05, 0.95, 1.0]), np.array([0, 1, 0]), bins=10)
    assert bins.counts.tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 2] and bins.accuracy[9] == 0.5
    assert np.isnan(bins.accuracy[1]) and bins.centers[0] == pytest.approx(0.05)
    assert np.isnan(expected_calibration_error(np.zeros(0), np.zeros(0)))
    cm = np.array([[5, 2, 0], [0, 4, 0], [3, 0, 1]])
    assert confused_pairs(cm, ["a", "b", "c"]) == [("c", "a", 3, 0.75), ("a", "b", 2, 2 / 7)]
