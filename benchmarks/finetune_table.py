"""Test accuracy and wall time of the linear probe and of each fine-tuning depth, as a markdown table.

Rows: ``probe`` (a logistic head on cached features, the feature-extraction strategy), then
``head``, ``last:1``, ``last:2``, ``half`` and ``all`` fine-tuned for ``--epochs`` epochs each
(early stopping may end sooner), all on the same seeded split. Every row is one ``fit`` in this
process, timed end to end (discovery, cached features, probe, training, test); each run folder
stays under ``--out`` (history.csv, metrics.json, log.txt).

    python benchmarks/finetune_table.py ../shared/datasets/flower_photos --epochs 2
    python benchmarks/finetune_table.py ../shared/datasets/flower_photos --limit 40 --epochs 1   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path)
    parser.add_argument("--configs", default="probe,head,last:1,last:2,half,all")
    parser.add_argument(
        "--epochs", default="2", help="one number, or one per fine-tuning config (e.g. 3,3,3,2,2,1)"
    )
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images of each class")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget", type=float, default=0, help="minutes per fine-tuning run (0: none)")
    parser.add_argument("--out", type=Path, default=Path("runs/finetune_table"))
    args = parser.parse_args()

    from headstart import FineTuneClassifier, ImageClassifier
    from headstart.data.discovery import Dataset, discover

    dataset = discover(args.data)
    if args.limit:
        per_class: dict[str, int] = defaultdict(int)
        kept = []
        for s in dataset.samples:
            if per_class[s.label] < args.limit:
                per_class[s.label] += 1
                kept.append(s)
        dataset = Dataset(dataset.root, kept, dataset.kind, dataset.ignored)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    tuned = [c for c in configs if c != "probe"]
    epochs = [int(e) for e in args.epochs.split(",")]
    epochs_of = {c: epochs[min(i, len(epochs) - 1)] for i, c in enumerate(tuned)}

    rows = []
    for config in configs:
        out = args.out / config.replace(":", "")
        t0 = time.perf_counter()
        if config == "probe":
            clf = ImageClassifier(strategy="feature-extraction", seed=args.seed, verbose=False).fit(
                dataset, out_dir=out
            )
        else:
            print(f"--- {config}, {epochs_of[config]} epoch(s)", file=sys.stderr, flush=True)
            clf = FineTuneClassifier(
                unfreeze=config,
                epochs=epochs_of[config],
                lr=args.lr,
                train_batch_size=args.batch_size,
                seed=args.seed,
                time_budget=args.time_budget * 60 or None,
            ).fit(dataset, out_dir=out)
        wall = time.perf_counter() - t0
        m = clf.metrics_
        ft = m.get("finetune", {})
        rows.append(
            {
                "config": config,
                "test_accuracy": m["test"]["accuracy"],
                "n_test": m["test"]["n"],
                "epochs": ft.get("epochs_run", 0),
                "best_epoch": ft.get("best_epoch"),
                "stopped": ft.get("stopped_because", ""),
                "trainable": ft.get("trainable_backbone_params", 0),
                "images_per_s": ft.get("images_per_s"),
                "start_val_accuracy": (ft.get("start_val") or {}).get("val_accuracy"),
                "last_val_accuracy": ft["history"][-1]["val_accuracy"] if ft.get("history") else None,
                "wall_s": wall,
            }
        )
        print(
            f"{config}: test accuracy {rows[-1]['test_accuracy']:.4f}, {wall:.0f}s",
            file=sys.stderr,
            flush=True,
        )

    lines = [
        f"Data: {dataset.root} ({len(dataset.samples)} images{f', first {args.limit} per class' if args.limit else ''}), "
        f"seed {args.seed}, batch {args.batch_size}, lr {args.lr:g}, {os.cpu_count()} CPU cores.",
        "",
        "| config | epochs (best; 0 = the probe kept) | trainable backbone params | train img/s | val accuracy: probe -> last epoch | test accuracy | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ep = f"{r['epochs']} ({r['best_epoch']})" + (
            f" {r['stopped']}" if r["stopped"] not in ("", "completed") else ""
        )
        ips = f"{r['images_per_s']:.1f}" if r["images_per_s"] else "-"
        val = (
            f"{r['start_val_accuracy']:.4f} -> {r['last_val_accuracy']:.4f}"
            if r.get("last_val_accuracy") is not None and r.get("start_val_accuracy") is not None
            else "-"
        )
        lines.append(
            f"| {r['config']} | {ep if r['config'] != 'probe' else '-'} | {r['trainable']:,} | {ips} | {val} | "
            f"{r['test_accuracy']:.4f} (n={r['n_test']}) | {r['wall_s'] / 60:.1f} min |"
        )
    acc = {r["config"]: r["test_accuracy"] for r in rows}
    if "half" in acc and "all" in acc:
        winner = (
            "half" if acc["half"] > acc["all"] else "all" if acc["all"] > acc["half"] else "neither (a tie)"
        )
        lines += ["", f"half vs all: {winner} wins ({acc['half']:.4f} vs {acc['all']:.4f})."]
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
