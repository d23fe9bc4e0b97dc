"""What a decode flood and slow clients do to ``headstart serve``, two versions side by side.

    python benchmarks/serve_hostile.py --before-src /path/to/older/checkout/src [runs/flowers]

Starts the server of each version (``--before-src``: another checkout's ``src``; the "after" one
is this checkout's) on the same export, on 127.0.0.1 only, one after the other, and measures:

1. **decode flood**: one client sends requests of 16 PNGs that each decode to 10,000 x 10,000
   pixels (under the 100-megapixel limit; about 300 KiB each), ``--floods`` times in a row, while
   another sends one normal photo every 0.25 s: the normal requests' latency (median, max)
   against the same requests with no flood, the flood's answers, and the server's peak memory;
2. **half-sent headers**: 200 connections stop in the middle of their headers for ``--hold``
   seconds: how many the server closed, and whether a normal request is answered meanwhile;
3. **stalled uploads**: 8 uploads stop at 9 of 10 MiB: how many the server closed, and the
   tracebacks in its log.

Every request loop is bounded in count and time; nothing is sent off this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import HOST, export, flowers_photos, train_probe  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(src: Path, export_dir: Path) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "headstart",
        "serve",
        str(export_dir),
        "--port",
        str(port),
        "--max-batch",
        "4",
    ]
    server = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return server, url, log
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.kill()
    raise SystemExit(f"server did not start: {log.read_text()[-2000:]}")


class PeakMemory(threading.Thread):
    """The largest RSS of ``pid`` while running (sampled every 50 ms)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process, self.peak_mb, self.stop = psutil.Process(pid), 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_mb = max(self.peak_mb, self.process.memory_info().rss / 2**20)
            time.sleep(0.05)


def big_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (10_000, 10_000), 128).convert("RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


async def normal_latencies(url: str, photo: bytes, seconds: float) -> list[float]:
    times = []
    async with httpx.AsyncClient(timeout=120) as client:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end and len(times) < 400:
            t = time.perf_counter()
            response = await client.post(url + "/v1/predict", files={"files": ("p.jpg", photo, "image/jpeg")})
            times.append(time.perf_counter() - t)
            assert response.status_code == 200, response.text
            await asyncio.sleep(0.25)
    return times


async def flood(url: str, png: bytes, count: int) -> list[str]:
    files = [("files", (f"big{i}.png", png, "image/png")) for i in range(16)]
    answers = []
    async with httpx.AsyncClient(timeout=300) as client:
        for _ in range(count):
            t = time.perf_counter()
            response = await client.post(url + "/v1/predict", files=files)
            answers.append(f"{response.status_code} in {time.perf_counter() - t:.1f}s")
    return answers


async def flood_case(url: str, pid: int, photo: bytes, png: bytes, floods: int) -> dict[str, object]:
    quiet = await normal_latencies(url, photo, 5)
    memory = PeakMemory(pid)
    memory.start()
    flooding = asyncio.create_task(flood(url, png, floods))
    await asyncio.sleep(0.2)
    during: list[float] = []
    while not flooding.done():
        during += await normal_latencies(url, photo, 2)
    memory.stop.set()
    return {
        "normal_latency_quiet_ms": round(1000 * statistics.median(quiet), 1),
        "normal_latency_flood_median_ms": round(1000 * statistics.median(during), 1),
        "normal_latency_flood_max_ms": round(1000 * max(during), 1),
        "flood_answers": flooding.result(),
        "peak_rss_mb": round(memory.peak_mb),
    }


def closed_count(sockets: list[socket.socket], seconds: float) -> int:
    end, closed = time.monotonic() + seconds, 0
    for sock in sockets:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            while sock.recv(4096):
                pass
            closed += 1
        except (TimeoutError, ConnectionResetError) as e:
            closed += isinstance(e, ConnectionResetError)
    return closed


def slow_case(url: str, port: int, hold: float) -> dict[str, object]:
    half = []
    for _ in range(200):
        sock = socket.create_connection((HOST, port), timeout=5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        half.append(sock)
    try:
        normal = httpx.get(url + "/healthz", timeout=10).status_code
    except httpx.HTTPError as e:
        normal = type(e).__name__
    closed = closed_count(half, hold)
    uploads = []
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {10 * 2**20}\r\n\r\n"
    ).encode()
    for _ in range(8):
        sock = socket.create_connection((HOST, port), timeout=5)
        sock.sendall(head + b"\0" * (9 * 2**20))
        uploads.append(sock)
    closed_uploads = closed_count(uploads, hold)
    for sock in half + uploads:
        sock.close()
    return {
        "half_headers_closed_of_200": closed,
        "normal_request_meanwhile": normal,
        "stalled_uploads_closed_of_8": closed_uploads,
    }


def measure(
    name: str, src: Path, export_dir: Path, args: argparse.Namespace, png: bytes
) -> dict[str, object]:
    photo = flowers_photos(1)[0].read_bytes()
    server, url, log = start(src, export_dir)
    try:
        result = {"version": name, **asyncio.run(flood_case(url, server.pid, photo, png, args.floods))}
        result.update(slow_case(url, int(url.rsplit(":", 1)[1]), args.hold))
        result["healthy_after"] = httpx.get(url + "/healthz", timeout=10).status_code == 200
    finally:
        server.terminate()
        server.wait(60)
    result["tracebacks_in_log"] = log.read_text(errors="replace").count("Traceback")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", nargs="?", type=Path, help="run folder or model.safetensors")
    parser.add_argument("--before-src", type=Path, required=True, help="the older version's src folder")
    parser.add_argument("--floods", type=int, default=3)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds the slow clients wait")
    args = parser.parse_args()
    from headstart.core.system import cpu_summary

    print(cpu_summary(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or train_probe(Path(tmp))
        export_dir = export(model, Path(tmp) / "export", "openvino")
        png = big_png()
        print(f"flood request: 16 PNGs of {len(png) / 1024:.0f} KiB, each 10000x10000", flush=True)
        for name, src in (("before", args.before_src), ("after", SRC)):
            print(measure(name, src.resolve(), export_dir, args, png), flush=True)


if __name__ == "__main__":
    main()
