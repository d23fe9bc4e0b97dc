"""The run folder: every file written once, atomically, the model before any figure."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import cli

import headstart
import headstart.core.io as core_io
import headstart.estimator.classifier as classifier_module
import headstart.reporting.plots as plots_module
import headstart.runs.writer as writer_module


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


def in_run_folder(path: Path, run_dir: Path) -> Path | None:
    """``path`` relative to the run folder, or to the staging folder a run is written in before it
    is swapped in (``core.folders``); None for a path in neither."""
    for folder in path.parents:
        staged = folder.parent == run_dir.parent and folder.name.startswith(f".{run_dir.name}.headstart-new-")
        if folder == run_dir or staged:
            return path.relative_to(folder)
    return None


def test_each_run_file_is_written_once(colors_dir, tmp_path, monkeypatch):
    writes = count_writes(monkeypatch)
    exclude = [str(colors_dir / "red" / "red_0.jpg")]
    run_dir = tmp_path / "run"
    headstart.ImageClassifier(
        strategy="feature-extraction", verbose=False, report_map="pca", exclude=exclude
    ).fit(colors_dir, out_dir=run_dir)
    in_run = {rel.as_posix(): n for p, n in writes.items() if (rel := in_run_folder(p, run_dir)) is not None}
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
    assert not [p for p in tmp_path.iterdir() if "headstart-" in p.name]  # nor a staging folder


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
    proc = cli("report", run_dir)
    assert proc.returncode == 0, proc.stderr
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Feature map" in html and "No map was saved" not in html
    # a new map needs the model for the features: one line, no traceback
    proc = cli("report", run_dir, "--points", "all")
    assert proc.returncode == 2 and "model.safetensors" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.cli
def test_report_remaps_all_points_through_the_model(colors_dir, tmp_path):
    import csv

    run_dir = tmp_path / "run"
    headstart.ImageClassifier(strategy="feature-extraction", verbose=False, report_map="none").fit(
        colors_dir, out_dir=run_dir
    )
    proc = cli("report", run_dir, "--points", "all", "--method", "pca", "-q")
    assert proc.returncode == 0, proc.stderr
    with open(run_dir / "map.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and {r["split"] for r in rows} == {"train", "val", "test"}


# --------------------------------------------------------------------------- replaced whole (issue 24)


def make_killed_finetune_run(run_dir: Path) -> None:
    """What a fine-tuning run killed after an epoch leaves in its folder (the older layout, in
    place): its config, history and checkpoint."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"state")
    (run_dir / "finetune.json").write_text('{"data": "/x", "params": {}}')
    (run_dir / "history.csv").write_text("epoch,loss\n1,0.5\n")


@pytest.mark.cli
def test_a_typo_in_the_data_path_leaves_the_run_folder_untouched(colors_dir, tmp_path):
    from conftest import tree_digest

    run_dir = tmp_path / "run"
    headstart.ImageClassifier(strategy="feature-extraction", verbose=False, report_map="none").fit(
        colors_dir, out_dir=run_dir
    )
    make_killed_finetune_run(run_dir)
    before = tree_digest(run_dir)
    proc = cli("train", str(colors_dir) + "-typo", "--out", run_dir)
    assert proc.returncode != 0 and "data path not found" in proc.stderr
    assert tree_digest(run_dir) == before  # the resumable state included
    assert not [p for p in tmp_path.iterdir() if "headstart-" in p.name]


KILL_AFTER_MODEL = """
import os, signal
import headstart.runs.writer as w
original = w.write_rows
def write_rows(path, *args, **kwargs):  # the first file after model.safetensors: kill -9 here
    os.kill(os.getpid(), signal.SIGKILL)
w.write_rows = write_rows
"""


@pytest.mark.cli
def test_a_rerun_killed_after_its_model_landed_leaves_the_old_run_whole(colors_dir, tmp_path):
    from conftest import tree_digest

    run_dir = tmp_path / "run"
    headstart.ImageClassifier(strategy="feature-extraction", verbose=False, report_map="none").fit(
        colors_dir, out_dir=run_dir
    )
    before = tree_digest(run_dir)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_AFTER_MODEL)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    args = ["train", str(colors_dir), "--strategy", "feature-extraction", "--out", str(run_dir)]
    proc = subprocess.run(
        [sys.executable, "-m", "headstart", *args], env=env, capture_output=True, timeout=240
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert tree_digest(run_dir) == before  # the old run, not the new model beside old metrics
    staged = [p for p in tmp_path.iterdir() if p.name.startswith(".run.headstart-new-")]
    assert len(staged) == 1 and (staged[0] / "model.safetensors").is_file()
    # the next run replaces the folder whole and removes what the killed one left
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not [p for p in tmp_path.iterdir() if "headstart-" in p.name]
    assert (run_dir / "metrics.json").is_file() and (run_dir / "model.safetensors").is_file()


def test_swap_in_replaces_a_folder_whole(tmp_path):
    from headstart.core.folders import staging_folder, swap_in

    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    staging = staging_folder(final)
    (staging / "new.txt").write_text("new")
    swap_in(staging, final)
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    fresh = tmp_path / "fresh"
    staging = staging_folder(fresh)
    (staging / "a").write_text("a")
    swap_in(staging, fresh)
    assert (fresh / "a").read_text() == "a"
