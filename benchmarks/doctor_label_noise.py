"""How well does the doctor find wrong labels, and does leaving them out help?

    python benchmarks/doctor_label_noise.py ../shared/datasets/flower_photos --noise 0.05 --out /tmp/noise

Flips ``--noise`` of the labels at random (seeded; each to another class chosen at random) by
writing a CSV of path,label,split that points at the original photos: the "copy of the folder
with labels flipped" without copying a byte of the images. The split is drawn once (seeded,
stratified on the noisy labels, as train would) and written into the CSV, so every model below
is scored on the same test images. Then:

1. ``headstart doctor`` on the noisy CSV: recall of the flipped files among the top 5% and top
   10% of its label-issue ranking, and the precision/recall of the images it flags.
2. Test accuracy of a model trained on the noisy labels, before and after ``--exclude`` of the
   doctor's candidates (the flagged issues; and, as a variant, the top 5% of the ranking),
   measured against the clean labels of the test split (the honest number) and the noisy ones;
   and a model trained on the clean labels with the same split, as the ceiling.

Features are cached by content, so on a warm cache this takes well under a minute.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from headstart import ImageClassifier
from headstart.data.discovery import discover
from headstart.data.splits import make_split
from headstart.doctor import diagnose
from headstart.runs.doctor import write_doctor_files


def accuracy(clf: ImageClassifier, paths: list[str], truth: list[str]) -> float:
    predicted = clf.predict(paths)
    return float(np.mean([p == t for p, t in zip(predicted, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", nargs="?", default="../shared/datasets/flower_photos")
    parser.add_argument("--noise", type=float, default=0.05, help="fraction of labels to flip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/doctor_label_noise"))
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    dataset = discover(args.data)
    classes = dataset.classes
    rng = np.random.default_rng(args.seed)
    n = len(dataset.samples)
    flipped_idx = set(rng.choice(n, size=round(args.noise * n), replace=False).tolist())
    clean = {str(Path(s.path).resolve()): s.label for s in dataset.samples}
    noisy_labels = []
    for i, s in enumerate(dataset.samples):
        if i in flipped_idx:
            noisy_labels.append(str(rng.choice([c for c in classes if c != s.label])))
        else:
            noisy_labels.append(s.label)
    splits = make_split(noisy_labels, seed=args.seed)
    paths = [str(Path(s.path).resolve()) for s in dataset.samples]
    csv_path = out / "noisy.csv"
    with open(csv_path, "w", encoding="utf-8") as f:
        f.write("path,label,split\n")
        for p, label, split in zip(paths, noisy_labels, splits):
            f.write(f"{p},{label},{split}\n")
    flipped = {paths[i] for i in flipped_idx}
    noisy = dict(zip(paths, noisy_labels))
    print(f"{n} images, {len(flipped)} labels flipped ({args.noise:.0%}), CSV {csv_path}")

    t = time.perf_counter()
    report = diagnose(csv_path, seed=args.seed, verbose=False)
    doc = write_doctor_files(report, out / "doctor")
    doctor_s = time.perf_counter() - t
    ranked = [r["path"] for r in report.label_ranking]
    recall = {}
    for frac in (0.05, 0.10):
        top = set(ranked[: round(frac * n)])
        recall[f"recall_at_{int(frac * 100)}pct"] = len(top & flipped) / len(flipped)
    issues = {r["path"] for r in report.label_issues}
    found = len(issues & flipped)
    print(
        f"doctor: {doctor_s:.1f}s; recall of flipped in top 5%: {recall['recall_at_5pct']:.3f}, "
        f"top 10%: {recall['recall_at_10pct']:.3f}; flagged {len(issues)} "
        f"(precision vs flips {found / max(len(issues), 1):.3f}, recall {found / len(flipped):.3f})"
    )

    test_paths = [p for p, s in zip(paths, splits) if s == "test"]
    clean_truth = [clean[p] for p in test_paths]
    noisy_truth = [noisy[p] for p in test_paths]
    results = {}
    variants = {
        "no exclusion": [],
        "exclude flagged issues": sorted(issues),
        "exclude top 5% of ranking": ranked[: round(0.05 * n)],
    }
    clean_csv = out / "clean.csv"  # same split, true labels: the ceiling
    with open(clean_csv, "w", encoding="utf-8") as f:
        f.write("path,label,split\n")
        for p, split in zip(paths, splits):
            f.write(f"{p},{clean[p]},{split}\n")
    variants["clean labels (ceiling)"] = []
    for name, excluded in variants.items():
        exclude_file = out / f"exclude_{len(results)}.txt"
        exclude_file.write_text("".join(f"{p}\n" for p in excluded), encoding="utf-8")
        clf = ImageClassifier(
            strategy="feature-extraction", seed=args.seed, verbose=False, exclude=exclude_file
        )
        clf.fit(clean_csv if name.startswith("clean") else csv_path, out_dir=out / f"run_{len(results)}")
        results[name] = {
            "excluded": len(excluded),
            "excluded_flipped": len(set(excluded) & flipped),
            "test_accuracy_clean_labels": accuracy(clf, test_paths, clean_truth),
            "test_accuracy_noisy_labels": accuracy(clf, test_paths, noisy_truth),
            "n_test": len(test_paths),
        }
        r = results[name]
        print(
            f"{name:28s} excluded {r['excluded']:4d} ({r['excluded_flipped']} flipped): test accuracy "
            f"clean labels {r['test_accuracy_clean_labels']:.4f}, noisy labels {r['test_accuracy_noisy_labels']:.4f} "
            f"(n={r['n_test']})"
        )
    summary = {
        "data": str(args.data),
        "n": n,
        "noise": args.noise,
        "seed": args.seed,
        "n_flipped": len(flipped),
        **recall,
        "flagged": len(issues),
        "flagged_flipped": found,
        "doctor_seconds": doctor_s,
        "doctor_summary": doc["summary"],
        "training": results,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"written {out / 'summary.json'}")


if __name__ == "__main__":
    main()
