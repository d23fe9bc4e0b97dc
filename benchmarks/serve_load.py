"""Load benchmark of ``headstart serve``: micro-batching on and off, against headstart predict offline.

    python benchmarks/serve_load.py runs/flowers            # a run folder or model.safetensors
    python benchmarks/serve_load.py                         # trains a small probe on flowers first

Two servers on 127.0.0.1 (only), --max-batch 16 and --max-batch 1 (batching off), answer 8 and
then 32 concurrent clients in turn, each run a bounded loop of --requests requests of one flowers
photo each. Reported: throughput, p50/p99 latency, errors, the server's memory (RSS)
before and after; then the batching/no-batching ratio and the served throughput as a share of
``headstart predict``'s offline throughput on the same photos, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

FLOWERS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "flower_photos"
HOST = "127.0.0.1"  # the benchmark never sends a request off this machine


def flowers_photos(count: int) -> list[Path]:
    """``count`` photos spread over the classes, in a fixed order."""
    classes = sorted(p for p in FLOWERS.iterdir() if p.is_dir())
    per_class = -(-count // len(classes))
    photos = [f for c in classes for f in sorted(c.glob("*.jpg"))[-per_class:]]
    return photos[:count]


def train_probe(out: Path) -> Path:
    """A logistic probe on 30 photos per class (the tests' subset), for when no model is given."""
    import headstart

    rows = ["path,label"] + [
        f"{f},{c.name}"
        for c in sorted(p for p in FLOWERS.iterdir() if p.is_dir())
        for f in sorted(c.glob("*.jpg"))[:30]
    ]
    (out / "subset.csv").write_text("\n".join(rows) + "\n")
    headstart.ImageClassifier(strategy="feature-extraction", head="logistic", seed=1, verbose=False).fit(
        out / "subset.csv", out_dir=out / "run"
    )
    return out / "run"


def export(model: Path, out: Path, fmt: str) -> Path:
    subprocess.run(
        [sys.executable, "-m", "headstart", "export", str(model), "--format", fmt, "--out", str(out)],
        check=True,
    )
    return out


def offline_throughput(model: Path, photos: list[Path], cache: Path) -> float:
    """Images per second of ``headstart predict`` (the estimator's predict_proba) with an empty
    feature cache: decoding, preprocessing and the network, as the server does them."""
    import headstart

    clf = headstart.load(model, cache_dir=cache, verbose=False)
    clf.predict_proba(photos[:4])  # warm-up: the backbone's engine is built once
    fresh = photos[4:]  # not in the cache yet
    start = time.perf_counter()
    clf.predict_proba(fresh)
    return len(fresh) / (time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(export_dir: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "headstart",
        "serve",
        str(export_dir),
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    proc = subprocess.Popen([*command, "--max-batch", str(max_batch)])
    url = f"http://{HOST}:{port}"
    for _ in range(600):
        try:
            ready = httpx.get(url + "/readyz", timeout=1)
            if ready.status_code == 200:
                tuned = ready.json()
                print(
                    f"--max-batch {max_batch}: batches of up to {tuned['batch_size']} "
                    f"(images/s by batch size at startup: {tuned['images_per_second_by_batch_size']})"
                )
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def encoded_requests(url: str, bodies: list[tuple[str, bytes]]) -> list[bytes]:
    """Each photo's whole HTTP/1.1 request (multipart, keep-alive), encoded once up front: the
    load generator shares the 2 cores with the server, so it must cost as little CPU as wrk."""
    host = url.split("//", 1)[1]
    out = []
    for name, data in bodies:
        boundary = "headstart-load-boundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        head = (
            f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


async def answer_ok(reader: asyncio.StreamReader) -> bool:
    """Read one response; True for a 200 whose first result is no error."""
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    return status.split(b" ", 2)[1] == b"200" and b'"error"' not in body


async def load(url: str, bodies: list[tuple[str, bytes]], clients: int, requests: int) -> dict[str, float]:
    """``requests`` requests from ``clients`` concurrent keep-alive connections; each sends one
    photo at a time and waits for its answer."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    encoded = encoded_requests(url, bodies)
    host, port = url.split("//", 1)[1].split(":")

    async def client() -> None:
        nonlocal errors, sent
        reader, writer = await asyncio.open_connection(host, int(port))
        while sent < requests:
            request = encoded[sent % len(encoded)]
            sent += 1
            start = time.perf_counter()
            try:
                writer.write(request)
                ok = await answer_ok(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                ok = False
                writer.close()
                reader, writer = await asyncio.open_connection(host, int(port))
            latencies.append(time.perf_counter() - start)
            errors += not ok
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "rps": len(latencies) / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "errors": errors,
    }


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def run_settings(
    export_dir: Path, batch_sizes: list[int], bodies, client_counts, requests
) -> dict[tuple[int, int], dict[str, float]]:
    """Every server setting answers each client count in turn: one server per setting, all
    started first, so the settings compared run minutes apart at most on a machine whose other
    load drifts. An idle server uses no CPU while another is measured."""
    servers = {batch: start_server(export_dir, batch) for batch in batch_sizes}
    results = {}
    try:
        for clients in client_counts:
            for batch, (proc, url) in servers.items():
                before = rss_mb(proc.pid)
                figures = asyncio.run(load(url, bodies, clients, requests))
                figures.update(rss_before=before, rss_after=rss_mb(proc.pid))
                results[batch, clients] = figures
                print(
                    f"max-batch {batch:>2}  {clients:>2} clients: {figures['rps']:6.1f} req/s  "
                    f"p50 {figures['p50']:7.1f} ms  p99 {figures['p99']:7.1f} ms  errors {figures['errors']}  "
                    f"server RSS {before:.0f} -> {figures['rss_after']:.0f} MiB",
                    flush=True,
                )
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "model", nargs="?", type=Path, help="run folder or model.safetensors (default: train one)"
    )
    parser.add_argument("--photos", type=int, default=100, help="distinct flowers photos sent (cycled)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per client count")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--format", default="openvino", choices=["openvino", "onnx"], help="export served")
    args = parser.parse_args()
    from headstart.core.system import cpu_summary

    print(f"CPU: {cpu_summary()}")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        model = args.model or train_probe(work)
        export_dir = export(model, work / "export", args.format)
        photos = flowers_photos(args.photos)
        bodies = [(p.name, p.read_bytes()) for p in photos]
        offline = offline_throughput(model, photos, work / "cache")
        print(
            f"headstart predict offline: {offline:.1f} images/s on {len(photos)} photos (empty feature cache)"
        )
        results = run_settings(export_dir, [16, 1], bodies, args.clients, args.requests)
    for clients in args.clients:
        b, s = results[16, clients], results[1, clients]
        print(
            f"{clients:>2} clients: batching/no-batching throughput {b['rps'] / s['rps']:.2f}x; "
            f"batching = {100 * b['rps'] / offline:.0f}% of offline predict (target >= 80%); "
            f"errors {b['errors'] + s['errors']}; server RSS {b['rss_before']:.0f} -> {b['rss_after']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
