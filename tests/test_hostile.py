"""Hostile files, names and model files (issue 12): no hang, no lost run, no poisoned cache.

Every hostile input is built here at run time. Each case asserts: no traceback, no hang (a
subprocess ``timeout=``, or ``SIGALRM`` for in-process cases that touch no user file), the
expected skip reason or one-line error, the user's folder byte-identical afterwards
(``tree_digest``) and, where training was possible, the model saved.

The costly part is one training run over a data folder holding every hostile class name and
every hostile file at once (``battery``); the predict, evaluate and report cases reuse its model.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import COLORS, cli, make_image, tree_digest
from PIL import Image

CLI = [sys.executable, "-m", "headstart"]
TRAIN = ("train", "--strategy=feature-extraction")  # a quick probe, not the search that is the default
RUN_TIMEOUT = 240  # seconds for one command; a hang fails the test instead of stalling the suite

# Class folder names that are data, never markup, formulas or terminal commands.
HOSTILE_CLASSES = {
    "dollars": "cost_$10_$20",  # matplotlib mathtext (issue 12, "Why")
    "mathtext": "a$^$b",
    "brackets": "Dog [puppy]",  # rich markup (issue 12, "Why")
    "percent_braces": "100% {x}",
    "backslash": "back\\slash",
    "emoji": "cat 🐱 :smile:",
    "rtl": "עברית \u202egpj.exe",
    "formula": "=HYPERLINK(1)",
    "escape": "ansi \x1b[31mred",
    "non_utf8": os.fsdecode(b"caf\xe9"),
}
PER_CLASS = 6


def start(*args: Any, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """``headstart ARGS`` started in a subprocess (``finish`` waits for it)."""
    return subprocess.Popen(
        [*CLI, *map(os.fsdecode, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})},
    )


def finish(proc: subprocess.Popen, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    """The started command's result, under a timeout (a hang fails the test), with no traceback."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    done = subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        out.decode("utf-8", "surrogateescape"),
        err.decode("utf-8", "surrogateescape"),
    )
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    return done


def run(
    *args: Any, env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``headstart ARGS`` in a subprocess, under a timeout (a hang fails the test)."""
    return finish(start(*args, env=env, cwd=cwd), timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2 and one ``error: ...`` line naming every fragment; returns the line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """An in-process case that touches no user file (no blocking read) fails instead of hanging."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"took more than {seconds}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def make_classes(root: Path, names: dict[str, str], per_class: int = PER_CLASS) -> None:
    """``per_class`` small generated images in a folder for each class name (distinct colours)."""
    palette = list(COLORS.values())
    for n, name in enumerate(names.values()):
        base = palette[n % 3]
        color = tuple(int((c + 53 * n) % 256) for c in base)
        for i in range(per_class):
            make_image(root / name / f"img_{i}.jpg", color, seed=1000 * n + i)


def postscript() -> bytes:
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"


def bind_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.fsdecode(path))
    return sock


def add_hostile_files(root: Path, keep: list[Any]) -> dict[str, str]:
    """Bad files in the class folders; returns file name -> fragment of the skip reason."""
    first = root / HOSTILE_CLASSES["dollars"]
    second = root / HOSTILE_CLASSES["brackets"]
    expected = {}
    os.mkfifo(first / "pipe.jpg")  # a FIFO nobody writes to: a plain open() blocks forever
    expected["pipe.jpg"] = "not a regular file: a named pipe"
    (second / "fifo_link.jpg").symlink_to(first / "pipe.jpg")
    expected["fifo_link.jpg"] = "not a regular file: a named pipe"
    (first / "zero.jpg").symlink_to("/dev/zero")  # an endless device: memory would grow forever
    expected["zero.jpg"] = "not a regular file: a device"
    (second / "null.png").symlink_to("/dev/null")
    expected["null.png"] = "not a regular file: a device"
    keep.append(bind_socket(first / "sock.jpg"))
    expected["sock.jpg"] = "not a regular file: a socket"
    (second / "cat.jpg").write_bytes(postscript())  # must never reach Ghostscript
    expected["cat.jpg"] = "not an image Pillow can read"
    Image.new("RGB", (40, 30), (9, 9, 9)).save(first / "portable.jpg", format="PPM")  # not a format we take
    expected["portable.jpg"] = "not an image Pillow can read"
    Image.new("RGB", (40, 30), (9, 9, 9)).save(second / "icon.png", format="ICO")
    expected["icon.png"] = "not an image Pillow can read"
    Image.new("RGB", (1200, 1000), (9, 9, 9)).save(first / "large.png")  # over HEADSTART_MAX_PIXELS
    expected["large.png"] = "decompression-bomb limit"
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(second / "heavy.bmp")  # 120 KB: over HEADSTART_MAX_FILE_MB
    expected["heavy.bmp"] = "too large"
    (first / "riff.webp").write_bytes(b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 20)  # damaged WebP
    expected["riff.webp"] = "image"
    (second / "half.gif").write_bytes(b"GIF89a\x10\x00\x10\x00\x80\x00\x00")  # header only
    expected["half.gif"] = "image"
    # odd but usable: 16-bit and float images, converted without float64 copies
    Image.fromarray(np.full((48, 64), 60000, dtype=np.uint16)).save(first / "sixteen.png")
    Image.fromarray(np.linspace(-5, 5, 48 * 64, dtype=np.float32).reshape(48, 64)).save(second / "float.tif")
    return expected


