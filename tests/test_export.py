"""``headstart export`` and its runtime: the exported file computes what ``headstart predict`` does.

Parity is checked against headstart with an fp32 engine (onnxruntime): the default OpenVINO engine
runs in bf16 on CPUs that have it, whose own rounding (~1e-2) would hide an export error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import headstart
from headstart.cli.app import app
from headstart.core.errors import HeadstartError, ParameterError
from headstart.data.images import Preprocessor
from headstart.export import quantize
from headstart.export.exporter import export_model, preprocessing_spec
from headstart.export.runtime import load_exported, prepare_pixels
from headstart.models.backbones import DEFAULT_BACKBONE

EXPORT_PAGE = Path(__file__).resolve().parents[1] / "docs" / "export-serve.md"  # the snippet's page
TOLERANCE = 1e-3
DEFAULT_DATA_CONFIG = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def flowers_paths(csv: Path, n: int = 50) -> list[str]:
    """``n`` photos of the CSV, spread over its classes."""
    rows = [line.split(",")[0] for line in csv.read_text().splitlines()[1:]]
    return rows[:: max(1, len(rows) // n)][:n]


def assert_parity(exported: np.ndarray, reference: np.ndarray) -> None:
    assert exported.shape == reference.shape
    assert float(np.abs(exported - reference).max()) <= TOLERANCE
    np.testing.assert_array_equal(exported.argmax(1), reference.argmax(1))


@pytest.fixture(scope="module")
def probe_run(flowers_probe) -> Path:
    """A linear probe on the flowers subset, trained with an fp32 engine (shared: conftest)."""
    return flowers_probe[0]


# ------------------------------------------------------------------ fast: preprocessing, errors


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (300, 300), (257, 1000), (1001, 256), (50, 40)])
def test_runtime_resize_and_crop_equal_headstarts_preprocessor(size):
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    spec = preprocessing_spec(DEFAULT_DATA_CONFIG)
    assert spec["resize"] == 256 and spec["crop"] == [224, 224] and spec["interpolation"] == "bicubic"
    np.testing.assert_array_equal(prepare_pixels(img, spec), Preprocessor(DEFAULT_DATA_CONFIG)(img))


def test_load_exported_errors_are_one_line(tmp_path):
    with pytest.raises(HeadstartError, match="holds no exported model"):
        load_exported(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(HeadstartError, match="export.json is missing"):
        load_exported(tmp_path)
    (tmp_path / "export.json").write_text(json.dumps({"classes": ["a"], "input_size": [8, 8]}))
    with pytest.raises(HeadstartError, match="cannot load"):
        load_exported(tmp_path / "model.onnx")


@pytest.mark.cli
def test_cli_refuses_a_missing_model_and_a_bad_precision(tmp_path):
    result = CliRunner().invoke(app, ["export", str(tmp_path / "none.safetensors"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "model file not found" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(ParameterError, match="precision"):
        export_model(tmp_path / "none.safetensors", tmp_path, "onnx", "int4")


def test_knn_head_is_refused_in_one_line(colors_dir, tmp_path):
    model = headstart.ImageClassifier(
        strategy="feature-extraction", head="knn", engine="onnxruntime", check_data=False, verbose=False
    )
    path = model.fit(colors_dir).save(tmp_path / "knn.safetensors")
    result = CliRunner().invoke(app, ["export", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "kNN head cannot be exported" in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.slow  # four exports
def test_an_export_folder_is_replaced_whole_and_other_files_are_kept(colors_dir, tmp_path, monkeypatch):
    """Issue 24: a crash while exporting leaves the earlier export whole; a folder that also holds
    the user's own files is written file by file and those files stay."""
    import headstart.export.exporter as exporter

    model = headstart.ImageClassifier(strategy="feature-extraction", check_data=False, verbose=False)
    path = model.fit(colors_dir).save(tmp_path / "m.safetensors")
    out = tmp_path / "out"
    export_model(path, out, "onnx")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"model.onnx", "labels.txt", "export.json"}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter, "write_beside", crash)
    with pytest.raises(KeyboardInterrupt):
        export_model(path, out, "openvino")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    export_model(path, out, "openvino")
    assert {p.name for p in out.iterdir()} == {"model.xml", "model.bin", "labels.txt", "export.json"}
    assert not [p for p in tmp_path.iterdir() if "headstart-" in p.name]
    (out / "notes.txt").write_text("mine")
    export_model(path, out, "onnx")
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.onnx").is_file()


