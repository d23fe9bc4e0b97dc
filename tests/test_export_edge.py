"""``--format tflite`` and ``--format coreml``: the classifier where apps run, checked as far as
this machine can (TFLite runs here with the LiteRT interpreter; Core ML only on Apple systems)."""

from __future__ import annotations

import builtins
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

import headstart
from headstart.core.errors import HeadstartError
from headstart.export import coreml, tflite
from headstart.export.exporter import export_model

EXPORT_PAGE = Path(__file__).resolve().parents[1] / "docs" / "export-serve.md"


@pytest.fixture(scope="module")
def probe_run(flowers_probe) -> tuple[Path, object]:
    return flowers_probe  # one probe on the flowers subset, shared with the other export tests


def tflite_snippet() -> str:
    found = re.search(r"<!-- tflite-snippet -->\s*```python\n(.*?)```", EXPORT_PAGE.read_text(), re.S)
    assert found, f"{EXPORT_PAGE.name} has no ```python block after <!-- tflite-snippet -->"
    return found.group(1)


def test_tflite_snippet_uses_only_pillow_numpy_and_litert():
    imports = set(re.findall(r"^(?:import|from) (\w+)", tflite_snippet(), re.M))
    for line in re.findall(r"^import (.+)$", tflite_snippet(), re.M):
        imports |= {name.strip().split(" ")[0] for name in line.split(",")}
    assert imports <= {"json", "sys", "numpy", "ai_edge_litert", "PIL"}, imports


@pytest.mark.parametrize("module, fmt", [("litert_torch", "tflite"), ("coremltools", "coreml")])
def test_a_missing_extra_is_one_line_naming_it(module, fmt, monkeypatch):
    real = builtins.__import__

    def no_extra(name, *args, **kwargs):
        if name.split(".")[0] == module:
            raise ImportError(f"No module named {module!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_extra)
    monkeypatch.setattr("importlib.import_module", lambda name: no_extra(name))
    with pytest.raises(
        HeadstartError, match=rf"^--format {fmt} needs \w+: pip install 'headstart\[{fmt}\]'$"
    ):
        tflite._require("litert_torch") if fmt == "tflite" else coreml._coremltools()


@pytest.mark.slow
def test_tflite_export_is_checked_and_runs_with_only_litert_like_predict(probe_run, tmp_path):
    pytest.importorskip("litert_torch", reason="pip install 'headstart[tflite]'")
    run, clf = probe_run
    model_file = export_model(run, tmp_path / "export", format="tflite")
    info = json.loads((tmp_path / "export" / "export.json").read_text())
    assert model_file.name == "model.tflite" and info["format"] == "tflite"
    assert info["check"]["top1_agreement"] >= 0.95 and info["check"]["max_probability_diff"] < 1e-3
    assert tflite.read_metadata(model_file)["classes"] == clf.classes_
    python = os.environ.get("HEADSTART_LITERT_PYTHON")
    if not python:
        pytest.skip("HEADSTART_LITERT_PYTHON is not set: .ci/run sets it to a venv with only ai-edge-litert")
    (tmp_path / "snippet.py").write_text(tflite_snippet())
    photos = clf.test_["paths"]
    expected = clf.predict(photos)
    same = 0
    for photo, label in zip(photos, expected):
        done = subprocess.run(
            [python, "snippet.py", photo], cwd=tmp_path, capture_output=True, text=True, check=True
        )
        same += done.stdout.split("\t")[0] == label
    assert same >= 0.95 * len(photos), (same, len(photos))


@pytest.mark.slow
def test_coreml_package_has_the_image_input_outputs_and_labels(probe_run, tmp_path):
    pytest.importorskip("coremltools", reason="pip install 'headstart[coreml]'")
    run, clf = probe_run
    package = export_model(run, tmp_path / "export", format="coreml")
    info = json.loads((tmp_path / "export" / "export.json").read_text())
    assert package.name == "model.mlpackage" and package.is_dir()
    check = info["check"]
    assert check["inputs"] == ["image"] and check["image"] == info["input_size"]
    assert check["class_labels"] == clf.classes_ and "not_checked" in check


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "coreml"])
def test_a_model_with_a_reject_score_exports_it_as_a_second_output(fmt, tmp_path):
    pytest.importorskip("litert_torch" if fmt == "tflite" else "coremltools", reason=f"headstart[{fmt}]")
    from conftest import make_class_folders

    root = make_class_folders(tmp_path / "colors", per_class=10)
    headstart.ImageClassifier(
        strategy="feature-extraction", reject="auto", target_accuracy=0.9, verbose=False,
        report_map="none", engine="onnxruntime",
    ).fit(root, out_dir=tmp_path / "run")  # fmt: skip
    export_model(tmp_path / "run", tmp_path / "export", format=fmt)
    info = json.loads((tmp_path / "export" / "export.json").read_text())
    assert info["score_output"]["name"] == "score"
    if fmt == "tflite":
        assert info["check"]["max_score_diff"] < 1e-3 and info["check"]["top1_agreement"] == 1.0
    else:
        assert info["check"]["outputs"] == ["probabilities", "score"]
