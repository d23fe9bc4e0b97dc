"""How well does the doctor find wrong labels: before cleanlab, after, and cleanlab alone.

    nice -n 5 python benchmarks/doctor_label_noise.py ../shared/datasets/flower_photos --out /tmp/noise

For each ``--noise`` level (default 5% and 20%) flips that share of the labels at random (seeded;
each to another class chosen at random) by writing a ``path,label`` CSV that points at the
original photos: the "copy of the folder with labels flipped" without copying a byte. Then, side
by side on the same cached backbone features:

- ``doctor before``: the whole ``headstart doctor`` with the label check it had before cleanlab
  (``labels.rank_label_issues`` on out-of-fold probabilities of a C=0.03 head, 5 quoted
  neighbours), put back in place for the run by ``before_doctor()`` below;
- ``doctor after``: the whole ``headstart doctor`` as it is (cleanlab's ``find_label_issues`` on
  the out-of-fold head averaged with the neighbours' labels);
- ``cleanlab``: what a user would write with cleanlab alone: 5-fold out-of-fold probabilities of
  a standardised logistic regression (sklearn's default C=1, and C=0.01) and
  ``find_label_issues(..., return_indices_ranked_by="self_confidence")``.

For each: how many images it flags, their precision and recall against the flipped ones, and the
share of flipped labels among the first k of its ranking (k = the number flipped). The doctors'
seconds are whole runs on a warm feature cache, measured in this one run (the CPU is printed).
``--train`` adds the old question: does leaving the flagged images out help a model trained on
the noisy labels (test accuracy on the clean labels of a fixed test split)?

Features are cached by content: the first run extracts all the photos once (minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from headstart.core.system import cpu_summary
from headstart.data.discovery import Sample, discover
from headstart.doctor import diagnose, diagnosis
from headstart.doctor.labels import (
    BEFORE_C,
    LabelFindings,
    out_of_fold_proba,
    rank_label_issues,
)
from headstart.features.extractor import build_extractor

BEFORE_NEIGHBOURS = 5
RESULTS_MD = Path(__file__).with_name("doctor_label_noise_results.md")


@dataclass
class Row:
    """One method's queue at one noise level."""

    noise: float
    method: str
    flagged: int
    precision: float
    recall: float
    first_k: float
    seconds: float
    ranked: list[str] = field(default_factory=list, repr=False)  # every image, most suspicious first
    recall_at_baseline_count: float = 0.0  # flipped among the first N, N = what cleanlab (C=1) flags


def before_label_records(
    samples: list[Sample], features: np.ndarray, nn_idx: np.ndarray, nn_sim: np.ndarray, folds: int, seed: int
) -> LabelFindings | None:
    """The doctor's label check before cleanlab: confident learning of our own on a C=0.03 head."""
    classes = sorted({s.label for s in samples})
    y = np.array([classes.index(s.label) for s in samples], dtype=np.int64)
    proba = out_of_fold_proba(features, y, len(classes), folds, seed, c=BEFORE_C)
    if proba is None:
        return None
    order, issue, suggested = rank_label_issues(proba, y)
    ranking = [
        {"path": samples[i].path, "suggested_label": classes[suggested[i]], "is_issue": bool(issue[i])}
        for i in order
    ]
    return LabelFindings(ranking, [r for r in ranking if r["is_issue"]])


@contextmanager
def before_doctor() -> Iterator[None]:
    """``diagnose`` with the label check and neighbour count it had before cleanlab."""
    with (
        mock.patch.object(diagnosis, "label_records", before_label_records),
        mock.patch.object(diagnosis, "LABEL_NEIGHBOURS", BEFORE_NEIGHBOURS),
    ):
        yield


def flip_labels(
    samples: list[Sample], classes: list[str], noise: float, seed: int
) -> tuple[list[str], set[int]]:
    """Noisy labels (``noise`` of them flipped, each to another class at random) and which."""
    rng = np.random.default_rng(seed)
    flipped = set(rng.choice(len(samples), size=round(noise * len(samples)), replace=False).tolist())
    labels = [
        str(rng.choice([c for c in classes if c != s.label])) if i in flipped else s.label
        for i, s in enumerate(samples)
    ]
    return labels, flipped


