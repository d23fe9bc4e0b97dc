"""The run folder: every file written once, atomically, the model before any figure."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest

import headstart
import headstart.core.io as core_io
import headstart.estimator.classifier as classifier_module
import headstart.reporting.plots as plots_module
import headstart.runs.writer as writer_module

CLI = [sys.executable, "-m", "headstart"]


def count_writes(monkeypatch) -> Counter:
    """Patch every way a run file is written; returns path -> number of writes."""
    writes: Counter = Counter()
    original_atomic = core_io.atomic_path

    @contextmanager
    def counting_atomic(path):
        writes[Path(path)] += 1
        with original_atomic(path) as tmp:
            yield tmp

    monkeypatch.setattr(core_io, "atomic_path", counting_atomic)
    for module in (writer_module, plots_module):
        if hasattr(module, "atomic_path"):  # modules that imported it by name
            monkeypatch.setattr(module, "atomic_path", counting_atomic)
    original_save = classifier_module.save_bundle

    def counting_save(path, *args, **kwargs):
        writes[Path(path)] += 1
        return original_save(path, *args, **kwargs)

    monkeypatch.setattr(classifier_module, "save_bundle", counting_save)
    return writes


def test_each_run_file_is_written_once(colors_dir, tmp_path, monkeypatch):
    writes = count_writes(monkeypatch)
    exclude = [str(colors_dir / "red" / "red_0.jpg")]
    run_dir = tmp_path / "run"
    headstart.ImageClassifier(
        strategy="feature-extraction", verbose=False, report_map="pca", exclude=exclude
    ).fit(colors_dir, out_dir=run_dir)
    in_run = {p.relative_to(run_dir).as_posix(): n for p, n in writes.items() if run_dir in p.parents}
    expected = {
        "model.safetensors",
        "metrics.json",
        "split.csv",
        "skipped.csv",
        "test_predictions.csv",
        "test_probabilities.npy",
        "confusion_matrix.png",
        "duplicate_groups.csv",
        "excluded.csv",
        "map.csv",
        "map.json",
        "report.html",
    }
    assert set(in_run) == expected, set(in_run) ^ expected
    assert all(n == 1 for n in in_run.values()), {p: n for p, n in in_run.items() if n != 1}
    files = {p.name for p in run_dir.iterdir()}
    assert files == expected | {"log.txt"}, files  # no temporary file left behind


def test_the_model_is_saved_before_any_figure(colors_dir, tmp_path, monkeypatch):
    order: list[str] = []
    original_save = classifier_module.save_bundle

    def recording_save(path, *args, **kwargs):
        order.append("model")
        return original_save(path, *args, **kwargs)

    def failing_plot(*args, **kwargs):
        order.append("plot")
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(classifier_module, "save_bundle", recording_save)
    monkeypatch.setattr(writer_module, "write_confusion_matrix", failing_plot)
    monkeypatch.setattr(writer_module, "build_report", failing_plot)
    run_dir = tmp_path / "run"
    clf = headstart.ImageClassifier(strategy="feature-extraction", verbose=False, report_map="none").fit(
        colors_dir, out_dir=run_dir
    )
    assert order == ["model", "plot", "plot"]
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "metrics.json").is_file()
    assert not (run_dir / "confusion_matrix.png").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")], "temporary files left"
    log = (run_dir / "log.txt").read_text()
    assert "warning: the confusion_matrix.png could not be written" in log and "no fonts today" in log
    assert headstart.load(run_dir).predict(clf.test_["paths"]) == clf.predict(clf.test_["paths"])


def test_evaluate_writes_its_files_once(colors_dir, tmp_path, monkeypatch):
    clf = headstart.ImageClassifier(strategy="feature-extraction", verbose=False, report_map="none").fit(
        colors_dir
    )
    writes = count_writes(monkeypatch)
    out = tmp_path / "eval"
    metrics = clf.evaluate(colors_dir, out_dir=out)
    assert metrics["evaluated_on"] == "saved test split" and "created" not in metrics
    in_run = {p.name: n for p, n in writes.items() if out in p.parents}
    assert set(in_run) == {
        "metrics.json",
        "skipped.csv",
        "test_predictions.csv",
        "test_probabilities.npy",
        "confusion_matrix.png",
        "report.html",
    }
    assert all(n == 1 for n in in_run.values()), {p: n for p, n in in_run.items() if n != 1}


@pytest.mark.cli
def test_report_rebuilds_from_the_run_files_alone(colors_dir, tmp_path):
    run_dir = tmp_path / "run"
    headstart.ImageClassifier(strategy="feature-extraction", verbose=False, report_map="pca").fit(
        colors_dir, out_dir=run_dir
    )
    (run_dir / "model.safetensors").unlink()
    (run_dir / "report.html").unlink()
    proc = subprocess.run([*CLI, "report", str(run_dir)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Feature map" in html and "No map was saved" not in html
    # a new map needs the model for the features: one line, no traceback
    proc = subprocess.run([*CLI, "report", str(run_dir), "--points", "all"], capture_output=True, text=True)
    assert proc.returncode == 2 and "model.safetensors" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.cli
def test_report_remaps_all_points_through_the_model(colors_dir, tmp_path):
    import csv

    run_dir = tmp_path / "run"
    headstart.ImageClassifier(strategy="feature-extraction", verbose=False, report_map="none").fit(
        colors_dir, out_dir=run_dir
    )
    proc = subprocess.run(
        [*CLI, "report", str(run_dir), "--points", "all", "--method", "pca", "-q"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    with open(run_dir / "map.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and {r["split"] for r in rows} == {"train", "val", "test"}
