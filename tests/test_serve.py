"""headstart serve: the REST API, micro-batching, the queue limit, the API key, every bad input,
a live server (SIGTERM, memory, no torch) and the web page in headless Chromium.

The fast tests use a small fake model with the exported model's interface; the end-to-end ones
train a probe on flowers photos, export it to ONNX, and serve that.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from headstart.serve import create_app
from headstart.serve.batching import MicroBatcher, QueueFull, fastest_batch_size

COLORS = ["red", "green", "blue"]


class FakeModel:
    """The exported model's interface: a colour is its own class (mean R, G, B -> softmax)."""

    classes = COLORS
    input_size = (8, 8)
    metadata = {"backbone": "fake", "test_metrics": {"accuracy": 0.9}, "preprocessing": {"resize": 8}}

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batches: list[int] = []
        self.release = threading.Event()
        self.release.set()

    def prepare(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.uint8)

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        self.release.wait(10)
        time.sleep(self.delay_s)
        self.batches.append(len(pixels))
        means = pixels.reshape(len(pixels), -1, 3).mean(axis=1) / 16.0
        e = np.exp(means - means.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def image_bytes(color=(200, 30, 30), size=(32, 24), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def bomb_png(side: int = 40_000) -> bytes:
    """A small PNG whose header claims side x side pixels: over Pillow's decompression-bomb limit."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + image_bytes()[33:]
    )


@pytest.fixture
def fake() -> FakeModel:
    return FakeModel()


@pytest.fixture
def client(fake: FakeModel):
    with TestClient(create_app(fake, max_upload_mb=1, max_files=4, tune_batch=False)) as c:
        yield c


def files_field(*items: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


# --------------------------------------------------------------------------- the API


def test_predict_multipart_and_raw_body_shape_like_headstart_predict(client):
    red, blue = image_bytes((220, 20, 20)), image_bytes((20, 20, 220))
    answer = client.post("/v1/predict?top_k=2", files=files_field(("r.png", red), ("b.png", blue)))
    assert answer.status_code == 200
    results = answer.json()
    assert [r["path"] for r in results] == ["r.png", "b.png"]
    assert [r["predictions"][0]["label"] for r in results] == ["red", "blue"]
    assert all(len(r["predictions"]) == 2 for r in results)
    probabilities = [p["probability"] for p in results[0]["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)
    raw = client.post(
        "/v1/predict?filename=g.jpg",
        content=image_bytes((20, 220, 20), fmt="JPEG"),
        headers={"content-type": "image/jpeg"},
    )
    assert raw.status_code == 200
    assert raw.json()[0]["path"] == "g.jpg" and raw.json()[0]["predictions"][0]["label"] == "green"
    assert len(raw.json()[0]["predictions"]) == 3  # top_k defaults to 3


def test_model_health_ready_and_offline_docs(client):
    model = client.get("/v1/model").json()
    assert model["classes"] == COLORS and model["backbone"] == "fake"
    assert model["test_metrics"]["accuracy"] == 0.9 and model["preprocessing"] == {"resize": 8}
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["rss_mb"] > 0
    assert client.get("/readyz").json()["status"] == "ready"
    schema = client.get("/openapi.json").json()
    assert "/v1/predict" in schema["paths"] and "/v1/model" in schema["paths"]
    assert client.get("/redoc").status_code == 404
    for page in ("/docs", "/"):
        html = client.get(page).text
        assert "cdn" not in html.lower() and 'src="http' not in html and 'href="http' not in html
    page = client.get("/").text
    assert '<input type="file" id="files" name="files" accept="image/*" multiple>' in page
    assert '<button type="submit"' in page


def test_model_answers_its_card_summary_and_nothing_about_the_server(fake):
    fake.metadata = {
        **FakeModel.metadata,
        "source_model": "/home/someone/runs/flowers/model.safetensors",
        "versions": {"headstart": "0.1.0", "torch": "2.14.1", "openvino": "2026.4.1"},
        "headstart_version": "0.1.0",
        "multi_label": True,
        "thresholds": [0.5, 0.4, 0.6],
        "reject": {"threshold": 0.3},
    }
    with TestClient(create_app(fake, tune_batch=False)) as c:
        model = c.get("/v1/model").json()
        schema = c.get("/openapi.json").json()
    assert model["task"] == "multi-label" and model["thresholds"] == [0.5, 0.4, 0.6]
    assert model["reject_threshold"] == 0.3 and model["headstart_version"] == "0.1.0"
    assert "/home/someone" not in json.dumps(model) and "torch" not in json.dumps(model)
    ok = schema["paths"]["/v1/model"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/ModelSummary"}
    assert {"classes", "task", "preprocessing"} <= set(
        schema["components"]["schemas"]["ModelSummary"]["properties"]
    )


def test_a_partly_bad_request_answers_each_file(client):
    results = client.post(
        "/v1/predict", files=files_field(("ok.png", image_bytes()), ("notes.txt", b"hello"))
    ).json()
    assert results[0]["predictions"] and "error" not in results[0]
    assert results[1] == {"path": "notes.txt", "predictions": [], "error": results[1]["error"]}
    assert "not an image" in results[1]["error"]


BAD_REQUESTS = {
    "not an image": (dict(files=files_field(("a.png", b"plain text, not a picture"))), 422, "not an image"),
    "truncated": (
        dict(files=files_field(("t.jpg", image_bytes(fmt="JPEG", size=(300, 200))[:400]))),
        422,
        "truncated",
    ),
    "zero bytes": (dict(files=files_field(("z.png", b""))), 422, "empty file"),
    "bomb": (dict(files=files_field(("bomb.png", bomb_png()))), 422, "decompression-bomb"),
    "over the limit": (dict(files=files_field(("big.png", b"\0" * (2 * 2**20)))), 413, "too large"),
    "raw over the limit": (
        dict(content=b"\0" * (2 * 2**20), headers={"content-type": "image/png"}),
        413,
        "too large",
    ),
    "wrong content type": (dict(json={"image": "x"}), 415, "wrong content type"),
    "no content type": (dict(content=b"x"), 415, "wrong content type"),
    "no file field": (
        dict(data={"top": "1"}, files=[("image", ("x.png", image_bytes(), "image/png"))]),
        400,
        "no file field",
    ),
    "malformed multipart": (
        dict(content=b"--xx\r\nnot a part", headers={"content-type": "multipart/form-data; boundary=xx"}),
        400,
        "malformed multipart",
    ),
    "no boundary": (
        dict(content=b"abc", headers={"content-type": "multipart/form-data"}),
        400,
        "malformed multipart",
    ),
    "too many files": (
        dict(files=files_field(*[(f"{i}.png", image_bytes()) for i in range(5)])),
        413,
        "Too many files",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_every_bad_input_is_a_4xx_that_names_it_and_the_server_keeps_serving(
    client, case, tmp_path, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # any spooled upload would land here
    kwargs, status, words = BAD_REQUESTS[case]
    answer = client.post("/v1/predict", **kwargs)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]
    assert client.post("/v1/predict", files=files_field(("ok.png", image_bytes()))).status_code == 200
    assert list(tmp_path.iterdir()) == []


def test_large_uploads_leave_no_temporary_files(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    noisy = np.random.default_rng(0).integers(0, 255, (900, 900, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="PNG")  # about 2.4 MB: past the 1 MB a parser would spool
    with TestClient(create_app(FakeModel(), max_upload_mb=8, tune_batch=False)) as c:
        answer = c.post(
            "/v1/predict", files=files_field(("noise.png", buf.getvalue()), ("n2.png", buf.getvalue()))
        )
    assert answer.status_code == 200 and len(answer.json()) == 2
    assert list(tmp_path.iterdir()) == []


def test_api_key_required_on_the_api_not_on_health(fake):
    with TestClient(create_app(fake, api_key="s3cret", tune_batch=False)) as c:
        body = files_field(("ok.png", image_bytes()))
        refused = c.post("/v1/predict", files=body)
        assert refused.status_code == 401 and "API key" in refused.json()["error"]
        assert c.get("/v1/model").status_code == 401
        assert c.get("/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert (
            c.post("/v1/predict", files=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        )
        assert c.get("/v1/model", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert 'id="api-key"' in c.get("/").text


def test_queue_limit_answers_503_with_retry_after(fake):
    with TestClient(create_app(fake, max_batch=1, queue_size=2)) as c:
        three = files_field(*[(f"{i}.png", image_bytes()) for i in range(3)])
        busy = c.post("/v1/predict", files=three)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "busy" in busy.json()["error"]
        assert c.post("/v1/predict", files=three[:2]).status_code == 200


def test_queue_limit_under_concurrent_load(fake):
    """A model held still: the queue fills, later requests get 503 at once, the held ones finish."""
    with TestClient(create_app(fake, max_batch=2, queue_size=4, tune_batch=False)) as c:
        fake.release.clear()
        answers: list[int] = []

        def send() -> None:
            answers.append(c.post("/v1/predict", files=files_field(("x.png", image_bytes()))).status_code)

        threads = [threading.Thread(target=send) for _ in range(12)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while answers.count(503) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        fake.release.set()
        for t in threads:
            t.join(20)
    assert answers.count(503) >= 6 and answers.count(200) >= 4
    assert set(answers) <= {200, 503}


# --------------------------------------------------------------------------- batching


def run_concurrently(batcher: MicroBatcher, n: int) -> tuple[list[np.ndarray], float]:
    async def main() -> tuple[list[np.ndarray], float]:
        batcher.start()
        images = [np.full((8, 8, 3), (i * 7) % 255, dtype=np.uint8) for i in range(n)]
        start = time.perf_counter()
        rows = await asyncio.gather(*(batcher.predict([im]) for im in images))
        elapsed = time.perf_counter() - start
        await batcher.stop()
        return [r[0] for r in rows], elapsed

    return asyncio.run(main())


def test_concurrent_requests_share_model_calls():
    model = FakeModel(delay_s=0.02)
    batcher = MicroBatcher(model.predict_proba, max_batch=16, queue_size=64)
    rows, _ = run_concurrently(batcher, 48)
    assert batcher.model_calls <= 6 and sum(model.batches) == 48 and max(model.batches) <= 16
    expected = model.predict_proba(np.stack([np.full((8, 8, 3), (i * 7) % 255, np.uint8) for i in range(48)]))
    np.testing.assert_allclose(np.stack(rows), expected, atol=1e-6)  # each request gets its own row


def test_max_batch_one_turns_batching_off():
    model = FakeModel()
    batcher = MicroBatcher(model.predict_proba, max_batch=1, queue_size=64)
    run_concurrently(batcher, 20)
    assert batcher.model_calls == 20 and set(model.batches) == {1}


def test_batcher_refuses_what_does_not_fit_and_survives_a_failing_model():
    async def main() -> None:
        def broken(pixels: np.ndarray) -> np.ndarray:
            raise RuntimeError("model failed")

        batcher = MicroBatcher(broken, max_batch=2, queue_size=2)
        batcher.start()
        with pytest.raises(QueueFull):
            await batcher.predict([np.zeros((8, 8, 3), np.uint8)] * 3)
        with pytest.raises(RuntimeError, match="model failed"):
            await batcher.predict([np.zeros((8, 8, 3), np.uint8)])
        batcher.predict_proba = FakeModel().predict_proba
        assert len(await batcher.predict([np.zeros((8, 8, 3), np.uint8)])) == 1
        await batcher.stop()

    asyncio.run(main())


def test_batch_size_tuned_to_what_the_machine_runs_fastest(fake):
    def per_call(pixels: np.ndarray) -> np.ndarray:  # a fixed cost a call: bigger is faster
        time.sleep(0.01)
        return np.zeros((len(pixels), 3), np.float32)

    def cache_bound(pixels: np.ndarray) -> np.ndarray:  # each image costs more in a big batch
        time.sleep(0.002 * len(pixels) * (1 + len(pixels) / 4))
        return np.zeros((len(pixels), 3), np.float32)

    size, rates = fastest_batch_size(per_call, (8, 8), 16, min_seconds=0.03, rounds=3)
    assert size == 16 and sorted(rates) == [1, 2, 4, 8, 16]
    assert fastest_batch_size(cache_bound, (8, 8), 12, min_seconds=0.03, rounds=3)[0] == 1
    with TestClient(create_app(fake, max_batch=8)) as c:
        ready = c.get("/readyz").json()
        assert ready["batch_size"] in (1, 2, 4, 8) and set(ready["images_per_second_by_batch_size"]) == {
            "1",
            "2",
            "4",
            "8",
        }
    with TestClient(create_app(fake, max_batch=8, tune_batch=False)) as c:
        assert c.get("/readyz").json()["batch_size"] == 8


def test_settings_are_checked():
    from headstart.core.errors import HeadstartError

    with pytest.raises(HeadstartError, match="max_batch"):
        create_app(FakeModel(), max_batch=0)
    with pytest.raises(HeadstartError, match="max_upload_mb"):
        create_app(FakeModel(), max_upload_mb=0)


# --------------------------------------------------------------------------- a real export


@pytest.fixture(scope="session")
def flowers_export(flowers_csv, tmp_path_factory):
    """A logistic probe on 150 flowers photos, exported to ONNX: (export folder, run folder, a test photo)."""
    import headstart
    from headstart.export.exporter import export_model

    root = tmp_path_factory.mktemp("served")
    clf = headstart.ImageClassifier(
        strategy="feature-extraction", head="logistic", seed=1, verbose=False
    ).fit(flowers_csv, out_dir=root / "run")
    export_model(root / "run", root / "export", format="onnx")
    return root / "export", root / "run", clf


@pytest.mark.slow
def test_served_answers_equal_the_exported_model_and_headstart_predict(flowers_export):
    """Served probabilities are the runtime's own (same decoding and preparation); the labels are
    headstart predict's. (The runtime's parity with torch is the export's own test.)"""
    from headstart.export.runtime import load_exported

    export_dir, run_dir, clf = flowers_export
    photos = clf.test_["paths"][:6]
    offline = clf.predict_top_k(photos, k=3)
    runtime = load_exported(export_dir)
    direct = runtime.predict_proba(np.stack([runtime.load_image(p) for p in photos]))
    with TestClient(create_app(export_dir, max_batch=4)) as c:
        files = [("files", (Path(p).name, Path(p).read_bytes(), "image/jpeg")) for p in photos]
        served = c.post("/v1/predict?top_k=5", files=files).json()
        info = c.get("/v1/model").json()
    assert info["classes"] == clf.classes_ and info["backbone"] and info["preprocessing"]
    for mine, theirs, row in zip(served, offline, direct):
        assert mine["path"] == Path(theirs["path"]).name
        assert mine["predictions"][0]["label"] == theirs["predictions"][0]["label"]
        by_label = {p["label"]: p["probability"] for p in mine["predictions"]}
        np.testing.assert_allclose([by_label[c] for c in clf.classes_], row, atol=1e-6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "headstart", "serve", str(model), "--port", str(port), *flags]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the server did not become ready")


@pytest.fixture(scope="module")
def live_server(flowers_export):
    proc, url = start_server(flowers_export[0])
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def mapped_torch(pid: int) -> list[str]:
    """Shared libraries of torch mapped into a process: any means torch was imported there."""
    maps = Path(f"/proc/{pid}/maps")
    if not maps.is_file():
        pytest.skip("no /proc: cannot look into the server process")
    return sorted({line.split()[-1] for line in maps.read_text().splitlines() if "libtorch" in line})


@pytest.mark.slow
@pytest.mark.cli
def test_live_server_is_small_and_never_imports_torch(live_server, flowers_export):
    proc, url = live_server
    photo = Path(flowers_export[2].test_["paths"][0])
    before = httpx.get(url + "/healthz").json()["rss_mb"]
    for _ in range(10):
        answer = httpx.post(
            url + "/v1/predict", files={"files": (photo.name, photo.read_bytes(), "image/jpeg")}
        )
        assert answer.status_code == 200
    after = httpx.get(url + "/healthz").json()["rss_mb"]
    assert mapped_torch(proc.pid) == []
    # the runtime keeps the memory of the largest batch it ran at startup: flat from then on
    assert after < 1024 and after - before < 64, f"the server went from {before} to {after} MiB"
    print(f"server RSS {before} MiB -> {after} MiB")


@pytest.mark.slow
@pytest.mark.cli
def test_bad_inputs_against_a_live_server(flowers_export):
    """The same bad requests through uvicorn's own HTTP parsing: a 4xx naming the problem, and
    the server keeps serving (the file-count case needs a limit below the default 64: in-process)."""
    proc, url = start_server(flowers_export[0], "--max-upload-mb", "1")
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            for case, (kwargs, status, words) in BAD_REQUESTS.items():
                if case == "too many files":
                    continue
                answer = http.post("/v1/predict", **kwargs)
                assert answer.status_code == status, (case, answer.text)
                assert words in answer.json()["error"], (case, answer.text)
                good = http.post("/v1/predict", files=files_field(("ok.png", image_bytes())))
                assert good.status_code == 200, (case, good.text)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.slow
@pytest.mark.cli
def test_sigterm_lets_an_in_flight_request_finish(flowers_export):
    proc, url = start_server(flowers_export[0])
    photo = Path(flowers_export[2].test_["paths"][0]).read_bytes()
    port = int(url.rsplit(":", 1)[1])
    head = (
        f"POST /v1/predict?filename=slow.jpg HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(photo)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(head + photo[:1000])  # the request is in flight: half its body sent
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            s.sendall(photo[1000:])
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        assert b'"path":"slow.jpg"' in reply
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
@pytest.mark.cli
def test_serve_exports_a_model_in_a_subprocess_into_the_cache(flowers_export, tmp_path):
    from headstart.serve.source import export_for_serving, resolve_model

    export_dir = export_for_serving(flowers_export[1], tmp_path / "cache")
    assert (export_dir / "export.json").is_file() and export_dir.parent == tmp_path / "cache" / "exports"
    assert resolve_model(flowers_export[1] / "model.safetensors", tmp_path / "cache") == export_dir  # cached
    assert resolve_model(flowers_export[0]) == flowers_export[0]


@pytest.mark.browser
@pytest.mark.slow
def test_web_page_classifies_an_uploaded_photo(live_server, flowers_export, tmp_path):
    from conftest import find_chromium

    if os.environ.get("HEADSTART_REQUIRE_BROWSER") == "1":
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    _, url = live_server
    clf = flowers_export[2]
    photo, label = clf.test_["paths"][0], clf.classes_[clf.test_["y"][0]]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(find_chromium()), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('class-count').textContent !== '–'")
            assert "daisy" in page.inner_text("#classes")
            page.set_input_files("#files", photo)
            page.focus("#classify")
            page.keyboard.press("Enter")  # the keyboard alone submits
            page.wait_for_selector("#results[data-done='1']", timeout=30_000)
            bars = page.eval_on_selector_all(".bar", "els => els.map(e => e.dataset.label)")
            screenshot = tmp_path / "serve_page.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert label in bars and len(bars) == 3
    artifacts = os.environ.get("HEADSTART_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(artifacts) / screenshot.name)
