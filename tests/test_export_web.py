"""``--format web``: the exported folder classifies photos in the browser, from disk, offline."""

from __future__ import annotations

import json
import os
import tarfile

import pytest

from headstart.core.errors import HeadstartError
from headstart.export import web
from headstart.export.exporter import export_model
from headstart.serve.page import index_page


def test_served_page_is_the_web_page_without_the_runtime_or_the_check_line():
    served = index_page(needs_key=False)
    assert "/v1/predict" in served and 'id="camera"' in served
    assert "Page check" not in served and "ort.wasm.min.js" not in served


def test_runtime_files_from_a_tarball_named_by_the_environment(tmp_path, monkeypatch):
    tgz = tmp_path / "onnxruntime-web-1.30.0.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name in web.ORT_PACKAGE_FILES:
            (tmp_path / name).write_bytes(name.encode())
            tar.add(tmp_path / name, arcname=f"package/dist/{name}")
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(web.ORT_ENV, str(tgz))
    dist = web.ort_web_files()
    assert (dist / web.ORT_WASM).read_bytes() == web.ORT_WASM.encode()
    monkeypatch.setenv(web.ORT_ENV, str(tmp_path / "nothing-here"))
    with pytest.raises(HeadstartError, match="holds no onnxruntime-web"):
        web.ort_web_files()


def runtime_available() -> None:
    """Skip (with the reason) where onnxruntime-web cannot be found or fetched."""
    try:
        web.ort_web_files()
    except HeadstartError as e:
        pytest.skip(str(e))


@pytest.mark.browser
@pytest.mark.slow
def test_web_export_classifies_photos_offline_from_disk_like_predict(flowers_probe, tmp_path):
    from conftest import find_chromium

    if os.environ.get("HEADSTART_REQUIRE_BROWSER") == "1":
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    runtime_available()
    run, clf = flowers_probe  # a logistic probe (the default head)
    export_model(run, tmp_path / "web", format="web")
    info = json.loads((tmp_path / "web" / "export.json").read_text())
    assert info["format"] == "web" and (tmp_path / "web" / "model.onnx").is_file()
    photos = clf.test_["paths"][:4]
    expected = [answer["predictions"][0]["label"] for answer in clf.predict_top_k(photos, k=1)]
    outside: list[str] = []

    def block(route):
        url = route.request.url
        if url.startswith(("file:", "blob:", "data:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(find_chromium()), args=["--no-sandbox"])
        try:
            context = browser.new_context(offline=True)
            context.route("**/*", block)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((tmp_path / "web" / "index.html").as_uri())
            assert "daisy" in page.inner_text("#classes")
            page.set_input_files("#files", photos)
            page.click("#classify")
            page.wait_for_selector(f"#results[data-done='{len(photos)}']", timeout=120_000)
            found = page.eval_on_selector_all(
                ".result",
                "els => els.map(e => (e.querySelector('.bar') || {dataset: {}}).dataset.label "
                "|| e.innerText)",
            )
        finally:
            browser.close()
    assert not errors and not outside, (errors, outside)
    assert found == expected