def test_int8_without_its_training_images_names_what_is_missing(colors_dir, tmp_path):
    data = shutil.copytree(colors_dir, tmp_path / "moved")
    model = headstart.ImageClassifier(
        strategy="feature-extraction", engine="onnxruntime", check_data=False, verbose=False
    ).fit(data)
    path = model.save(tmp_path / "model.safetensors")
    shutil.rmtree(data)
    with pytest.raises(HeadstartError, match="int8 needs the model's train images"):
        export_model(path, tmp_path / "out", "onnx", "int8")
    assert not (tmp_path / "out" / "model.onnx").exists()


# ------------------------------------------------------------------ parity on flowers photos


@pytest.mark.slow
@pytest.mark.cli
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_exported_probe_matches_headstart_predict(probe_run, flowers_csv, tmp_path, fmt):
    out = tmp_path / fmt
    result = CliRunner().invoke(app, ["export", str(probe_run), "--format", fmt, "--out", str(out), "-q"])
    assert result.exit_code == 0 and result.output == "", result.output
    model_file = out / ("model.onnx" if fmt == "onnx" else "model.xml")
    exported = load_exported(out)
    paths = flowers_paths(flowers_csv)
    pixels = np.stack([exported.load_image(p) for p in paths])
    reference = headstart.load(probe_run, engine="onnxruntime", verbose=False).predict_proba(paths)
    assert_parity(exported.predict_proba(pixels), reference)
    info = json.loads((out / "export.json").read_text())
    assert exported.classes == info["classes"] == (out / "labels.txt").read_text().split()
    assert exported.input_size == (224, 224) and info["backbone"] == DEFAULT_BACKBONE
    assert info["test_metrics"]["accuracy"] == info["accuracy"]["fp32_headstart"]
    assert file_metadata(model_file)["classes"] == json.dumps(info["classes"])


def file_metadata(model_file: Path) -> dict[str, str]:
    if model_file.suffix == ".onnx":
        import onnx

        return {p.key: p.value for p in onnx.load(str(model_file)).metadata_props}
    import openvino as ov

    model = ov.Core().read_model(str(model_file))
    return {
        key: model.get_rt_info(["headstart", key]).astype(str)
        for key in ("classes", "preprocessing", "precision")
    }


@pytest.mark.slow
def test_mlp_head_and_fp16_export(flowers_csv, tmp_path):
    clf = headstart.ImageClassifier(
        strategy="feature-extraction", head="mlp", engine="onnxruntime", check_data=False, verbose=False
    )
    path = clf.fit(flowers_csv).save(tmp_path / "mlp.safetensors")
    paths = flowers_paths(flowers_csv)
    reference = clf.predict_proba(paths)
    export_model(path, tmp_path / "fp32", "onnx", "fp32")
    exported = load_exported(tmp_path / "fp32")
    pixels = np.stack([exported.load_image(p) for p in paths])
    assert_parity(exported.predict_proba(pixels), reference)
    export_model(path, tmp_path / "fp16", "openvino", "fp16")
    half = load_exported(tmp_path / "fp16")
    assert (tmp_path / "fp16" / "model.bin").stat().st_size < 0.6 * (
        tmp_path / "fp32" / "model.onnx"
    ).stat().st_size
    assert float(np.abs(half.predict_proba(pixels) - reference).max()) < 0.05


@pytest.mark.slow
def test_exported_fine_tuned_network_matches_headstart_predict(flowers_csv, tmp_path):
    from conftest import make_gratings

    data = make_gratings(tmp_path / "gratings")
    run = tmp_path / "run"
    settings = dict(
        unfreeze="last:1", epochs=2, lr=1e-4, train_batch_size=8, augment="none", loader_workers=0
    )
    headstart.FineTuneClassifier(
        **settings, precision="fp32", engine="torch", check_data=False, verbose=False
    ).fit(data, out_dir=run)
    model = headstart.load(run, engine="onnxruntime", verbose=False)
    assert model.meta_["strategy"] == "finetune"
    assert json.loads((run / "metrics.json").read_text())["finetune"]["probe_kept"] is False
    export_model(run, tmp_path / "out", "onnx", "fp32")
    exported = load_exported(tmp_path / "out")
    paths = sorted(str(p) for p in data.rglob("*.png")) + flowers_paths(flowers_csv, 26)
    pixels = np.stack([exported.load_image(p) for p in paths])
    assert_parity(exported.predict_proba(pixels), model.predict_proba(paths))
    assert exported.metadata["strategy"] == "finetune"


