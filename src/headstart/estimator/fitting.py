"""The steps of ``ImageClassifier.fit``, each a plain function of its inputs.

discover (and exclude) -> usable samples after extraction -> quick data check -> split -> head
-> (fine-tuning, see ``finetune.py``) -> scores -> metrics (``build_metrics``, shared with
``evaluate``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import HeadstartError, ParameterError
from headstart.core.io import summarize_skips
from headstart.data.discovery import Dataset, Sample, discover
from headstart.data.exclusions import exclude_samples, read_exclude_list
from headstart.data.splits import assign_splits
from headstart.doctor import CheckReport, check_summary, quick_check
from headstart.evaluation.metrics import classification_metrics
from headstart.features.composite import FeatureSpec
from headstart.features.extractor import ExtractionResult
from headstart.features.store import FeatureStore, is_store, select_rows
from headstart.models.bundle import library_versions
from headstart.models.heads import Head, make_head
from headstart.models.streaming import StreamingLogisticHead

Log = Callable[[str], None]
SUMMARY_KEYS = ("accuracy", "accuracy_ci95", "n", "top_k", "top_k_accuracy", "macro_f1")


@dataclass
class Usable:
    """The samples whose features could be extracted, with what was passed over."""

    samples: list[Sample]
    features: np.ndarray | FeatureStore  # a store (rows on disk) beyond the memory budget
    hashes: list[Any]
    classes: list[str]
    y: np.ndarray  # class index of each sample
    skipped: list[tuple[str, str, str]]  # path, reason, stage


@dataclass(frozen=True)
class PreparedData:
    """What every fit starts from: the data and what was excluded from it, the base features
    (``spec``) and their extraction, and the samples whose features could be extracted."""

    dataset: Dataset
    excluded: list[Sample]
    spec: FeatureSpec
    extraction: ExtractionResult
    usable: Usable


@dataclass
class Split:
    names: list[str]  # train / val / test per usable sample
    method: str

    @property
    def array(self) -> np.ndarray:
        return np.array(self.names)

    def mask(self, name: str) -> np.ndarray:
        return self.array == name

    @property
    def evaluated_on(self) -> str:
        """The held-out split the model is scored on: test, or val where there is no test."""
        return "test" if self.mask("test").any() else "val"


def discover_data(
    data: str | Path | Dataset, labels_from: str, exclude: Any, log: Log, multi_label: bool | None = None
) -> tuple[Dataset, list[Sample]]:
    """The labelled images of ``data`` less those listed in ``exclude``; the excluded samples."""
    dataset = data if isinstance(data, Dataset) else discover(data, labels_from, multi_label)
    kind = "labels, multi-label" if dataset.multi_label else "classes"
    log(
        f"found {len(dataset.samples)} images in {len(dataset.classes)} {kind} ({dataset.kind}) in {dataset.root}"
    )
    if exclude is None:
        return dataset, []
    entries = read_exclude_list(exclude) if isinstance(exclude, (str, Path)) else list(exclude)
    dataset, excluded, unmatched = exclude_samples(dataset, entries)
    log(
        f"excluded {len(excluded)} image(s) listed in exclude"
        + (f"; {len(unmatched)} listed path(s) matched no image" if unmatched else "")
    )
    return dataset, excluded


def usable_samples(dataset: Dataset, result: ExtractionResult, log: Log, skipped_file: Path | None) -> Usable:
    """Drop what could not be read; at least two classes must remain."""
    skipped = [(p, r, "discovery") for p, r in dataset.ignored]
    skipped += [(dataset.samples[i].path, r, "decode") for i, r in result.errors.items()]
    ok = result.ok
    samples = [s for s, good in zip(dataset.samples, ok) if good]
    if skipped:
        log(summarize_skips(skipped) + (f" (listed in {skipped_file})" if skipped_file else ""))
    if not samples:
        raise HeadstartError(f"none of the {len(dataset.samples)} images in {dataset.root} could be read")
    classes = sorted({s.label for s in samples})
    if len(classes) < 2:
        raise HeadstartError(
            f"only one class ('{classes[0]}') found in {dataset.root}: a classifier needs at least two "
            "class folders (or labels)"
        )
    return Usable(
        samples=samples,
        features=select_rows(result.features, ok),
        hashes=[h for h, good in zip(result.hashes, ok) if good],
        classes=classes,
        y=np.array([classes.index(s.label) for s in samples]),
        skipped=skipped,
    )


def check_data(usable: Usable, log: Log) -> CheckReport:
    """The quick data check (duplicates, conflicting labels, leaks) on features already extracted."""
    bad = [(p, r) for p, r, _ in usable.skipped]
    checks = quick_check(usable.samples, usable.features, usable.hashes, bad)
    for line in checks.summary_lines():
        log(line)
    return checks


def split_samples(
    samples: Sequence[Sample],
    fractions: Sequence[float],
    seed: int,
    checks: CheckReport | None,
    keys: Sequence[str | None] | None = None,
    recorded: Sequence[str | None] | None = None,
) -> Split:
    """Predefined splits as given, the rest stratified and seeded (duplicate groups kept
    together); stable across data versions given each sample's content hash as ``keys``;
    ``recorded`` splits (an earlier run's, per sample) kept as they are."""
    groups = checks.group_indices if checks else None
    names, method = assign_splits(samples, fractions, seed, groups, keys, recorded)
    return nonempty_split(names, method)


def nonempty_split(names: Any, method: str) -> Split:
    """The split, refused when train or val is empty (one teaches the model, one judges it)."""
    split = Split(names, method)
    for name in ("train", "val"):
        if not split.mask(name).any():
            raise ParameterError(
                "split", f"the {name} split is empty: give more images or change the fractions"
            )
    return split


def data_check_summary(
    checks: CheckReport,
    samples: Sequence[Sample],
    split: Split,
    fractions: Sequence[float],
    seed: int,
    excluded,
    keys: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """metrics.json's ``data_checks``: which duplicate groups the plain split would have cut."""
    plain, _ = assign_splits(samples, fractions, seed, keys=keys)
    return check_summary(checks, plain, split.names, excluded)


def fit_head(
    name: str, params: dict[str, Any], seed: int, usable: Usable, split: Split
) -> tuple[Head, dict[str, Any]]:
    """The head on train features, its settings chosen on val."""
    x, y = usable.features, usable.y
    if name == "logistic" and is_store(x):  # beyond the memory budget: the same model, in mini-batches
        name, params = StreamingLogisticHead.name, {"seed": seed, **params}
    head = make_head(name, **params)
    if name == "mlp" and "seed" not in params:
        head.seed = seed  # type: ignore[attr-defined]
    tr, va = split.mask("train"), split.mask("val")
    x_train: Any = select_rows(x, tr)  # a store view (no copy) beyond the memory budget
    x_val: Any = select_rows(x, va)
    info = head.fit(x_train, y[tr], x_val, y[va], len(usable.classes))
    return head, info


def split_record(
    dataset: Dataset, usable: Usable, split: Split, fractions: Sequence[float], seed: int
) -> dict:
    """The fitted ``split_``: how, with which seed, class counts, and every file's split."""
    counts = {
        name: dict(sorted(Counter(s.label for s, g in zip(usable.samples, split.names) if g == name).items()))
        for name in ("train", "val", "test")
    }
    return {
        "method": split.method,
        "seed": seed,
        "fractions": list(fractions),
        "root": str(dataset.root),
        "counts": counts,
        "files": [[dataset.relative(s.path), s.label, g] for s, g in zip(usable.samples, split.names)],
    }


def score(y: np.ndarray, proba: np.ndarray, classes: list[str], top_k: int) -> dict[str, Any]:
    return classification_metrics(y, proba, classes, top_k)


def build_metrics(
    scores: dict[str, Any],
    summary_key: str,
    evaluated_on: str,
    model: dict[str, Any],
    data: dict[str, Any],
    timings: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``metrics.json`` of a training run or an evaluation: the one place its layout is decided.

    Args:
        scores: ``classification_metrics`` output.
        summary_key: key of the summary (``test``, or ``val`` for a run without a test split).
        evaluated_on: what was scored (a split name, ``saved test split``, ``all``).
        model: ``classes``, ``backbone`` (description), ``strategy`` and ``head`` sections.
        data: the ``data`` section (source, kind, counts...).
        timings: seconds per stage (the dict is kept, so later stages can add to it).
        extra: further sections (``extraction``, ``created``, ``finetune``...), appended.
    """
    return {
        summary_key: {k: scores[k] for k in SUMMARY_KEYS},
        "evaluated_on": evaluated_on,
        "classes": model["classes"],
        "per_class": scores["per_class"],
        "confusion_matrix": scores["confusion_matrix"],
        "backbone": model["backbone"],
        "strategy": model["strategy"],
        "head": model["head"],
        **({"features": model["features"]} if "features" in model else {}),
        "data": data,
        "timings": timings,
        "versions": library_versions(),
        **(extra or {}),
    }


def data_info(
    dataset: Dataset, result: ExtractionResult, usable: Usable, split: dict[str, Any]
) -> dict[str, Any]:
    """metrics.json's ``data`` section: where the images came from, how many were used, and the
    split (``split_`` without its list of files)."""
    return {
        "source": str(dataset.root),
        "kind": dataset.kind,
        "n_images": len(dataset.samples),
        "n_used": int(result.ok.sum()),
        "n_skipped": len(usable.skipped),
        "split": {k: v for k, v in split.items() if k != "files"},
    }


def extraction_info(result: ExtractionResult) -> dict[str, Any]:
    return {
        "engine": result.engine,
        "n_extracted": result.n_extracted,
        "n_cached": result.n_cached,
        "n_damaged_cache_entries": result.n_damaged_cache,
        "seconds": result.seconds,
    }


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def head_summary(info: dict[str, Any]) -> str:
    keep = {k: v for k, v in info.items() if k in ("C", "k", "best_epoch")}
    return ", ".join(f"{k}={v}" for k, v in keep.items())


class Stopwatch:
    """``with clock("extract"): ...`` adds the block's seconds to ``clock.timings["extract"]``."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}

    def __call__(self, stage: str) -> _Lap:
        return _Lap(self.timings, stage)


class _Lap:
    def __init__(self, timings: dict[str, float], stage: str) -> None:
        self.timings, self.stage = timings, stage

    def __enter__(self) -> None:
        self.t = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timings[self.stage] = self.timings.get(self.stage, 0.0) + time.perf_counter() - self.t