ENV = {"HEADSTART_MAX_PIXELS": "1000000", "HEADSTART_MAX_FILE_MB": "0.1"}


@pytest.fixture(scope="module")
def battery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One training run over every hostile class name and file (with a stale earlier run and an
    interrupted write in the run folder); the model is reused by the later cases."""
    root = tmp_path_factory.mktemp("hostile")
    data, out = root / "data", root / "run"
    make_classes(data, HOSTILE_CLASSES)
    sockets: list[Any] = []
    expected = add_hostile_files(data, sockets)
    (data / HOSTILE_CLASSES["rtl"] / "loop").symlink_to(".", target_is_directory=True)
    (data / HOSTILE_CLASSES["emoji"] / "up").symlink_to("..", target_is_directory=True)
    out.mkdir()
    (out / "history.csv").write_text("epoch,loss\n1,0.5\n")  # a fine-tuning run was here before
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.pt").write_bytes(b"old")
    (out / "finetune.json").write_text("{}")
    (out / ".model.safetensors.999999999.tmp").write_bytes(b"half a model")  # a killed write
    before = tree_digest(data)
    proc = run(*TRAIN, data, "--out", out, "--engine", "torch", "--seed", "1", env=ENV)
    yield {"data": data, "out": out, "proc": proc, "expected": expected, "before": before}
    for s in sockets:
        s.close()


def test_battery_train_skips_every_hostile_file_with_its_reason(battery):
    proc, out = battery["proc"], battery["out"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file()
    skipped = {os.path.basename(r["path"]): r["reason"] for r in read_csv(out / "skipped.csv")}
    for name, reason in battery["expected"].items():
        assert reason in skipped.get(name, ""), (name, skipped.get(name))
    assert "symbolic-link loop" in skipped["loop"] and "symbolic-link loop" in skipped["up"]
    used = {r["path"] for r in read_csv(out / "split.csv")}
    assert any(p.endswith("sixteen.png") for p in used) and any(p.endswith("float.tif") for p in used)
    assert tree_digest(battery["data"]) == battery["before"], "the user's folder must be byte-identical"


def test_battery_names_reach_plots_report_and_logs_as_data(battery):
    proc, out = battery["proc"], battery["out"]
    assert "could not be written" not in proc.stderr, proc.stderr  # confusion matrix and report drew
    assert (out / "confusion_matrix.png").stat().st_size > 0
    html = (out / "report.html").read_text(encoding="utf-8", errors="surrogateescape")
    for key in ("dollars", "mathtext", "emoji", "backslash"):
        assert HOSTILE_CLASSES[key] in html, key
    assert "Dog [puppy]" in html and "100% {x}" in html
    assert "\x1b" not in proc.stderr  # no terminal control character reaches the terminal
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["classes"]) == set(HOSTILE_CLASSES.values())


def test_battery_csv_cells_never_run_as_formulas_and_read_back(battery):
    out = battery["out"]
    raw = (out / "split.csv").read_text(encoding="utf-8", errors="surrogateescape")
    assert ",'=HYPERLINK(1)," in raw and ",=HYPERLINK(1)," not in raw
    from headstart.core.io import read_rows

    labels = {r["label"] for r in read_rows(out / "split.csv")}
    assert labels == set(HOSTILE_CLASSES.values())  # the apostrophe is taken off on reading


def test_battery_stale_files_and_interrupted_writes_are_gone(battery):
    out = battery["out"]
    for name in ("history.csv", "checkpoints", "finetune.json", ".model.safetensors.999999999.tmp"):
        assert not (out / name).exists(), name
    assert (
        "fine-tuning"
        not in (out / "report.html").read_text(encoding="utf-8", errors="surrogateescape").lower()
    )


# --------------------------------------------------------------------------- predict, evaluate, report


@pytest.fixture(scope="module")
def predicted(battery, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """The ``predict`` runs that meet the hostile files, each in its own process (a blocking read
    would hang it, not the suite), started together: each start-up is seconds of imports."""
    data, model = battery["data"], battery["out"]
    alone = tmp_path_factory.mktemp("fifo") / "alone.jpg"
    os.mkfifo(alone)
    started = {
        "table": start(
            "predict", model, data / HOSTILE_CLASSES["brackets"], "--format", "table", "--top-k", "10",
            env={**ENV, "COLUMNS": "400"}, cwd=data,  # COLUMNS: a row on one line
        ),
        "walk": start("predict", model, data, "--format", "json", env=ENV),
        "alone": start("predict", model, alone, "--format", "json"),
    }  # fmt: skip
    return {name: finish(proc) for name, proc in started.items()}


@pytest.mark.slow  # three predict processes: seconds of imports each
def test_predict_table_shows_brackets_emoji_codes_and_escapes_as_text(battery, predicted):
    proc = predicted["table"]
    assert proc.returncode == 0, proc.stderr
    assert "Dog [puppy]/img_0.jpg" in proc.stdout  # the path, not "Dog /img_0.jpg"
    assert proc.stdout.count("Dog [puppy] ") >= PER_CLASS  # the class in every row's top 10
    assert "cat 🐱 :smile:" in proc.stdout and "😄" not in proc.stdout  # no emoji codes
    assert "\x1b" not in proc.stdout and "ansi \\x1b[31mred" in proc.stdout  # shown, never obeyed
    assert "not a regular file: a named pipe" in proc.stdout  # fifo_link.jpg
    assert tree_digest(battery["data"]) == battery["before"]


@pytest.mark.slow  # three predict processes: seconds of imports each
def test_predict_folder_walk_is_loop_safe_and_names_round_trip(battery, predicted):
    data = battery["data"]
    proc = predicted["walk"]
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    paths = [r["path"] for r in results]
    assert len(paths) == len(set(paths)), "a linked folder was listed again"
    assert not any("/loop/" in p or "/up/" in p for p in paths)
    by_name = {os.path.basename(r["path"]): r for r in results}
    assert "named pipe" in by_name["pipe.jpg"]["error"] and "socket" in by_name["sock.jpg"]["error"]
    non_utf8 = data / HOSTILE_CLASSES["non_utf8"] / "img_0.jpg"
    assert str(non_utf8) in paths  # the \udcXX escape reads back as the name on disk
    assert tree_digest(data) == battery["before"]


def test_predict_csv_protects_formula_cells(battery):
    """In process: this class folder holds plain images only (the hostile files are elsewhere)."""
    folder = battery["data"] / HOSTILE_CLASSES["formula"]
    assert all(p.is_file() and not p.is_symlink() for p in folder.iterdir())
    with time_limit(120):
        proc = cli("predict", battery["out"], folder, "--format", "csv", "--top-k", "10", env=ENV)
    assert proc.returncode == 0, proc.stderr
    labels = {row["label"] for row in csv.DictReader(io.StringIO(proc.stdout))}
    assert "'=HYPERLINK(1)" in labels and "=HYPERLINK(1)" not in labels


@pytest.mark.slow  # three predict processes: seconds of imports each
def test_predict_exits_non_zero_when_no_file_could_be_read(battery, predicted, tmp_path):
    proc = predicted["alone"]  # a named pipe alone
    assert_one_line_error(proc, "no image could be read")
    assert "named pipe" in json.loads(proc.stdout)[0]["error"]
    (tmp_path / "empty").mkdir()
    with time_limit(120):  # an empty folder: nothing to block on, so in process
        assert_one_line_error(cli("predict", battery["out"], tmp_path / "empty"), "no image files")


@pytest.mark.slow
def test_evaluate_and_report_on_hostile_data(battery, tmp_path):
    out = tmp_path / "eval"
    proc = run("evaluate", battery["out"], battery["data"], "--out", out, "--split", "all", env=ENV)
    assert proc.returncode == 0, proc.stderr
    skipped = {os.path.basename(r["path"]) for r in read_csv(out / "skipped.csv")}
    assert {"pipe.jpg", "sock.jpg", "zero.jpg", "cat.jpg", "large.png"} <= skipped
    with time_limit(120):  # reads split.csv etc. back (non-UTF-8 and protected cells), no image
        proc = cli("report", battery["out"])
    assert proc.returncode == 0 and "report:" in proc.stderr, proc.stderr
    assert tree_digest(battery["data"]) == battery["before"]


def test_out_inside_data_is_refused_before_anything_is_written(battery):
    """In process (refused before any file is read; a regression that reads them meets the
    hostile files, which the alarm bounds)."""
    data = battery["data"]
    with time_limit(120):
        proc = cli("evaluate", battery["out"], data, "--out", data / "runs")
        assert_one_line_error(proc, "--out", "inside the data folder")
        proc = cli(*TRAIN, data, "--out", data / HOSTILE_CLASSES["dollars"] / "run")
        assert_one_line_error(proc, "--out", "inside the data folder")
        for command in ("doctor", "embed"):
            assert_one_line_error(cli(command, data, "--out", data), "--out", "inside the data folder")
    assert tree_digest(data) == battery["before"]


@pytest.mark.slow
def test_doctor_on_hostile_data(battery, tmp_path):
    proc = run("doctor", battery["data"], "--out", tmp_path / "doc", "--engine", "torch", env=ENV)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "doc" / "doctor.json").read_text())
    reported = {os.path.basename(b["path"]): b["reason"] for b in doc["bad_files"]}
    for name in ("pipe.jpg", "fifo_link.jpg", "zero.jpg", "sock.jpg", "cat.jpg", "large.png", "heavy.bmp"):
        assert battery["expected"][name] in reported[name], name
    assert "\x1b" not in proc.stderr and "\u202e" not in proc.stderr  # names never drive the terminal
    assert "Traceback" not in proc.stderr
    assert tree_digest(battery["data"]) == battery["before"]


# --------------------------------------------------------------------------- values the CLI refuses


@pytest.mark.parametrize(
    "args, flag",
    [
        (["train", "DATA", "--batch-size", "0"], "--batch-size"),
        (["train", "DATA", "--batch-size", "-3"], "--batch-size"),
        (["train", "DATA", "--time-budget", "0"], "--time-budget"),
        (["train", "DATA", "--top-k", "0"], "--top-k"),
        (["predict", "MODEL", "IMAGE", "--top-k", "0"], "--top-k"),
        (["predict", "MODEL", "IMAGE", "--top-k", "-1"], "--top-k"),
        (["evaluate", "MODEL", "DATA", "--split", "tset"], "--split"),
    ],
)
def test_bad_values_are_one_line_errors(battery, tmp_path, args, flag):
    from typer.testing import CliRunner

    from headstart.cli.app import app

    names = {
        "DATA": str(battery["data"]),
        "MODEL": str(battery["out"]),
        "IMAGE": str(battery["data"] / HOSTILE_CLASSES["dollars"] / "img_0.jpg"),
    }
    args = [names.get(a, a) for a in args] + ["--out", str(tmp_path / "o")] * (args[0] != "predict")
    with time_limit(120):
        result = CliRunner().invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {flag}"), result.output
    assert not (tmp_path / "o").exists()
    assert tree_digest(battery["data"]) == battery["before"]


def test_unknown_split_in_csv_is_one_line_error(tmp_path):
    make_image(tmp_path / "a.jpg", (200, 40, 40), 1)
    make_image(tmp_path / "b.jpg", (40, 40, 200), 2)
    (tmp_path / "data.csv").write_text("path,label,split\na.jpg,red,train\nb.jpg,blue,tset\n")
    with time_limit(120):
        proc = cli(*TRAIN, tmp_path / "data.csv", "--out", tmp_path / "run")
    assert_one_line_error(proc, "line 3", "unknown split 'tset'")


@pytest.mark.parametrize("name", ["two\nlines", "carriage\rreturn", "para\u2029graph"])
def test_a_class_name_with_a_line_break_is_one_line_error(tmp_path, name):
    """Issue 24: labels.txt holds one class a line, so such a name is refused, not written."""
    data = tmp_path / "data"
    for cls, color in ((name, (200, 40, 40)), ("blue", (40, 40, 200))):
        for i in range(2):
            make_image(data / cls / f"{i}.jpg", color, i)
    before = tree_digest(data)
    with time_limit(120):
        proc = cli(*TRAIN, data, "--out", tmp_path / "run")
    line = assert_one_line_error(proc, "line break", "rename")
    assert repr(name) in line
    assert tree_digest(data) == before and not (tmp_path / "run" / "model.safetensors").exists()


# --------------------------------------------------------------------------- model files are untrusted


def read_bundle(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["headstart"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


def write_bundle(path: Path, header: Any, tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    text = header if isinstance(header, str) else json.dumps(header)
    save_file(tensors, str(path), metadata={"headstart": text})
    return path


def _set(meta: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    meta = json.loads(json.dumps(meta))
    *parents, last = dotted.split(".")
    node = meta
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return meta


DELETE = object()
# crafted metadata -> a fragment of the one-line error
CRAFTED_META = [
    ("classes", DELETE, "'classes'"),
    ("classes", "cats", "'classes'"),
    ("classes", [1, 2], "distinct names"),
    ("classes", ["a", "a"], "distinct names"),
    ("backbone", None, "'backbone'"),
    ("backbone.name", 7, "timm model name"),
    ("backbone.num_features", 10**9, "num_features"),
    ("backbone.data_config.input_size", [3, 100000, 100000], "input_size"),
    ("backbone.data_config.input_size", "big", "input_size"),
    ("backbone.data_config.crop_pct", 0, "crop_pct"),
    ("backbone.data_config.evil", "os.system", "data_config"),
    ("backbone.data_config.mean", ["a"], "mean"),
    ("head", DELETE, "'head'"),
    ("head.name", "pickle", "damaged or incomplete"),
    ("head.params", "C=1", "head params"),
    ("settings.top_k", -5, "top_k"),
    ("split", [1, 2], "'split'"),
    ("split.files", [["a.jpg", "x"]], "split files"),
    ("format_version", "x", "format_version"),
]


@pytest.mark.parametrize(
    "field, value, fragment", CRAFTED_META, ids=[f"{c[0]}={c[1]!r}"[:40] for c in CRAFTED_META]
)
def test_crafted_metadata_is_a_one_line_error(battery, tmp_path, field, value, fragment):
    import headstart
    from headstart.core.errors import HeadstartError

    meta, tensors = read_bundle(battery["out"] / "model.safetensors")
    meta = _set(meta, field, value)
    path = write_bundle(tmp_path / "model.safetensors", meta, tensors)
    with time_limit(60), pytest.raises(HeadstartError) as caught:
        headstart.load(path, verbose=False)
    message = str(caught.value)
    assert fragment in message and "\n" not in message, message


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "damaged"),
        (b"\x00" * 64, "damaged"),
        (b"\xff" * 8 + b"{not json", "damaged"),
        ("truncated", "damaged"),
        ("header not json", "damaged"),
        ("header a list", "not a JSON object"),
        ("no headstart entry", "not a headstart model"),
        ("head of another size", "outputs for"),
    ],
)
def test_damaged_model_files_are_one_line_errors_in_predict(battery, tmp_path, content, fragment):
    from safetensors.numpy import save_file

    source = battery["out"] / "model.safetensors"
    path = tmp_path / "model.safetensors"
    meta, tensors = read_bundle(source)
    if content == "truncated":
        path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    elif content == "header not json":
        write_bundle(path, "{classes: [", tensors)
    elif content == "header a list":
        write_bundle(path, [1, 2, 3], tensors)
    elif content == "no headstart entry":
        save_file(tensors, str(path), metadata={"other": "x"})
    elif content == "head of another size":
        write_bundle(path, _set(meta, "classes", [*meta["classes"], "extra"]), tensors)
    else:
        path.write_bytes(content)
    from typer.testing import CliRunner

    from headstart.cli.app import app

    image = battery["data"] / HOSTILE_CLASSES["dollars"] / "img_0.jpg"
    with time_limit(60):  # the model is refused before any image is opened
        result = CliRunner().invoke(app, ["predict", str(path), str(image)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert fragment in lines[0] and "Traceback" not in result.output, lines[0]


@pytest.mark.slow
def test_altered_weights_never_share_the_original_cache_and_are_refused(battery, tmp_path):
    import headstart
    from headstart.models.backbones import create_backbone

    meta, tensors = read_bundle(battery["out"] / "model.safetensors")
    name = next(k for k in sorted(tensors) if k.startswith("backbone.") and tensors[k].dtype == np.float32)
    tensors[name] = tensors[name] + np.float32(0.5)  # other weights, same recorded name and digest
    crafted = write_bundle(tmp_path / "model.safetensors", meta, tensors)
    with time_limit(120):
        original = headstart.load(battery["out"], verbose=False)
        forged = headstart.load(crafted, verbose=False)
    assert forged.backbone_.weights_id == original.backbone_.weights_id  # what the file claims...
    assert forged.backbone_.key != original.backbone_.key  # ...is not what keys the caches
    assert original.backbone_.key == create_backbone().key  # a loaded model finds what training cached
    image = battery["data"] / HOSTILE_CLASSES["dollars"] / "img_0.jpg"  # its features are cached
    proc = run("predict", crafted, image, timeout=120)
    assert_one_line_error(proc, "do not match their recorded digest")
    assert tree_digest(battery["data"]) == battery["before"]


# --------------------------------------------------------------------------- decoders and reads


def test_postscript_named_jpg_never_reaches_ghostscript(monkeypatch):
    from PIL import EpsImagePlugin

    from headstart.core.errors import BadImageError
    from headstart.data.images import decode_image

    assert Image.open(io.BytesIO(postscript())).format == "EPS"  # Pillow alone would take it
    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    with time_limit(30), pytest.raises(BadImageError, match="not an image Pillow can read"):
        decode_image(postscript())
    assert not calls


def test_any_decoder_exception_is_a_skip_naming_it(monkeypatch, tmp_path):
    from PIL import PngImagePlugin

    from headstart.core.errors import BadImageError
    from headstart.data.images import decode_image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")

    def broken(self: Any) -> None:
        raise RuntimeError("decoder bug")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", broken)
    with time_limit(30), pytest.raises(BadImageError, match="RuntimeError: decoder bug"):
        decode_image((tmp_path / "a.png").read_bytes())


def test_special_files_are_refused_without_blocking(tmp_path):
    from headstart.core.errors import BadImageError
    from headstart.data.images import read_bytes

    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "urandom.jpg").symlink_to("/dev/urandom")
    sock = bind_socket(tmp_path / "s.jpg")
    try:
        for name, kind in [("fifo.jpg", "named pipe"), ("urandom.jpg", "device"), ("s.jpg", "socket")]:
            with time_limit(10), pytest.raises(BadImageError, match=f"not a regular file: a {kind}"):
                read_bytes(tmp_path / name)
    finally:
        sock.close()
    (tmp_path / "big.jpg").write_bytes(b"\xff" * 2000)
    with pytest.raises(BadImageError, match="too large"):
        read_bytes(tmp_path / "big.jpg", max_bytes=1000)


def test_sixteen_bit_conversion_makes_no_float64_copy():
    import tracemalloc

    from headstart.data.images import to_rgb

    side = 1500
    img = Image.fromarray(np.full((side, side), 65535, dtype=np.uint16))
    tracemalloc.start()
    rgb = to_rgb(img)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (255, 255, 255)
    assert peak < 8 * side * side, f"{peak / 1e6:.0f} MB: a float64 copy of the image"


def test_fine_tuning_loader_skips_hostile_files(tmp_path):
    from headstart.data.loaders import IGNORED_LABEL, ImageSet

    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "cat.jpg").write_bytes(postscript())
    good = make_image(tmp_path / "good.jpg", (10, 200, 10), 1)
    items = [(str(tmp_path / "pipe.jpg"), 0), (str(tmp_path / "cat.jpg"), 1), (str(good), 2)]
    dataset = ImageSet(items, lambda img: np.asarray(img), 64, (3, 8, 8))
    with time_limit(30):
        labels = [dataset[i][1] for i in range(3)]
    assert labels == [IGNORED_LABEL, IGNORED_LABEL, 2]


def test_expand_paths_lists_each_image_once_through_links(tmp_path):
    from headstart.data.discovery import expand_paths

    make_image(tmp_path / "a" / "one.jpg", (1, 2, 3), 1)
    make_image(tmp_path / "a" / "b" / "two.jpg", (1, 2, 3), 2)
    (tmp_path / "a" / "loop").symlink_to(".", target_is_directory=True)
    (tmp_path / "a" / "b" / "up").symlink_to("..", target_is_directory=True)
    with time_limit(30):
        files, problems = expand_paths([tmp_path / "a"])
    assert sorted(os.path.basename(f) for f in files) == ["one.jpg", "two.jpg"] and not problems


# --------------------------------------------------------------------------- the feature cache


def test_damaged_cache_file_is_moved_aside(tmp_path):
    from headstart.features.cache import FeatureCache

    (tmp_path / "features.sqlite").write_bytes(b"this is no database" * 100)
    with time_limit(30), pytest.warns(UserWarning, match="damaged"):
        cache = FeatureCache(tmp_path)
    cache.put_many("ns", [("k", np.ones(4, dtype=np.float32))])
    assert "k" in cache.get_many("ns", ["k"]) and list(tmp_path.glob("features.sqlite.damaged-*"))


def test_locked_cache_warns_and_goes_on_without_moving_it(tmp_path, capsys):
    from headstart.features.cache import FeatureCache

    FeatureCache(tmp_path).put_many("ns", [("old", np.ones(4, dtype=np.float32))])
    holder = sqlite3.connect(tmp_path / "features.sqlite")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with time_limit(30):
            cache = FeatureCache(tmp_path, timeout=0.2)
            cache.put_many("ns", [("new", np.ones(4, dtype=np.float32))])  # no error: a warning
            cache.put_many("ns", [("newer", np.ones(4, dtype=np.float32))])
            assert "newer" in cache.get_many("ns", ["newer"])  # the rest of the run caches in memory
    finally:
        holder.rollback()
        holder.close()
    assert "database is locked" in capsys.readouterr().err and "locked" in cache.problem
    assert not list(tmp_path.glob("*.damaged-*"))
    assert "old" in FeatureCache(tmp_path).get_many("ns", ["old"])  # the file was left whole


def test_cache_folder_that_cannot_be_made_warns_and_goes_on(tmp_path, capsys):
    from headstart.features.cache import FeatureCache

    (tmp_path / "not_a_folder").write_text("x")
    with time_limit(30):
        cache = FeatureCache(tmp_path / "not_a_folder" / "cache")
        cache.put_many("ns", [("k", np.ones(4, dtype=np.float32))])
    assert "going on without caching" in capsys.readouterr().err and "k" in cache.get_many("ns", ["k"])


@pytest.mark.slow
def test_train_goes_on_when_the_cache_folder_cannot_be_made(tmp_path):
    data = tmp_path / "data"
    make_classes(data, {c: c for c in COLORS}, per_class=6)
    (tmp_path / "file").write_text("not a folder")
    before = tree_digest(data)
    cache = tmp_path / "file" / "cache"
    with time_limit(RUN_TIMEOUT):  # plain images only: in process
        proc = cli(*TRAIN, data, "--out", tmp_path / "run", "--cache-dir", cache, "--engine", "onnxruntime")
    assert proc.returncode == 0 and (tmp_path / "run" / "model.safetensors").is_file(), proc.stderr
    assert proc.stderr.count("going on without caching") == 1 and "could not be written" not in proc.stderr
    assert tree_digest(data) == before


def test_disk_full_during_a_run_warns_and_goes_on(tmp_path, capsys):
    from headstart.features.cache import FeatureCache

    cache = FeatureCache(tmp_path)

    class FullDisk:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __getattr__(self, name: str) -> Any:
            return getattr(self.db, name)

        def __enter__(self) -> Any:
            return self.db.__enter__()

        def __exit__(self, *exc: Any) -> Any:
            return self.db.__exit__(*exc)

        def executemany(self, *args: Any) -> Any:
            raise sqlite3.OperationalError("database or disk is full")

    cache._db = FullDisk(cache._db)  # type: ignore[assignment]
    with time_limit(30):
        cache.put_many("ns", [("k", np.ones(4, dtype=np.float32))])
        cache.remember_hashes([("a.jpg", 1, 2, 3, 4, "h")])
    assert "disk is full" in capsys.readouterr().err and not list(tmp_path.glob("*.damaged-*"))


def test_stale_temporary_files_are_cleaned_live_ones_kept(tmp_path):
    from headstart.core.io import clean_stale_temporaries

    dead = tmp_path / "models" / ".net.onnx.999999999.1234.tmp"
    dead.parent.mkdir()
    dead.write_bytes(b"half")
    live = tmp_path / f".features.{os.getpid()}.1.tmp"
    live.write_bytes(b"being written")
    recent = tmp_path / ".net.xml.999999998.tmp"  # maybe another machine's write in progress
    recent.write_bytes(b"fresh")
    hour_ago = time.time() - 3600
    for path in (dead, live):
        os.utime(path, (hour_ago, hour_ago))
    assert clean_stale_temporaries(tmp_path, min_age=600) == 1
    assert not dead.exists() and live.exists() and recent.exists()


def test_file_changed_after_hashing_is_never_cached_under_the_old_hash(tmp_path, monkeypatch):
    import headstart.features.extractor as extractor_module
    from headstart.features.cache import content_hash
    from headstart.features.extractor import build_extractor

    a = make_image(tmp_path / "a.jpg", (200, 40, 40), 1)
    b = make_image(tmp_path / "b.jpg", (40, 40, 200), 2)
    stale = content_hash(b"the bytes a.jpg had when it was hashed")
    real = extractor_module.hash_file
    monkeypatch.setattr(extractor_module, "hash_file", lambda p: stale if p == str(a) else real(p))
    extractor = build_extractor(cache_dir=tmp_path / "cache", engine="torch", verbose=False)
    with time_limit(120):
        result = extractor.extract([a, b])
    assert result.errors == {0: "changed while being read (re-run to use its new content)"}
    assert stale not in extractor.cache.get_many(extractor.namespace, [stale])
    assert np.isfinite(result.features[1]).all()


# --------------------------------------------------------------------------- concurrency


def spawn(*args: Any, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, *map(os.fsdecode, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )


def cache_rows(cache: Path) -> tuple[str, int]:
    """The cache file's integrity and its feature rows (0 while the file exists but the writing
    process has not created its table yet: polling can see that moment)."""
    db = sqlite3.connect(cache / "features.sqlite")
    try:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        table = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'features'"
        ).fetchone()
        return integrity, db.execute("SELECT count(*) FROM features").fetchone()[0] if table else 0
    finally:
        db.close()


@pytest.mark.slow
def test_two_trains_share_one_cache_at_once(tmp_path):
    data = tmp_path / "data"
    make_classes(data, {c: c for c in COLORS}, per_class=10)
    before = tree_digest(data)
    env = {"HEADSTART_CACHE": str(tmp_path / "cache")}
    procs = [
        spawn(*TRAIN, data, "--out", tmp_path / f"run{i}", "--engine", "torch", "-q", env=env) for i in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=RUN_TIMEOUT)
        assert p.returncode == 0 and b"Traceback" not in err, err.decode()[-2000:]
    probas = [np.load(tmp_path / f"run{i}" / "test_probabilities.npy") for i in (1, 2)]
    np.testing.assert_allclose(probas[0], probas[1], atol=1e-6)
    assert cache_rows(tmp_path / "cache") == ("ok", 30)
    assert tree_digest(data) == before


@pytest.mark.slow
def test_kill_during_extraction_then_rerun_completes(tmp_path):
    data = tmp_path / "data"
    make_classes(data, {c: c for c in COLORS}, per_class=60)
    before = tree_digest(data)
    cache = tmp_path / "cache"
    env = {"HEADSTART_CACHE": str(cache)}
    proc = spawn(*TRAIN, data, "--out", tmp_path / "run", "--engine", "torch", "--batch-size", "4", env=env)
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        if (cache / "features.sqlite").is_file() and cache_rows(cache)[1] >= 8:
            break
        time.sleep(0.2)
    proc.kill()  # SIGKILL: no cleanup at all
    proc.communicate(timeout=30)
    status, rows = cache_rows(cache)
    assert status == "ok" and rows < 180, "the kill came after extraction: nothing was tested"
    with time_limit(RUN_TIMEOUT):  # the rerun needs no process of its own
        rerun = cli(*TRAIN, data, "--out", tmp_path / "run", "--engine", "torch", env=env)
    assert rerun.returncode == 0 and (tmp_path / "run" / "model.safetensors").is_file(), rerun.stderr
    assert f"{rows} from cache" in rerun.stderr or "from cache" in rerun.stderr
    assert cache_rows(cache) == ("ok", 180)
    assert not list((tmp_path / "run").glob(".*.tmp"))
    assert tree_digest(data) == before