@pytest.mark.slow
def test_runtime_imports_neither_torch_nor_timm(probe_run, flowers_csv, tmp_path):
    export_model(probe_run, tmp_path / "out", "onnx", "fp32")
    photo = flowers_paths(flowers_csv, 1)[0]
    code = (
        "import sys; from headstart.export.runtime import load_exported\n"
        f"m = load_exported({str(tmp_path / 'out')!r})\n"
        f"p = m.predict_proba(m.load_image({photo!r})[None])\n"
        "assert p.shape == (1, len(m.classes)), p.shape\n"
        "print(sorted(name for name in ('torch', 'timm', 'torchvision') if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


# ------------------------------------------------------------------ int8


@pytest.mark.slow
def test_int8_records_both_accuracies_and_refuses_a_large_loss(probe_run, tmp_path, monkeypatch):
    model_file = export_model(probe_run, tmp_path / "int8", "onnx", "int8", force=True)
    info = json.loads((tmp_path / "int8" / "export.json").read_text())
    accuracy = info["accuracy"]
    assert set(accuracy) >= {"fp32", "int8", "split", "n"} and accuracy["split"] == "test"
    assert info["calibration"]["images"] > 0
    assert model_file.stat().st_size < 0.4 * export_model(probe_run, tmp_path / "fp32", "onnx").stat().st_size
    monkeypatch.setattr(quantize, "quantize_onnx", lambda fp32, out, pixels: Path(shutil.copy(fp32, out)))
    monkeypatch.setattr(quantize, "accuracy", lambda path, fmt, *a: 0.9 if path.name == "fp32.onnx" else 0.85)
    with pytest.raises(ParameterError, match=r"int8 loses 5\.0 points .*fp32 90\.0%, int8 85\.0%"):
        export_model(probe_run, tmp_path / "refused", "openvino", "int8")
    assert not (tmp_path / "refused" / "model.xml").exists()


# ------------------------------------------------------------------ the export page's snippet


def readme_snippet() -> str:
    text = EXPORT_PAGE.read_text(encoding="utf-8")
    found = re.search(r"<!-- export-snippet -->\s*```python\n(.*?)```", text, re.S)
    assert found, f"{EXPORT_PAGE.name} has no ```python block after <!-- export-snippet -->"
    return found.group(1)


def test_readme_snippet_uses_only_pillow_numpy_and_onnxruntime():
    imports = set(re.findall(r"^(?:import|from) (\w+)", readme_snippet(), re.M))
    for line in re.findall(r"^import (.+)$", readme_snippet(), re.M):
        imports |= {name.strip().split(" ")[0] for name in line.split(",")}
    assert imports <= {"json", "sys", "numpy", "onnxruntime", "PIL"}, imports
    assert len(readme_snippet().splitlines()) <= 22


@pytest.mark.slow
def test_readme_snippet_classifies_like_headstart(probe_run, flowers_csv, tmp_path):
    python = os.environ.get("HEADSTART_MIN_PYTHON")
    if not python:
        pytest.skip(
            "HEADSTART_MIN_PYTHON is not set: .ci/run sets it to a venv with only pillow, numpy, onnxruntime"
        )
    export_model(probe_run, tmp_path / "export", "onnx", "fp32")
    (tmp_path / "snippet.py").write_text(readme_snippet())
    model = headstart.load(probe_run, engine="onnxruntime", verbose=False)
    for photo in flowers_paths(flowers_csv, 5):
        done = subprocess.run(
            [python, "snippet.py", photo], cwd=tmp_path, capture_output=True, text=True, check=True
        )
        assert done.stdout.split("\t")[0] == model.predict([photo])[0], done.stdout
