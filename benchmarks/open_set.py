"""Open-set benchmark: does the reject score tell a class the model never saw from the ones it knows?

    python benchmarks/open_set.py ../shared/datasets/flower_photos [--target-accuracy 0.95]

For each class of the data in turn: train ``ImageClassifier(strategy="feature-extraction",
reject="auto")`` on the other classes (a CSV naming the photos in place; the library's own split),
then score the known classes' test images and every image of the left-out class. Per rotation and
on average, for each score kind:

- AUROC of the score for known (test images of the trained classes) against unknown (the left-out
  class): 0.5 is chance, 1 a perfect separation;
- at the threshold chosen on validation for ``--target-accuracy`` on accepted images: coverage and
  accuracy on the known test images, and the share of unknown images turned down.

Score kinds: ``max_probability*knn`` is the library's own (the score ``predict_top_k`` answers
with: the calibrated top probability times the cosine similarity to the nearest image of the
model's neighbour bank; its threshold the one the fitted model chose). The others are computed
here for comparison, with thresholds chosen the library's way (``evaluation.reject.choose_threshold``
on validation images, scored by a model that did not learn from them: the head fitted on train
only at the chosen C, the train images as neighbours): ``max_probability`` (the calibrated top
probability, the score of models without a bank), ``energy`` (log-sum-exp of the head's logits)
and ``knn`` (the similarity alone, to every train + val image). Features are cached, so on a warm
cache the five rotations take about a minute.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from headstart import ImageClassifier
from headstart.core.system import cpu_summary
from headstart.data.discovery import discover
from headstart.evaluation.reject import choose_threshold, reject_scores, selective_metrics
from headstart.models.heads import LogisticHead

KINDS = ("max_probability", "energy", "knn", "max_probability*knn")


def logits(head: LogisticHead, x: np.ndarray) -> np.ndarray:
    return ((x - head.mean) / head.scale) @ head.coef.T + head.intercept


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def split_features(clf: ImageClassifier, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and class indices of the fitted model's ``name`` split."""
    root = Path(clf.split_["root"])
    rows = [(str(root / rel), label) for rel, label, g in clf.split_["files"] if g == name]
    x = clf.transform([p for p, _ in rows])
    return x, np.array([clf.classes_.index(label) for _, label in rows])


def library_scores(clf: ImageClassifier, paths: list[str]) -> np.ndarray:
    """The scores the fitted model answers with (``predict_top_k``), one per readable path."""
    return np.array([item["score"] for item in clf.predict_top_k(paths, k=1) if "score" in item])


def rotation(data: Path, left_out: str, classes: list[str], target: float, work: Path) -> dict:
    """Train without ``left_out``; every score kind's numbers on known and unknown images."""
    dataset = discover(data)
    csv = work / f"without_{left_out}.csv"
    lines = ["path,label"] + [f"{s.path},{s.label}" for s in dataset.samples if s.label != left_out]
    csv.write_text("\n".join(lines) + "\n")
    unknown_paths = [s.path for s in dataset.samples if s.label == left_out]
    clf = ImageClassifier(
        strategy="feature-extraction", reject="auto", target_accuracy=target, verbose=False, report_map="none"
    ).fit(csv)
    assert clf.reject_bank_ is not None, "the library's model has no neighbour bank"
    known_x, known_y = clf.transform(clf.test_["paths"]), np.asarray(clf.test_["y"])
    unknown_x = clf.transform(unknown_paths)
    unknown_x = unknown_x[np.isfinite(unknown_x).all(axis=1)]
    train_x, train_y = split_features(clf, "train")
    val_x, val_y = split_features(clf, "val")
    train_only = LogisticHead(cs=(clf.head_.C,), refit=False)  # type: ignore[attr-defined]
    train_only.fit(train_x, train_y, val_x, val_y, len(clf.classes_))
    bank, train_bank = unit(np.concatenate([train_x, val_x])), unit(train_x)

    def scores(x: np.ndarray, head: LogisticHead, neighbours: np.ndarray) -> dict[str, np.ndarray]:
        z = logits(head, x) / clf.temperature_
        msp = reject_scores(np.exp(z - logsumexp(z, axis=1, keepdims=True)))
        knn = (unit(x) @ neighbours.T).max(axis=1)
        return {"max_probability": msp, "energy": logsumexp(z, axis=1), "knn": knn, KINDS[3]: msp * knn}

    val = scores(val_x, train_only, train_bank)
    val_correct = logits(train_only, val_x).argmax(axis=1) == val_y
    known, unknown = scores(known_x, clf.head_, bank), scores(unknown_x, clf.head_, bank)
    known[KINDS[3]] = library_scores(clf, clf.test_["paths"])  # the library's own, its bank
    unknown[KINDS[3]] = library_scores(clf, unknown_paths)
    known_correct = logits(clf.head_, known_x).argmax(axis=1) == known_y
    out = {}
    for kind in KINDS:
        if kind == KINDS[3]:
            threshold = float(clf.reject_threshold_)  # the library's own choice
        else:
            threshold = choose_threshold(val[kind], val_correct, target).threshold
        truth = np.r_[np.ones(len(known_x)), np.zeros(len(unknown_x))]
        auroc = roc_auc_score(truth, np.r_[known[kind], unknown[kind]])
        m = selective_metrics(known[kind], known_correct, threshold)
        rejected = float((unknown[kind] <= threshold).mean())
        out[kind] = (auroc, m["coverage"], m["accuracy_accepted"], rejected)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", nargs="?", default="../shared/datasets/flower_photos", type=Path)
    parser.add_argument("--target-accuracy", type=float, default=0.95)
    args = parser.parse_args()
    print(cpu_summary())
    classes = discover(args.data).classes
    t0 = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for left_out in classes:
            results[left_out] = rotation(args.data, left_out, classes, args.target_accuracy, Path(tmp))
    header = "unknown class | AUROC | coverage (known) | accuracy on accepted (known) | unknown turned down"
    for kind in KINDS:
        print(f"\n## score: {kind} (threshold for accuracy {args.target_accuracy} on accepted val images)")
        print(header)
        rows = np.array([results[c][kind] for c in classes])
        for c, row in zip(classes, rows):
            print(f"{c} | {row[0]:.3f} | {row[1]:.3f} | {row[2]:.3f} | {row[3]:.3f}")
        mean = rows.mean(axis=0)
        print(f"mean | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} | {mean[3]:.3f}")
    print(f"\n{len(classes)} rotations in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
