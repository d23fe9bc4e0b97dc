"""The server under floods, slow clients and host/key tricks (issue 24): refused before work,
closed on time, no traceback in the log, and healthy afterwards.

A small fake model (test_serve's) keeps these fast: admission and the connection guards sit in
front of the model, so what they do does not depend on it. The live cases run uvicorn in a
thread with ``server_config``, the settings ``headstart serve`` uses, and short timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image
from test_serve import FakeModel, files_field, image_bytes

from headstart.core.errors import ParameterError
from headstart.data.images import decode_image
from headstart.serve import create_app
from headstart.serve.admission import DecodeAdmission, DecodeLimits, Refused, decoded_pixels
from headstart.serve.guards import ConnectionLimits, default_allowed_hosts, server_config

CASE_TIMEOUT = 30  # seconds for one live case; a hang fails the test


def png_of(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 90, 90)).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- admission


def test_pixels_are_read_from_the_header_and_jpeg_counts_at_its_draft_size():
    assert decoded_pixels(png_of(300, 200), None) == 60_000
    jpeg = io.BytesIO()
    Image.new("RGB", (2000, 1600)).save(jpeg, format="JPEG")
    assert decoded_pixels(jpeg.getvalue(), None) == 2000 * 1600
    drafted = decode_image(jpeg.getvalue(), 250)  # the decoder's draft mode: 1/4 a side here
    assert decoded_pixels(jpeg.getvalue(), 250) == drafted.width * drafted.height == 500 * 400
    assert decoded_pixels(b"not an image", None) == 0


def test_admission_refuses_what_never_fits_413_and_what_does_not_fit_now_503():
    limits = DecodeLimits(request_megapixels=1, in_flight_megapixels=1.5, decode_queue=3)
    admission = DecodeAdmission(limits)
    try:
        with pytest.raises(Refused) as never:
            admission.admit([600_000, 600_000])
        assert never.value.status == 413 and "per request" in str(never.value)
        held = admission.admit([900_000])
        with pytest.raises(Refused) as busy:
            admission.admit([700_000])
        assert busy.value.status == 503
        admission.release(held, 1)
        assert admission.admit([700_000]) == 700_000
        with pytest.raises(Refused, match="queue"):
            admission.admit([1, 1, 1])
    finally:
        admission.close()


def test_a_decode_flood_is_refused_before_decoding_and_a_normal_request_still_answers():
    big = png_of(3000, 3000)
    flood = files_field(*[(f"big{i}.png", big) for i in range(4)])  # 36 MP
    limits = DecodeLimits(request_megapixels=20, in_flight_megapixels=40)
    with TestClient(create_app(FakeModel(), tune_batch=False, decode_limits=limits)) as c:
        start = time.perf_counter()
        refused = c.post("/v1/predict", files=flood)
        assert refused.status_code == 413 and "megapixels" in refused.json()["error"]
        assert time.perf_counter() - start < 2.0  # nothing was decoded
        state = c.app.state.serve  # type: ignore[attr-defined]
        held = [state.admission.admit([18_000_000]) for _ in range(2)]  # two requests decoding now
        busy = c.post("/v1/predict", files=files_field(("one.png", big)))
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        normal = c.post("/v1/predict", files=files_field(("small.png", image_bytes())))
        assert normal.status_code == 200 and normal.json()[0]["predictions"]
        for total in held:
            state.admission.release(total, 1)
        assert state.admission.in_flight_megapixels == 0


# --------------------------------------------------------------------------- keys, hosts, headers


def test_an_empty_api_key_is_a_usage_error():
    with pytest.raises(ParameterError, match="api_key"):
        create_app(FakeModel(), api_key="")


def test_a_utf8_key_is_compared_as_the_bytes_the_client_sends():
    key = "clé-🔑"
    with TestClient(create_app(FakeModel(), api_key=key, tune_batch=False)) as c:
        assert c.get("/v1/model", headers={"X-API-Key": key.encode("utf-8")}).status_code == 200
        assert c.get("/v1/model", headers={"Authorization": b"Bearer " + key.encode()}).status_code == 200
        assert c.get("/v1/model", headers={"X-API-Key": "cl\xe9-x".encode("latin-1")}).status_code == 401


def test_only_allowed_hosts_are_answered_before_routing():
    app = create_app(FakeModel(), tune_batch=False, allowed_hosts=default_allowed_hosts("127.0.0.1"))
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "[::1]:8000"}).status_code == 200
        for host in ("rebound.example.com", "127.0.0.1.evil.test", "0.0.0.0"):
            assert c.get("/v1/model", headers={"Host": host}).status_code == 400, host
        assert c.get("/nope", headers={"Host": "evil.test"}).status_code == 400  # before routing


def test_pages_and_answers_carry_security_headers():
    with TestClient(create_app(FakeModel(), tune_batch=False)) as c:
        for path in ("/", "/docs", "/healthz"):
            headers = c.get(path).headers
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert "default-src 'self'" in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["x-frame-options"] == "DENY"


# --------------------------------------------------------------------------- a live server


@contextlib.contextmanager
def live(limits: ConnectionLimits, caplog: pytest.LogCaptureFixture) -> Iterator[tuple[str, int]]:
    """uvicorn with ``headstart serve``'s settings in a thread; yields (host, port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(FakeModel(), tune_batch=False, body_timeout_s=limits.body_timeout_s)
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, limits))
    thread = threading.Thread(target=server.run, daemon=True)
    caplog.set_level(logging.INFO)
    thread.start()
    deadline = time.monotonic() + CASE_TIMEOUT
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(CASE_TIMEOUT)
    assert "Traceback" not in caplog.text and "Exception in ASGI" not in caplog.text, caplog.text[-2000:]


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes ``sock`` (or answers and closes) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_connections_stopped_in_their_headers_are_closed_and_others_still_served(caplog):
    limits = ConnectionLimits(header_timeout_s=1.0, body_timeout_s=1.0)
    with live(limits, caplog) as (host, port):
        slow = []
        for _ in range(50):
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            slow.append(sock)
        assert httpx.get(f"http://{host}:{port}/healthz", timeout=5).status_code == 200
        start = time.monotonic()
        closed = sum(closed_within(sock, max(0.1, 4 - (time.monotonic() - start))) for sock in slow)
        for sock in slow:
            sock.close()
        assert closed == 50
        assert httpx.get(f"http://{host}:{port}/healthz", timeout=5).status_code == 200


