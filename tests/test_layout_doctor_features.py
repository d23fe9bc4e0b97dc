"""The doctor's run writes each file once, extraction is set up one way, exclusions round-trip."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest
from conftest import make_class_folders

import headstart.core.io as core_io
from headstart.data.discovery import discover, expand_paths
from headstart.data.exclusions import exclude_samples, read_exclude_list
from headstart.features.extractor import ExtractionResult


class FakeExtractor:
    """Stands in for a built extractor: features that separate the classes, one hash per file."""

    def extract(self, paths):
        rng = np.random.default_rng(0)
        labels = sorted({p.split("/")[-2] for p in paths})
        features = rng.normal(size=(len(paths), 16)).astype(np.float32)
        for i, p in enumerate(paths):
            features[i, labels.index(p.split("/")[-2])] += 6.0
        hashes = [hashlib.blake2b(p.encode(), digest_size=16).hexdigest() for p in paths]
        return ExtractionResult(features=features, errors={}, hashes=hashes)


@pytest.fixture
def fake_extraction(monkeypatch):
    calls = []

    def build(*args, **kwargs):
        calls.append((args, kwargs))
        return FakeExtractor()

    monkeypatch.setattr("headstart.doctor.diagnosis.build_extractor", build)
    return calls


@pytest.fixture
def writes(monkeypatch):
    """Names of the files written through headstart.core.io, one entry per write."""
    names: list[str] = []
    original = core_io.atomic_path

    @contextmanager
    def spy(path):
        names.append(str(path).rsplit("/", 1)[-1])
        with original(path) as tmp:
            yield tmp

    monkeypatch.setattr(core_io, "atomic_path", spy)
    return names


def test_run_doctor_writes_each_file_once(tmp_path, fake_extraction, writes):
    from headstart.runs.doctor import run_doctor

    data = make_class_folders(tmp_path / "d", per_class=6)
    doc, lines = run_doctor(data, tmp_path / "out", cache_dir=tmp_path / "c", engine="torch", verbose=False)
    counts = Counter(writes)
    assert counts["doctor.json"] == 1
    assert counts["exclude.txt"] == 1 and counts["label_ranking.csv"] == 1
    for name in ("doctor.json", "doctor.html", "exclude.txt", "label_ranking.csv"):
        assert (tmp_path / "out" / name).is_file()
    saved = json.loads((tmp_path / "out" / "doctor.json").read_text())
    assert saved["summary"] == doc["summary"] and saved["summary"]["usable"] == 18
    assert {"discover", "check_files", "features", "label_issues", "write", "total"} <= set(saved["timings"])
    assert saved["timings"]["total"] >= saved["timings"]["features"]
    assert saved["settings"]["backbone"] == "tf_efficientnet_lite0"
    assert lines[-1].startswith("doctor done in") and str(tmp_path / "out" / "doctor.json") in lines[-1]


def test_diagnose_sets_up_extraction_with_build_extractor(tmp_path, fake_extraction):
    from headstart.doctor import diagnose

    data = make_class_folders(tmp_path / "d", per_class=4)
    report = diagnose(data, backbone="resnet18", cache_dir=tmp_path / "c", engine="torch", batch_size=4)
    assert len(fake_extraction) == 1
    args, kwargs = fake_extraction[0]
    given = dict(
        zip(["backbone", "weights", "cache_dir", "engine", "batch_size", "workers", "verbose"], args)
    )
    given.update(kwargs)
    assert given["backbone"] == "resnet18" and given["engine"] == "torch" and given["batch_size"] == 4
    assert given["cache_dir"] == tmp_path / "c"
    assert report.dataset is not None and len(report.samples) == 12 and report.cross_validated


def test_exclude_list_written_by_the_doctor_reads_back(tmp_path):
    from headstart.runs.doctor import exclude_text

    dataset = discover(make_class_folders(tmp_path / "d", per_class=3))
    chosen = [dataset.samples[1].path, dataset.samples[4].path]
    doc = {"exclude_suggested": [{"path": p, "reason": "likely mislabeled"} for p in chosen]}
    core_io.write_text(tmp_path / "exclude.txt", exclude_text(doc), errors="surrogateescape")
    core_io.write_json(tmp_path / "doctor.json", doc)
    for listing in ("exclude.txt", "doctor.json"):
        entries = read_exclude_list(tmp_path / listing)
        assert entries == chosen
        kept, left_out, unmatched = exclude_samples(dataset, entries)
        assert [s.path for s in left_out] == chosen and not unmatched
        assert len(kept.samples) == len(dataset.samples) - 2


def test_expand_paths_lists_folder_images_and_reports_missing(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=2, classes=("red", "blue"))
    (root / "red" / "notes.txt").write_text("not an image")
    files, missing = expand_paths([root / "blue", root / "red" / "red_0.jpg", tmp_path / "gone.jpg"])
    assert [f.rsplit("/", 2)[-2:] for f in files] == [
        ["blue", "blue_0.jpg"],
        ["blue", "blue_1.jpg"],
        ["red", "red_0.jpg"],
    ]
    assert missing == [(str(tmp_path / "gone.jpg"), "path not found")]


def test_old_module_paths_are_gone_and_new_ones_import():
    assert importlib.util.find_spec("headstart.doctor.checks") is None
    from headstart.doctor import CheckReport, check_summary, diagnose, quick_check  # noqa: F401
    from headstart.features import FeatureCache, FeatureExtractor, build_extractor  # noqa: F401
    from headstart.features.engines import build_engine, export_onnx, resolve_engine  # noqa: F401

    assert not hasattr(importlib.import_module("headstart.features.extractor"), "extract_features")
