"""A warm ``--strategy feature-extraction`` re-run, old code against new, side by side.

    git worktree add /tmp/speed-old <commit>        # the code to compare against
    python benchmarks/iteration_speed.py /tmp/speed-old/src src \\
        --data ../shared/datasets/flower_photos --rounds 5

Each round runs both source trees in turn (the order alternates between rounds, so a slow moment on
a shared machine falls on both): ``headstart --version`` (start-up and imports alone), then
``headstart train DATA --strategy feature-extraction --out OUT/<name>`` whose wall time includes
the report. Both trees' bytecode is compiled first, as an install does; one untimed run of each
warms the feature cache. Prints the median of each figure and new/old ratios (and CPU seconds), the per-stage seconds from each run's ``metrics.json``
(``startup`` = wall time less the run's own ``total``: interpreter, imports, flag parsing), the
CPU and the load average, and checks that both trees chose the same C and predicted the same
labels with the same test accuracy. Absolute seconds on a machine shared with other work are
inflated: compare the ratios, measured in the same rounds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("startup", "discover", "extract", "data_check", "split", "fit_head", "save", "report", "other")


def run_seconds(src: Path, args: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of ``python -m headstart ARGS`` with ``src`` first on
    the import path. On a shared machine the CPU seconds of a serial program stay near its wall
    time on a quiet one; the wall time grows with the other load."""
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "headstart", *args], env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def stage_seconds(run_dir: Path, wall: float) -> dict[str, float]:
    """The run's own timings, grouped as STAGES (``other``: evaluation, calibration and the rest)."""
    timings = json.loads((run_dir / "metrics.json").read_text())["timings"]
    named = {s: float(timings.get(s, 0.0)) for s in STAGES[1:-1]}
    named["other"] = float(timings["total"]) - sum(named.values()) - float(timings.get("backbone", 0.0))
    return {"startup": wall - float(timings["total"]), **named}


def outcome(run_dir: Path) -> tuple[float, float, list[str]]:
    """Test accuracy, the chosen C and the predicted labels: what must not change."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with open(run_dir / "test_predictions.csv", newline="") as f:
        predicted = [row["predicted"] for row in csv.DictReader(f)]
    return metrics["test"]["accuracy"], metrics["head"]["params"]["C"], predicted


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("old", type=Path, help="the old tree's src folder")
    parser.add_argument("new", type=Path, help="the new tree's src folder")
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/flower_photos"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="iteration-speed-"))
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    version: dict[str, list[float]] = {name: [] for name in trees}
    wall: dict[str, list[float]] = {name: [] for name in trees}
    cpu: dict[str, list[float]] = {name: [] for name in trees}
    stages: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for name, src in trees.items():  # warm the feature cache and the OS file cache, not timed
        # bytecode written as `pip install` writes it (PYTHONDONTWRITEBYTECODE=1 would otherwise
        # have every run compile headstart's ~100 modules again, ~0.5 s)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], check=True)
        run_seconds(
            src, ["train", str(args.data), "--strategy", "feature-extraction", "--out", str(out / name)]
        )
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            version[name].append(run_seconds(trees[name], ["--version"])[0])
            seconds, cpu_seconds = run_seconds(
                trees[name],
                ["train", str(args.data), "--strategy", "feature-extraction", "--out", str(out / name)],
            )
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
            stages[name].append(stage_seconds(out / name, seconds))
        print(f"round {r + 1}: " + ", ".join(f"{n} {wall[n][-1]:.2f}s" for n in trees), flush=True)

    from headstart.core.system import cpu_summary

    print(f"\nCPU: {cpu_summary()}; load average {os.getloadavg()[0]:.2f} (1 min) at the end")
    print(f"{args.rounds} rounds, medians in seconds\n")
    print("| figure | old | new | new/old |\n| --- | ---: | ---: | ---: |")

    def row(label: str, old: list[float], new: list[float]) -> None:
        a, b = statistics.median(old), statistics.median(new)
        print(f"| {label} | {a:.2f} | {b:.2f} | {b / a:.2f} |")

    row("`headstart --version`", version["old"], version["new"])
    row("**train, wall (report included)**", wall["old"], wall["new"])
    row("train, CPU seconds (user + system)", cpu["old"], cpu["new"])
    for stage in STAGES:
        row(f"stage: {stage}", *([s[stage] for s in stages[n]] for n in trees))
    old, new = outcome(out / "old"), outcome(out / "new")
    print(
        f"\ntest accuracy {old[0]:.4f} / {new[0]:.4f}; C {old[1]} / {new[1]}; "
        f"predicted labels identical: {old[2] == new[2]}; runs in {out}"
    )


if __name__ == "__main__":
    main()