def score(
    noise: float, method: str, flagged: set[str], ranked: list[str], flipped: set[str], s: float
) -> Row:
    hits = len(flagged & flipped)
    first_k = len(set(ranked[: len(flipped)]) & flipped) / len(flipped)
    return Row(
        noise, method, len(flagged), hits / max(len(flagged), 1), hits / len(flipped), first_k, s, ranked
    )


def doctor_row(noise: float, method: str, csv_path: Path, flipped: set[str], seed: int) -> Row:
    t = time.perf_counter()
    report = diagnose(csv_path, seed=seed, verbose=False)
    seconds = time.perf_counter() - t
    ranked = [r["path"] for r in report.label_ranking]
    return score(noise, method, {r["path"] for r in report.label_issues}, ranked, flipped, seconds)


def cleanlab_row(
    noise: float,
    c: float,
    features: np.ndarray,
    labels: list[str],
    paths: list[str],
    flipped: set[str],
    seed: int,
) -> Row:
    """cleanlab alone, as its docs have it: out-of-fold probabilities of a standardised logistic
    regression, then ``find_label_issues`` ranked by self-confidence."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t = time.perf_counter()
    classes = sorted(set(labels))
    y = np.array([classes.index(label) for label in labels])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proba = cross_val_predict(
            model, features, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed), method="predict_proba"
        )
        issues = find_label_issues(y, proba, return_indices_ranked_by="self_confidence")
    order = np.argsort(get_label_quality_scores(y, proba, method="self_confidence"), kind="stable")
    seconds = time.perf_counter() - t
    method = f"cleanlab alone (LR C={c:g})"
    return score(noise, method, {paths[i] for i in issues}, [paths[i] for i in order], flipped, seconds)


def markdown(rows: list[Row], n: int, timings: dict[float, float], cpu: str, command: str) -> str:
    lines = [
        "# The doctor's likely-wrong-label queue: before cleanlab, after, and cleanlab alone",
        "",
        f"`{command}` on {n} flower photos (Lite0 features, cached), labels flipped at random (seed 0). "
        "first k: share of the flipped labels among the first k of the ranking, k = the number flipped. "
        "Seconds: the doctors' are whole `diagnose` runs on a warm feature cache; cleanlab's are its "
        "out-of-fold fit and find_label_issues only. recall in first N: share of the flipped labels among "
        "the first N of the ranking, N = the number cleanlab alone (C=1) flags at that noise: the same "
        "number of images reviewed. Measured in one run on a shared machine.",
        "",
        f"CPU: {cpu}",
        "",
        "| noise | method | flagged | precision | recall | first k | recall in first N | seconds |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r.noise:.0%} | {r.method} | {r.flagged} | {r.precision:.3f} | {r.recall:.3f} | {r.first_k:.3f} "
        f"| {r.recall_at_baseline_count:.3f} | {r.seconds:.1f} |"
        for r in rows
    ]
    lines += [
        "",
        "Doctor time, after / before: " + ", ".join(f"{k:.0%} noise {v:.2f}x" for k, v in timings.items()),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", nargs="?", default="../shared/datasets/flower_photos")
    parser.add_argument(
        "--noise", type=float, nargs="+", default=[0.05, 0.20], help="fractions of labels to flip"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/doctor_label_noise"))
    parser.add_argument("--train", action="store_true", help="also train with and without the flagged images")
    parser.add_argument("--results", type=Path, default=RESULTS_MD, help="the markdown table written")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cpu = cpu_summary()
    print(cpu)

    dataset = discover(args.data)
    samples = list(dataset.samples)
    paths = [str(Path(s.path).resolve()) for s in samples]
    extracted = build_extractor(None, None, None, "auto", 8, None, True).extract(paths)
    rows: list[Row] = []
    timings: dict[float, float] = {}
    for step, noise in enumerate(args.noise):
        labels, flipped_idx = flip_labels(samples, dataset.classes, noise, args.seed)
        flipped = {paths[i] for i in flipped_idx}
        csv_path = args.out / f"noisy_{round(noise * 100)}.csv"
        csv_path.write_text(
            "path,label\n" + "".join(f"{p},{y}\n" for p, y in zip(paths, labels)), encoding="utf-8"
        )
        print(f"{noise:.0%} noise: {len(flipped)} of {len(paths)} labels flipped, {csv_path}", flush=True)
        found: dict[str, Row] = {}
        for which in ("before", "after") if step % 2 else ("after", "before"):  # alternate who goes first
            if which == "before":
                with before_doctor():
                    found[which] = doctor_row(noise, "doctor before", csv_path, flipped, args.seed)
            else:
                found[which] = doctor_row(noise, "doctor after (cleanlab)", csv_path, flipped, args.seed)
            print(f"  {found[which]}", flush=True)
        rows += [found["before"], found["after"]]
        timings[noise] = found["after"].seconds / found["before"].seconds
        for c in (1.0, 0.01):
            rows.append(cleanlab_row(noise, c, extracted.features, labels, paths, flipped, args.seed))
            print(f"  {rows[-1]}", flush=True)
        baseline = rows[-2].flagged  # cleanlab alone, C=1
        for row in rows[-4:]:
            row.recall_at_baseline_count = len(set(row.ranked[:baseline]) & flipped) / len(flipped)
        if args.train:
            train_with_and_without(args, paths, labels, samples, csv_path, flipped, noise)
    command = "python benchmarks/doctor_label_noise.py DATA --noise " + " ".join(f"{x:g}" for x in args.noise)
    text = markdown(rows, len(paths), timings, cpu, command)
    print(text)
    args.results.write_text(text, encoding="utf-8")
    (args.out / "summary.json").write_text(
        json.dumps([{k: v for k, v in vars(r).items() if k != "ranked"} for r in rows], indent=2)
    )
    print(f"written {args.results} and {args.out / 'summary.json'}")


def train_with_and_without(
    args: Any,
    paths: list[str],
    labels: list[str],
    samples: list[Sample],
    csv_path: Path,
    flipped: set[str],
    noise: float,
) -> None:
    """Test accuracy (clean labels of a fixed test split) of a model trained on the noisy labels,
    with and without the doctor's flagged images, and on the clean labels (the ceiling)."""
    from headstart import ImageClassifier
    from headstart.data.splits import make_split

    splits = make_split(labels, seed=args.seed)
    report = diagnose(csv_path, seed=args.seed, verbose=False)
    variants = {
        "no exclusion": (labels, []),
        "exclude flagged issues": (labels, [r["path"] for r in report.label_issues]),
        "clean labels (ceiling)": ([s.label for s in samples], []),
    }
    test = [i for i, s in enumerate(splits) if s == "test"]
    for n, (name, (given, excluded)) in enumerate(variants.items()):
        split_csv = args.out / f"train_{round(noise * 100)}_{n}.csv"
        split_csv.write_text(
            "path,label,split\n" + "".join(f"{p},{y},{s}\n" for p, y, s in zip(paths, given, splits)),
            encoding="utf-8",
        )
        exclude_file = args.out / f"exclude_{round(noise * 100)}_{n}.txt"
        exclude_file.write_text("".join(f"{p}\n" for p in excluded), encoding="utf-8")
        clf = ImageClassifier(
            strategy="feature-extraction", seed=args.seed, verbose=False, exclude=exclude_file
        )
        clf.fit(split_csv, out_dir=args.out / f"run_{round(noise * 100)}_{n}")
        predicted = clf.predict([paths[i] for i in test])
        accuracy = float(np.mean([p == samples[i].label for p, i in zip(predicted, test)]))
        print(
            f"  {name:24s} excluded {len(excluded):4d} ({len(set(excluded) & flipped)} flipped): "
            f"test accuracy on clean labels {accuracy:.4f} (n={len(test)})",
            flush=True,
        )


if __name__ == "__main__":
    main()
