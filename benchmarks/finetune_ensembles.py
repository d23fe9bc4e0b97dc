"""Do fine-tuned networks, averaged and with flip TTA, beat one fine-tuned network?

    python benchmarks/finetune_ensembles.py ../shared/datasets/flower_photos --out /tmp/ft-ens \\
        last:2 last:3 last:2,1 last:2,0,tf_efficientnet_lite2

Each RUN argument is ``DEPTH[,SEED_OFFSET[,BACKBONE]]``: ``ImageClassifier(strategy="finetune",
unfreeze=DEPTH, backbone=BACKBONE, epochs=4)`` with the fine-tuning seed moved by SEED_OFFSET
(the split keeps seed 0, so every run has the same validation and test images, up to the data
check's grouping of near-duplicates by each backbone's features). Each run's validation and test
images are scored through the feature path ``predict`` uses, without and with flip TTA; then
every combination of runs with the same test images is scored by the mean of their
log-probabilities (what ``auto``'s combined candidates and ``averaged_linear_head`` compute).
Runs are cached in ``--out`` (a run whose ``.npz`` exists is not trained again).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np

from headstart.core.system import cpu_summary
from headstart.estimator.classifier import ImageClassifier
from headstart.features.composite import FeatureSpec


def train_and_score(data: Path, out: Path, run: str) -> Path:
    """Fine-tune one run; its validation and test log-probabilities, plain and mirrored."""
    parts = run.split(",")
    depth, offset = parts[0], int((parts[1:2] or ["0"])[0])
    backbone = (parts[2:3] or ["tf_efficientnet_lite0"])[0]
    tag = f"{depth.replace(':', '')}-s{offset}-{backbone}"
    result = out / f"{tag}.npz"
    if result.exists():
        return result
    t0 = time.time()
    clf = ImageClassifier(strategy="finetune", unfreeze=depth, backbone=backbone, epochs=4, verbose=False)
    settings = clf._finetune_settings
    clf._finetune_settings = lambda: dataclasses.replace(settings(), seed=settings().seed + offset)  # type: ignore[method-assign]
    clf.fit(data, out_dir=out / tag)
    rows = list(csv.DictReader(open(out / tag / "split.csv")))
    scored = {}
    for split in ("val", "test"):
        paths = [str(data / r["path"]) for r in rows if r["split"] == split]
        scored[f"y_{split}"] = np.array([clf.classes_.index(r["label"]) for r in rows if r["split"] == split])
        for tta in ("none", "flip"):
            features = clf._extractor(FeatureSpec([clf.backbone_], tta=tta)).extract(paths).features
            scored[f"{split}_{tta}"] = np.log(np.clip(clf.head_.predict_proba(features), 1e-12, 1))
    np.savez(result, **scored)
    print(f"{tag}: trained and scored in {time.time() - t0:.0f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", type=Path, default=Path("/tmp/headstart-ft-ensembles"))
    args = parser.parse_args()
    print(cpu_summary())
    scored = {run: dict(np.load(train_and_score(args.data, args.out, run))) for run in args.runs}
    print("runs | val | val flip | test | test flip")
    for k in range(1, len(args.runs) + 1):
        for combo in itertools.combinations(args.runs, k):
            sizes = {(len(scored[r]["y_val"]), len(scored[r]["y_test"])) for r in combo}
            if len(sizes) > 1:
                continue  # another backbone's data check grouped the images differently
            cells = []
            for split, tta in (("val", "none"), ("val", "flip"), ("test", "none"), ("test", "flip")):
                mean = np.mean([scored[r][f"{split}_{tta}"] for r in combo], axis=0)
                cells.append(f"{(mean.argmax(1) == scored[combo[0]][f'y_{split}']).mean():.4f}")
            print(" + ".join(combo), "|", " | ".join(cells))


if __name__ == "__main__":
    main()
