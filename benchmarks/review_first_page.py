"""Time to first page of ``headstart review RUN``: from the process start to the page and the first
queue's first page served (what a user waits for before the first photo shows).

    python benchmarks/review_first_page.py RUN [--port 8765] [--repeats 2]

Starts ``python -m headstart review RUN`` as a fresh process each time, polls until ``GET /``,
``GET /api/meta`` and the first non-empty queue's page 0 all answer, prints the seconds, the
server's own start-up lines (load, queue timings), and the CPU line. The run's features must be
in the cache (a trained run's are), as they are when a user reviews the run they just trained.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import httpx

from headstart.core.system import cpu_summary


def first_page_seconds(run: Path, port: int, limit_s: float = 600) -> tuple[float, str, int]:
    """Seconds to the first page, the server's output, and the first queue's length."""
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "headstart", "review", str(run), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        while time.perf_counter() - started < limit_s:
            if proc.poll() is not None:
                raise SystemExit(f"review exited: {proc.stdout.read() if proc.stdout else ''}")
            try:
                meta = httpx.get(url + "/api/meta", timeout=2).json()
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            first = next((q for q in meta["queues"] if q["count"]), meta["queues"][0])
            page = httpx.get(f"{url}/", timeout=10)
            items = httpx.get(f"{url}/api/queue/{first['name']}?page=0", timeout=10).json()["items"]
            assert page.status_code == 200 and (items or not first["count"])
            seconds = time.perf_counter() - started
            break
        else:
            raise SystemExit("no first page within the limit")
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    return seconds, output, first["count"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(cpu_summary())
    for n in range(1, args.repeats + 1):
        seconds, output, count = first_page_seconds(args.run, args.port)
        print(f"try {n}: first page in {seconds:.1f} s (first queue: {count} images)")
        print("  " + "\n  ".join(line for line in output.splitlines() if line.strip()))


if __name__ == "__main__":
    main()
