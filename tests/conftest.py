"""Shared fixtures: generated image folders, a subset of the shared flowers photos, one cache.

Also the headless browser of the ``browser`` tests: skipped (with the reason) where none is
installed, a failure instead where HEADSTART_REQUIRE_BROWSER=1 (CI must run them).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"  # a hub call fails at once instead of retrying

FLOWERS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "flower_photos"
DEFAULT_CHROMIUM = Path("/usr/bin/chromium")
COLORS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 60, 200)}


@pytest.fixture(scope="session", autouse=True)
def scratch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's temporary files (this process's and its children's) go below pytest's base
    folder, so what a killed subprocess leaves behind is removed with it instead of filling /tmp."""
    path = tmp_path_factory.mktemp("tmp")
    os.environ["TMPDIR"] = str(path)
    tempfile.tempdir = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature cache for the whole session: the backbone is exported once."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["HEADSTART_CACHE"] = str(path)
    return path


def make_image(path: Path, color: tuple[int, int, int], seed: int, size=(64, 48), fmt=None) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    x0, y0 = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
    arr[y0 : y0 + size[1] // 3, x0 : x0 + size[0] // 3] = rng.integers(0, 255, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def make_class_folders(root: Path, per_class: int = 10, classes=("red", "green", "blue")) -> Path:
    for c in classes:
        for i in range(per_class):
            make_image(root / c / f"{c}_{i}.jpg", COLORS[c], seed=100 * list(COLORS).index(c) + i)
    return root


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


def tiny_probe(root: Path):
    """The default backbone, a logistic head fitted on random features (a cheap start for
    training-loop tests) and ``(path, class index)`` items of the images below ``root``."""
    from headstart.models.backbones import create_backbone
    from headstart.models.heads import make_head

    files = sorted(root.rglob("*.jpg"))
    classes = sorted({f.parent.name for f in files})
    items = [(str(f), classes.index(f.parent.name)) for f in files]
    backbone = create_backbone()
    x = np.random.default_rng(0).normal(1.0, 0.5, (len(items), backbone.num_features)).astype(np.float32)
    y = np.array([label for _, label in items])
    head = make_head("logistic", cs=(1.0,), refit=False)
    head.fit(x, y, x, y, len(classes))
    return backbone, head, items, classes


def assert_bundle_and_export_agree(clf, tmp_path: Path):
    """Save ``clf``, load it and export it to fp32 ONNX: the loaded model's test probabilities
    equal the fitted one's, the exported graph's within 2e-3; the loaded model, for more checks."""
    import headstart
    from headstart.export.exporter import export_model
    from headstart.export.runtime import load_exported

    path = clf.save(tmp_path / "model.safetensors")
    loaded = headstart.load(path, verbose=False, engine="onnxruntime")
    files = clf.test_["paths"]
    reference = clf.predict_proba(files)
    np.testing.assert_allclose(loaded.predict_proba(files), reference, atol=1e-6)
    export_model(path, tmp_path / "out", "onnx", "fp32")
    exported = load_exported(tmp_path / "out")
    pixels = np.stack([exported.load_image(f) for f in files])
    np.testing.assert_allclose(exported.predict_proba(pixels), reference, atol=2e-3)
    return loaded


def cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``headstart ARGS`` run in this process by typer's CliRunner: the exit code, stdout and
    stderr a subprocess would give, without an interpreter's start-up (seconds each). An exception
    the CLI does not turn into its one-line error (a traceback in a real process) fails the test.
    Cases about the process itself (signals, hangs on hostile files, start-up) keep a subprocess."""
    from typer.testing import CliRunner

    from headstart.cli.app import app

    argv = [os.fsdecode(a) if isinstance(a, Path) else str(a) for a in args]
    result = CliRunner().invoke(app, argv, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"headstart {argv} raised {result.exception!r}\n{result.output}") from (
            result.exception
        )
    return subprocess.CompletedProcess(argv, result.exit_code, result.stdout, result.stderr)


def tree_digest(root: Path) -> dict[str, str]:
    """Path -> sha256 of every file (and link target) below root: proves nothing was written."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                try:
                    out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
                except PermissionError:
                    out[rel] = f"unreadable:{p.stat().st_size}:{p.stat().st_mtime_ns}"
            else:
                out[rel] = "dir"
    return out


@pytest.fixture
def colors_dir(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "colors")


@pytest.fixture(scope="session")
def flowers_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV naming 30 photos per class of the shared flowers set, read in place (never copied)."""
    if not FLOWERS.is_dir():
        pytest.skip("../shared/datasets/flower_photos is not present")
    rows = ["path,label"]
    for class_dir in sorted(p for p in FLOWERS.iterdir() if p.is_dir()):
        for f in sorted(class_dir.glob("*.jpg"))[:30]:
            rows.append(f"{f},{class_dir.name}")
    path = tmp_path_factory.mktemp("flowers") / "subset.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def flowers_probe(flowers_csv: Path, tmp_path_factory: pytest.TempPathFactory):
    """``(run folder, fitted classifier)``: one linear probe on the flowers subset (fp32 engine,
    seed 1), trained once for the export tests that read it. Tests never write into the folder."""
    import headstart

    run = tmp_path_factory.mktemp("flowers_probe") / "run"
    clf = headstart.ImageClassifier(
        strategy="feature-extraction", engine="onnxruntime", check_data=False, seed=1, verbose=False
    ).fit(flowers_csv, out_dir=run)
    return run, clf


def find_chromium() -> Path | None:
    """The headless browser, or None: HEADSTART_CHROMIUM if set (a path that is not an executable
    file means "no browser"), else ``chromium`` on PATH, else /usr/bin/chromium."""
    named = os.environ.get("HEADSTART_CHROMIUM")
    if named:
        return Path(named) if os.path.isfile(named) and os.access(named, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return Path(found)
    return DEFAULT_CHROMIUM if os.access(DEFAULT_CHROMIUM, os.X_OK) else None


def require_chromium() -> Path:
    """The browser; without one, skip the test (or fail it where HEADSTART_REQUIRE_BROWSER=1)."""
    chromium = find_chromium()
    if chromium is not None:
        return chromium
    looked = os.environ.get("HEADSTART_CHROMIUM") or "chromium on PATH or /usr/bin/chromium"
    if os.environ.get("HEADSTART_REQUIRE_BROWSER") == "1":
        pytest.fail(
            f"HEADSTART_REQUIRE_BROWSER=1 but no headless browser ({looked}): apt-get install chromium"
        )
    pytest.skip(f"no headless Chromium ({looked}): apt-get install chromium to run the browser checks")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A ``browser`` test needs the browser before it spends time building a report."""
    if item.get_closest_marker("browser") is not None:
        require_chromium()


def bundle_parts(path: Path) -> tuple[dict, dict, dict]:
    """A bundle's header as a plain dict (from its model card), its backbone and head arrays:
    tests edit the dict and write it back with ``models.bundle.write_bundle`` to craft files."""
    from headstart.models.bundle import load_bundle

    card, state, head = load_bundle(path)
    return card.to_meta(), state, head
