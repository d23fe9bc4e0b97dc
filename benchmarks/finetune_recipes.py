"""Does a longer or different fine-tuning recipe beat the default one (``half``, 4 epochs)?

    python benchmarks/finetune_recipes.py ../shared/datasets/flower_photos --out /tmp/recipes \\
        half/4/0 half/8/0 all/8/0 half/8/0/backbone_lr_scale=0.3 half/12/0 last:2/8/0 \\
        half/8/0/freeze_bn_stats=False

Each RECIPE is ``DEPTH/EPOCHS/SEED[/SETTING=VALUE,...]``: ``ImageClassifier(strategy="finetune",
unfreeze=DEPTH, epochs=EPOCHS, seed=SEED)`` (the seed fixes the split and the training, so
recipes with one seed share their validation and test images), with any ``FineTuneSettings``
field that the estimator does not expose set as given. It trains where ``fit`` trains: on a GPU
where torch sees one, else on this CPU. One JSON line per recipe: test accuracy, validation
accuracy after each epoch, seconds and images/s per epoch; also appended to ``OUT/recipes.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from headstart.core.system import cpu_summary
from headstart.estimator.classifier import ImageClassifier


def parse_recipe(text: str) -> tuple[str, int, int, dict[str, Any]]:
    depth, epochs, seed, *rest = text.split("/")
    overrides: dict[str, Any] = {}
    for pair in filter(None, (rest[0] if rest else "").split(",")):
        key, value = pair.split("=")
        overrides[key] = value == "True" if value in ("True", "False") else float(value)
    return depth, int(epochs), int(seed), overrides


def run_recipe(data: Path, out: Path, text: str, workers: int | None) -> dict[str, Any]:
    depth, epochs, seed, overrides = parse_recipe(text)
    name = text.replace("/", "_").replace(":", "").replace("=", "").replace(",", "-")
    clf = ImageClassifier(
        strategy="finetune", unfreeze=depth, epochs=epochs, seed=seed, report_map="none",
        loader_workers=workers, verbose=False,
    )  # fmt: skip
    settings = clf._finetune_settings
    clf._finetune_settings = lambda: dataclasses.replace(settings(), **overrides)  # type: ignore[method-assign]
    t0 = time.time()
    clf.fit(data, out_dir=out / name)
    tuned = clf.metrics_["finetune"]
    return {
        "recipe": text,
        "test": round(clf.metrics_["test"]["accuracy"], 4),
        "probe_val": round(tuned["start_val"]["val_accuracy"], 4),
        "val": [round(r["val_accuracy"], 4) for r in tuned["history"]],
        "best_epoch": tuned["best_epoch"],
        "probe_kept": tuned["probe_kept"],
        "device": tuned["distributed"].get("device", "cpu"),
        "epoch_s": [round(r["seconds"], 1) for r in tuned["history"]],
        "images_per_s": [round(r["images_per_s"]) for r in tuned["history"]],
        "wall_s": round(time.time() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path)
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: fit's)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(cpu_summary(), flush=True)
    for text in args.recipes:
        record = run_recipe(args.data, args.out, text, args.workers)
        print(json.dumps(record), flush=True)
        with open(args.out / "recipes.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