def test_a_stalled_upload_gets_408_and_is_closed_quietly(caplog):
    limits = ConnectionLimits(header_timeout_s=2.0, body_timeout_s=1.0)
    with live(limits, caplog) as (host, port):
        with socket.create_connection((host, port), timeout=5) as sock:
            head = (
                "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                "Content-Length: 1000000\r\n\r\n"
            )
            sock.sendall(head.encode() + b"\0" * 900_000)
            sock.settimeout(5)
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(4096):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        # a client that goes away mid-upload: no traceback, the server keeps serving
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(head.encode() + b"\0" * 100_000)
        time.sleep(0.3)
        assert httpx.get(f"http://{host}:{port}/healthz", timeout=5).status_code == 200


def test_live_decode_flood_leaves_a_normal_request_fast(caplog):
    """Several flood requests at once against a live server: each refused at once, a normal
    request in the meantime answers within a second."""
    big = png_of(4000, 4000)
    flood = [("files", (f"big{i}.png", big, "image/png")) for i in range(8)]
    with live(ConnectionLimits(), caplog) as (host, port):
        url = f"http://{host}:{port}/v1/predict"

        async def main() -> tuple[list[int], float]:
            async with httpx.AsyncClient(timeout=CASE_TIMEOUT) as client:
                floods = [asyncio.create_task(client.post(url, files=flood)) for _ in range(6)]
                await asyncio.sleep(0.05)
                start = time.perf_counter()
                normal = await client.post(url, files=files_field(("s.png", image_bytes())))
                took = time.perf_counter() - start
                assert normal.status_code == 200
                return [r.status_code for r in await asyncio.gather(*floods)], took

        statuses, took = asyncio.run(main())
        assert set(statuses) == {413}, statuses
        assert took < 1.0, took
