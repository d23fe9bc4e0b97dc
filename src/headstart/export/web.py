"""``--format web``: a folder that runs the exported ONNX model in the browser with ONNX Runtime Web.

The folder works from any static host and from disk (``file://``, where a page may neither
``fetch`` files nor import modules): the model, the runtime's WebAssembly and its loader are
also written as scripts (base64 inside ``<script src>`` files, which a ``file://`` page may load);
over http(s) the page fetches ``model.onnx`` itself. Nothing is fetched from a network.

The runtime's files come from the ``onnxruntime-web`` npm package, version ``ORT_WEB_VERSION``
(the wasm is 14 MB, too large to ship inside headstart): from ``$HEADSTART_ORT_WEB`` (the
package's folder or its ``.tgz``) if set, else headstart's cache, else ``npm pack`` fetches it once
into the cache (npm checks the registry's integrity hash).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import jinja2

from headstart.core.errors import HeadstartError
from headstart.core.io import atomic_path, write_text

ORT_WEB_VERSION = "1.30.0"
ORT_SCRIPT = "ort.wasm.min.js"  # the wasm-only runtime as a classic script (UMD)
ORT_GLUE = "ort-wasm-simd-threaded.mjs"  # the Emscripten loader the runtime imports
ORT_WASM = "ort-wasm-simd-threaded.wasm"
ORT_PACKAGE_FILES = (ORT_SCRIPT, ORT_GLUE, ORT_WASM)
PAGE = "index.html"
RUNTIME_SCRIPT = "ort-wasm.js"  # the loader and the wasm, for a page opened from disk
MODEL_SCRIPT = "model.js"  # the model, for a page opened from disk
WEB_FILES = (PAGE, ORT_SCRIPT, RUNTIME_SCRIPT, MODEL_SCRIPT)
ORT_ENV = "HEADSTART_ORT_WEB"


def page_environment() -> jinja2.Environment:
    """The classify page's templates (``export/templates``) and the report's shell they extend."""
    return templates_over_shell("headstart.export")


@functools.cache
def templates_over_shell(package: str) -> jinja2.Environment:
    """``package``'s templates first, then the report's shell they extend; every value escaped
    (serve's pages use it too)."""
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(
            [
                jinja2.PackageLoader(package, "templates"),
                jinja2.PackageLoader("headstart.reporting", "templates"),
            ]
        ),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def classify_page(title: str, mode: str, info: dict[str, Any] | None = None, needs_key: bool = False) -> str:
    """The one page that classifies photos or webcam frames and shows the top-k as bars:
    ``mode="serve"`` posts them to the server's API, ``mode="web"`` runs ``info``'s model in the
    page (``info``: the export's ``export.json``)."""
    return (
        page_environment()
        .get_template("classify.html")
        .render(title=title, mode=mode, info=info, needs_key=needs_key)
    )


def _cache_root() -> Path:
    base = os.environ.get("HEADSTART_CACHE") or os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path.home() / ".cache"
    return (root if os.environ.get("HEADSTART_CACHE") else root / "headstart") / "onnxruntime-web"


def _unpack(tgz: Path, dest: Path) -> Path:
    """The runtime's files out of the npm tarball (``package/dist/...``) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tgz) as tar:
        for name in ORT_PACKAGE_FILES:
            try:
                member = tar.getmember(f"package/dist/{name}")
            except KeyError as e:
                raise HeadstartError(f"{tgz} is not onnxruntime-web {ORT_WEB_VERSION}: no dist/{name}") from e
            source = tar.extractfile(member)
            assert source is not None
            with atomic_path(dest / name) as tmp, open(tmp, "wb") as out:
                shutil.copyfileobj(source, out)
    return dest


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ORT_PACKAGE_FILES)


def ort_web_files(say: Any = None) -> Path:
    """A folder holding ``ORT_PACKAGE_FILES`` (see the module's docstring for where it comes from)."""
    given = os.environ.get(ORT_ENV)
    if given:
        path = Path(given).expanduser()
        for folder in (path / "dist", path, path / "package" / "dist"):
            if _complete(folder):
                return folder
        if path.is_file() and path.name.endswith(".tgz"):
            return _unpack(path, _cache_root() / f"from-{path.stem}")
        raise HeadstartError(f"${ORT_ENV}={given} holds no onnxruntime-web dist/{ORT_WASM}")
    cached = _cache_root() / ORT_WEB_VERSION
    if _complete(cached):
        return cached
    npm = shutil.which("npm")
    if npm is None:
        raise HeadstartError(
            f"--format web needs onnxruntime-web {ORT_WEB_VERSION}: install npm (it fetches it once), or "
            f"run `npm pack onnxruntime-web@{ORT_WEB_VERSION}` elsewhere and set {ORT_ENV} to the .tgz"
        )
    if say:
        say(f"fetching onnxruntime-web {ORT_WEB_VERSION} with npm (once, into {cached.parent})")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [npm, "pack", f"onnxruntime-web@{ORT_WEB_VERSION}", "--silent"],
            cwd=tmp, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        tgz = next(Path(tmp).glob("onnxruntime-web-*.tgz"), None)
        if done.returncode != 0 or tgz is None:
            reason = (done.stderr.strip().splitlines() or ["no tarball"])[-1][:200]
            raise HeadstartError(
                f"npm could not fetch onnxruntime-web {ORT_WEB_VERSION} ({reason}): set {ORT_ENV} to "
                "its .tgz or unpacked folder"
            )
        return _unpack(tgz, cached)


def _base64_script(variable: str, payload: dict[str, str | bytes]) -> str:
    """``window.<variable> = {...}``: strings as JSON strings, bytes as base64 strings."""
    fields = {
        key: base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
        for key, value in payload.items()
    }
    return f"window.{variable} = {json.dumps(fields)};\n"


def write_web(out_dir: Path, model_file: Path, info: dict[str, Any], say: Any = None) -> Path:
    """``index.html`` and the runtime beside an exported ``model.onnx`` (and its ``export.json``)."""
    dist = ort_web_files(say)
    shutil.copyfile(dist / ORT_SCRIPT, out_dir / ORT_SCRIPT)
    runtime: dict[str, str | bytes] = {
        "glue": (dist / ORT_GLUE).read_text(encoding="utf-8"),
        "wasm": (dist / ORT_WASM).read_bytes(),
    }
    write_text(out_dir / RUNTIME_SCRIPT, _base64_script("HEADSTART_ORT", runtime))
    write_text(out_dir / MODEL_SCRIPT, _base64_script("HEADSTART_MODEL", {"onnx": model_file.read_bytes()}))
    page = out_dir / PAGE
    write_text(page, classify_page(f"{info['backbone']} classifier", "web", info))
    return page
