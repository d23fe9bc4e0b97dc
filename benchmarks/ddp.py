"""Distributed fine-tuning against one process, side by side on this machine.

The same fit (``--strategy finetune --unfreeze last:2 --epochs 2``, same seed and global batch)
twice: in ONE process with 2 torch threads, then as TWO gloo ranks under torchrun with 1 thread
each (cores / world size, as ``headstart train --nproc 2`` gives them). Both use the same warm
feature cache (filled first, timed apart), so the wall times compare fine-tuning, not extraction.
Prints the CPU line, then test accuracy, first-epoch losses and wall time of each, and their ratio.

    flock /work/wt/cpu.lock python benchmarks/ddp.py ../shared/datasets/flower_photos

On 2 cores no speed-up is expected (the same arithmetic, split into two processes that also
average gradients every step); the point is that two ranks learn what one process does.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Runs one fit; the torch threads are pinned to THREADS for the whole job (a rank gets
# THREADS / local world size), so neither run depends on what else the machine is doing.
DRIVER = """
import sys
import headstart.training.loop as loop

loop.compute_threads = lambda threads=None: int(threads or {threads})
import headstart

data, out, unfreeze, epochs, seed = sys.argv[1:6]
headstart.ImageClassifier(
    strategy="finetune", unfreeze=unfreeze, epochs=int(epochs), seed=int(seed), verbose=True
).fit(data, out_dir=out)
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path)
    parser.add_argument("--unfreeze", default="last:2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads of the one process (and in all)"
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/headstart-ddp-bench"))
    args = parser.parse_args()

    from headstart.core.system import cpu_summary

    print(f"CPU: {cpu_summary()}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "cache"
    env = {**os.environ, "PYTHONPATH": str(SRC), "HEADSTART_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    warm_s = warm_cache(args.data, env)
    print(f"feature cache filled in {warm_s:.0f}s (not counted below)", flush=True)
    driver = args.out / "driver.py"
    driver.write_text(DRIVER.format(threads=args.threads))
    fit = [str(driver), str(args.data), "", args.unfreeze, str(args.epochs), str(args.seed)]
    runs = {
        f"1 process, {args.threads} threads": [sys.executable, *fit],
        f"2 ranks (gloo), {args.threads // 2} thread each": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            *fit,
        ],  # fmt: skip
    }
    rows = []
    for i, (name, cmd) in enumerate(runs.items()):
        out = args.out / f"run{i}"
        cmd[cmd.index("")] = str(out)
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        rows.append(summary(name, out, time.perf_counter() - t0))
    report(rows, args)


def warm_cache(data: Path, env: dict[str, str]) -> float:
    """Extract every image's features once into the benchmark's cache (a separate process)."""
    code = (
        "import sys; from headstart.data.discovery import discover; "
        "from headstart.features.extractor import build_extractor; "
        "build_extractor(verbose=False).extract(discover(sys.argv[1]).paths)"
    )
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(data)], env=env, check=True)
    return time.perf_counter() - t0


def summary(name: str, out: Path, wall_s: float) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    ft = metrics["finetune"]
    return {
        "run": name,
        "test_accuracy": metrics["test"]["accuracy"],
        "test_n": metrics["test"]["n"],
        "epoch1_loss": float(history[0]["loss"]),
        "epoch1_val_loss": float(history[0]["val_loss"]),
        "best_epoch": ft["best_epoch"],
        "probe_kept": ft["probe_kept"],
        "epoch_s": [round(float(r["seconds"])) for r in history],
        "distributed": ft["distributed"],
        "torch_threads": ft["torch_threads"],
        "finetune_s": metrics["timings"].get("finetune", float("nan")),
        "wall_s": wall_s,
    }


def report(rows: list[dict], args: argparse.Namespace) -> None:
    print(
        f"\n{args.data}: --strategy finetune --unfreeze {args.unfreeze} --epochs {args.epochs} --seed {args.seed}"
    )
    print(
        "| run | test accuracy | epoch-1 loss | epoch-1 val_loss | model | seconds per epoch | fine-tune s | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        model = "probe kept" if r["probe_kept"] else f"epoch {r['best_epoch']}"
        print(
            f"| {r['run']} | {r['test_accuracy']:.4f} ({r['test_n']}) | {r['epoch1_loss']:.4f} | "
            f"{r['epoch1_val_loss']:.4f} | {model} | {', '.join(map(str, r['epoch_s']))} | "
            f"{r['finetune_s']:.0f} | {r['wall_s']:.0f} |"
        )
    one, two = rows
    print(
        f"\naccuracy difference {100 * abs(one['test_accuracy'] - two['test_accuracy']):.2f} points; "
        f"wall time 2 ranks / 1 process = {two['wall_s'] / one['wall_s']:.2f}x "
        f"(fine-tuning alone {two['finetune_s'] / one['finetune_s']:.2f}x)"
    )
    (args.out / "ddp.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
