"""``ImageClassifier``: the scikit-learn-style front door to feature-extraction transfer learning.

clf = ImageClassifier().fit("photos/", out_dir="runs/photos")
clf.predict(["new.jpg"])
headstart.load("runs/photos/model.safetensors").predict_top_k(["new.jpg"], k=3)
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.core.io import RunLog, summarize_skips, write_json, write_rows
from headstart.core.progress import ConsoleProgress, NullProgress
from headstart.data.discovery import Dataset, Sample, discover, expand_paths
from headstart.data.splits import assign_splits
from headstart.evaluation.metrics import classification_metrics, plot_confusion_matrix
from headstart.features.cache import FeatureCache, default_cache_dir
from headstart.features.extractor import ExtractionResult, FeatureExtractor
from headstart.models.backbones import DEFAULT_BACKBONE, Backbone, backbone_from_state, create_backbone
from headstart.models.bundle import BUNDLE_SUFFIX, library_versions, load_bundle, save_bundle
from headstart.models.heads import make_head, restore_head

STRATEGY = "feature-extraction"


class ImageClassifier:
    """Pretrained backbone + cached bottleneck features + a small head.

    Parameters are plain values set in ``__init__`` (as in scikit-learn); fitted state ends in
    an underscore. ``head`` is ``logistic`` (default), ``mlp`` or ``knn``.
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        weights: str | Path | None = None,
        head: str = "logistic",
        head_params: dict[str, Any] | None = None,
        seed: int = 0,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        labels_from: str = "auto",
        top_k: int = 3,
        engine: str = "auto",
        batch_size: int = 8,
        workers: int | None = None,
        cache_dir: str | Path | None = None,
        verbose: bool = True,
        exclude: str | Path | Sequence[str] | None = None,
        check_data: bool = True,
        report_map: str = "tsne",
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.head = head
        self.head_params = head_params
        self.seed = seed
        self.split = tuple(split)
        self.labels_from = labels_from
        self.top_k = top_k
        self.engine = engine
        self.batch_size = batch_size
        self.workers = workers
        self.cache_dir = cache_dir
        self.verbose = verbose
        self.exclude = exclude
        self.check_data = check_data
        self.report_map = report_map  # map in RUN_DIR/report.html: tsne, pca or none

    # ------------------------------------------------------------------ plumbing

    def _extractor(self, backbone: Backbone) -> FeatureExtractor:
        progress = ConsoleProgress() if self.verbose else NullProgress()
        return FeatureExtractor(
            backbone,
            cache=FeatureCache(self.cache_dir),
            engine=self.engine,
            batch_size=self.batch_size,
            workers=self.workers,
            progress=progress,
        )

    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise HeadstartError("this classifier is not fitted yet: call fit(DATA) or headstart.load(MODEL)")

    def _features(self, paths: Sequence[str]) -> ExtractionResult:
        return self._extractor(self.backbone_).extract(paths)

    # ------------------------------------------------------------------ training

    def fit(self, data: str | Path | Dataset, out_dir: str | Path | None = None) -> ImageClassifier:
        """Discover images, extract (cached) features, split, fit the head, evaluate on test.

        With ``out_dir`` the run folder gets the model bundle, ``metrics.json``, the split,
        the skipped files, the confusion matrix and a log.
        """
        t_all = time.perf_counter()
        timings: dict[str, float] = {}
        run_dir = Path(out_dir) if out_dir is not None else None
        log = RunLog(run_dir, self.verbose)

        t = time.perf_counter()
        dataset = data if isinstance(data, Dataset) else discover(data, self.labels_from)
        timings["discover"] = time.perf_counter() - t
        log(
            f"found {len(dataset.samples)} images in {len(dataset.classes)} classes ({dataset.kind}) in {dataset.root}"
        )
        excluded: list[Sample] = []
        if self.exclude is not None:
            from headstart.data.exclusions import exclude_samples, read_exclude_list

            entries = (
                read_exclude_list(self.exclude)
                if isinstance(self.exclude, (str, Path))
                else list(self.exclude)
            )
            dataset, excluded, unmatched = exclude_samples(dataset, entries)
            log(
                f"excluded {len(excluded)} image(s) listed in --exclude"
                + (f"; {len(unmatched)} listed path(s) matched no image" if unmatched else "")
            )

        t = time.perf_counter()
        self.backbone_ = create_backbone(self.backbone, self.weights, FeatureCache(self.cache_dir).root)
        timings["backbone"] = time.perf_counter() - t

        t = time.perf_counter()
        result = self._features(dataset.paths)
        timings["extract"] = time.perf_counter() - t
        timings["extract_images_per_s"] = result.images_per_s
        timings["extract_new_images_per_s"] = result.new_images_per_s
        log(
            f"features: {result.n_extracted} extracted, {result.n_cached} from cache "
            f"({result.images_per_s:.0f} images/s, engine {result.engine})"
        )

        skipped = [(p, r, "discovery") for p, r in dataset.ignored]
        skipped += [(dataset.samples[i].path, r, "decode") for i, r in result.errors.items()]
        ok = result.ok
        samples = [s for s, good in zip(dataset.samples, ok) if good]
        features = result.features[ok]
        if skipped:
            log(summarize_skips(skipped) + (f" (listed in {run_dir / 'skipped.csv'})" if run_dir else ""))
        if not samples:
            raise HeadstartError(f"none of the {len(dataset.samples)} images in {dataset.root} could be read")
        classes = sorted({s.label for s in samples})
        if len(classes) < 2:
            raise HeadstartError(
                f"only one class ('{classes[0]}') found in {dataset.root}: a classifier needs at least two "
                "class folders (or labels)"
            )

        checks = None
        if self.check_data:
            from headstart.doctor import quick_check

            t = time.perf_counter()
            ok_hashes = [h for h, good in zip(result.hashes, ok) if good]
            checks = quick_check(samples, features, ok_hashes, [(p, r) for p, r, _ in skipped])
            timings["data_check"] = time.perf_counter() - t
            for line in checks.summary_lines():
                log(line)

        t = time.perf_counter()
        groups = checks.group_indices if checks else None
        splits, split_method = assign_splits(samples, self.split, self.seed, groups)
        timings["split"] = time.perf_counter() - t
        split_arr = np.array(splits)
        y = np.array([classes.index(s.label) for s in samples])
        for name in ("train", "val"):
            if not (split_arr == name).any():
                raise HeadstartError(f"the {name} split is empty: give more images or change --split")

        t = time.perf_counter()
        head = make_head(self.head, **(self.head_params or {}))
        if self.head == "mlp" and "seed" not in (self.head_params or {}):
            head.seed = self.seed  # type: ignore[attr-defined]
        tr, va = split_arr == "train", split_arr == "val"
        fit_info = head.fit(features[tr], y[tr], features[va], y[va], len(classes))
        timings["fit_head"] = time.perf_counter() - t
        self.head_, self.classes_ = head, classes

        t = time.perf_counter()
        eval_split = "test" if (split_arr == "test").any() else "val"
        te = split_arr == eval_split
        proba = self._second_stage(samples, features, split_arr, y, eval_split, run_dir, log, timings)
        if proba is None:
            proba = head.predict_proba(features[te])
        scores = classification_metrics(y[te], proba, classes, self.top_k)
        timings["evaluate"] = time.perf_counter() - t

        counts = {
            name: dict(sorted(Counter(s.label for s, g in zip(samples, splits) if g == name).items()))
            for name in ("train", "val", "test")
        }
        self.split_ = {
            "method": split_method,
            "seed": self.seed,
            "fractions": list(self.split),
            "root": str(dataset.root),
            "counts": counts,
            "files": [[dataset.relative(s.path), s.label, g] for s, g in zip(samples, splits)],
        }
        self.extraction_ = result
        self.dataset_ = dataset
        self.test_ = {
            "paths": [s.path for s, m in zip(samples, te) if m],
            "y": y[te],
            "proba": proba,
        }
        self.metrics_ = self._metrics(dataset, scores, eval_split, fit_info, result, skipped, timings)
        self.checks_ = checks
        if checks is not None:
            from headstart.doctor import check_summary

            plain, _ = assign_splits(samples, self.split, self.seed)
            self.metrics_["data_checks"] = check_summary(checks, plain, splits, excluded)
        log(
            f"{eval_split} accuracy {scores['accuracy']:.4f} on {scores['n']} images "
            f"(top-{scores['top_k']} {scores['top_k_accuracy']:.4f}); head {self.head} {self._head_summary(fit_info)}"
        )

        if run_dir is not None:
            t = time.perf_counter()
            self._write_run(run_dir, skipped, log)
            if checks is not None or excluded:
                from headstart.doctor import write_run_checks

                write_run_checks(run_dir, dataset, checks, splits, self.metrics_.get("data_checks"), excluded)
            timings["save"] = time.perf_counter() - t
            timings["report"] = self._write_report(run_dir, self.test_, features[te], log)
        timings["total"] = time.perf_counter() - t_all
        self.metrics_["timings"] = timings
        if run_dir is not None:
            write_json(run_dir / "metrics.json", self.metrics_)
            log(
                f"done in {timings['total']:.1f}s: {run_dir / ('model' + BUNDLE_SUFFIX)}, {run_dir / 'metrics.json'}"
            )
        return self

    def _second_stage(
        self, samples, features, split_arr, y, eval_split, run_dir, log, timings
    ) -> np.ndarray | None:
        """Hook after the head is fitted on features: fine-tuning (training.py) replaces the
        backbone and head and returns its own ``eval_split`` probabilities; feature extraction: None."""
        return None

    def _strategy(self) -> str:
        return getattr(self, "meta_", {}).get("strategy", STRATEGY)

    @staticmethod
    def _head_summary(info: dict[str, Any]) -> str:
        keep = {k: v for k, v in info.items() if k in ("C", "k", "best_epoch")}
        return ", ".join(f"{k}={v}" for k, v in keep.items())

    def _metrics(self, dataset, scores, eval_split, fit_info, result, skipped, timings) -> dict[str, Any]:
        summary = {k: scores[k] for k in ("accuracy", "n", "top_k", "top_k_accuracy", "macro_f1")}
        return {
            eval_split: summary,
            "evaluated_on": eval_split,
            "classes": self.classes_,
            "per_class": scores["per_class"],
            "confusion_matrix": scores["confusion_matrix"],
            "backbone": self.backbone_.describe(),
            "strategy": self._strategy(),
            "head": {"name": self.head, "params": self.head_.params(), "fit": fit_info},
            "data": {
                "source": str(dataset.root),
                "kind": dataset.kind,
                "n_images": len(dataset.samples),
                "n_used": int(result.ok.sum()),
                "n_skipped": len(skipped),
                "split": {k: v for k, v in self.split_.items() if k != "files"},
            },
            "extraction": {
                "engine": result.engine,
                "n_extracted": result.n_extracted,
                "n_cached": result.n_cached,
                "n_damaged_cache_entries": result.n_damaged_cache,
                "seconds": result.seconds,
            },
            "timings": timings,
            "versions": library_versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def _write_run(self, run_dir: Path, skipped: list[tuple[str, str, str]], log: RunLog) -> None:
        write_rows(run_dir / "split.csv", ["path", "label", "split"], self.split_["files"])
        write_rows(run_dir / "skipped.csv", ["path", "reason", "stage"], skipped)
        write_rows(
            run_dir / "test_predictions.csv",
            ["path", "label", "predicted", "probability"],
            [
                [p, self.classes_[t], self.classes_[int(pr.argmax())], f"{pr.max():.4f}"]
                for p, t, pr in zip(self.test_["paths"], self.test_["y"], self.test_["proba"])
            ],
        )
        plot_confusion_matrix(
            self.metrics_["confusion_matrix"],
            self.classes_,
            run_dir / "confusion_matrix.png",
            f"Confusion matrix ({self.metrics_['evaluated_on']}, accuracy "
            f"{self.metrics_[self.metrics_['evaluated_on']]['accuracy']:.3f})",
        )
        self.save(run_dir / f"model{BUNDLE_SUFFIX}")

    def _write_report(
        self,
        run_dir: Path,
        test: dict[str, Any],
        features: np.ndarray,
        log: RunLog,
        metrics: dict[str, Any] | None = None,
    ) -> float:
        """RUN_DIR/report.html (see headstart.report); returns the seconds it took."""
        from headstart.reporting.run_report import write_run_report

        return write_run_report(
            run_dir,
            metrics or self.metrics_,
            test,
            features,
            self.report_map,
            self.seed,
            Path(self.cache_dir or default_cache_dir()),
            log,
        )

    # ------------------------------------------------------------------ inference

    def predict_proba(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Class probabilities, one row per path (NaN rows for files that cannot be read)."""
        self._check_fitted()
        result = self._features([str(p) for p in paths])
        proba = np.full((len(paths), len(self.classes_)), np.nan)
        ok = result.ok
        if ok.any():
            proba[ok] = self.head_.predict_proba(result.features[ok])
        self.last_errors_ = result.errors
        return proba

    def predict(self, paths: Sequence[str | Path]) -> list[str | None]:
        proba = self.predict_proba(paths)
        return [None if np.isnan(row).any() else self.classes_[int(row.argmax())] for row in proba]

    def predict_top_k(self, paths: Sequence[str | Path], k: int = 3) -> list[dict[str, Any]]:
        """``[{"path", "predictions": [{"label", "probability"}...]}]``; folders are expanded."""
        files, missing = expand_paths(paths)
        proba = self.predict_proba(files) if files else np.zeros((0, len(self.classes_)))
        out: list[dict[str, Any]] = []
        k = min(k, len(self.classes_))
        for i, (path, row) in enumerate(zip(files, proba)):
            if i in self.last_errors_:
                out.append({"path": path, "predictions": [], "error": self.last_errors_[i]})
                continue
            top = np.argsort(-row)[:k]
            out.append(
                {
                    "path": path,
                    "predictions": [{"label": self.classes_[j], "probability": float(row[j])} for j in top],
                }
            )
        out += [{"path": p, "predictions": [], "error": r} for p, r in missing]
        return out

    def evaluate(
        self, data: str | Path | Dataset, out_dir: str | Path | None = None, split: str = "auto"
    ) -> dict[str, Any]:
        """Metrics on labelled images.

        On the data the model was trained on, ``split="auto"`` uses the saved test split (so
        training images never count); on any other data, every image.
        """
        self._check_fitted()
        t0 = time.perf_counter()
        run_dir = Path(out_dir) if out_dir is not None else None
        log = RunLog(run_dir, self.verbose)
        dataset = data if isinstance(data, Dataset) else discover(data, self.labels_from)
        samples = dataset.samples
        used = "all"
        saved = getattr(self, "split_", None) or {}
        same_data = saved.get("root") and Path(saved["root"]) == dataset.root
        if split in ("auto", "test", "val", "train") and same_data:
            wanted = "test" if split == "auto" else split
            chosen = {f for f, _label, g in saved.get("files", []) if g == wanted}
            if chosen:
                samples = [s for s in samples if dataset.relative(s.path) in chosen]
                used = f"saved {wanted} split"
        skipped = [(p, r, "discovery") for p, r in dataset.ignored]
        known = [s for s in samples if s.label in self.classes_]
        skipped += [
            (s.path, f"label '{s.label}' unknown to the model", "labels")
            for s in samples
            if s.label not in self.classes_
        ]
        if not known:
            raise HeadstartError(
                f"no images in {dataset.root} carry one of the model's classes ({', '.join(self.classes_)})"
            )
        result = self._features([s.path for s in known])
        skipped += [(known[i].path, r, "decode") for i, r in result.errors.items()]
        ok = result.ok
        y = np.array([self.classes_.index(s.label) for s, good in zip(known, ok) if good])
        proba = self.head_.predict_proba(result.features[ok])
        scores = classification_metrics(y, proba, self.classes_, self.top_k)
        summary = {k: scores[k] for k in ("accuracy", "n", "top_k", "top_k_accuracy", "macro_f1")}
        metrics = {
            "test": summary,
            "evaluated_on": used,
            "classes": self.classes_,
            "per_class": scores["per_class"],
            "confusion_matrix": scores["confusion_matrix"],
            "backbone": self.backbone_.describe(),
            "strategy": self._strategy(),
            "head": {"name": self.head, "params": self.head_.params()},
            "data": {"source": str(dataset.root), "kind": dataset.kind, "n_skipped": len(skipped)},
            "timings": {
                "extract": result.seconds.get("total", 0.0),
                "extract_images_per_s": result.images_per_s,
                "total": time.perf_counter() - t0,
            },
            "versions": library_versions(),
        }
        if skipped:
            log(summarize_skips(skipped))
        log(
            f"accuracy {summary['accuracy']:.4f} on {summary['n']} images ({used}); top-{summary['top_k']} {summary['top_k_accuracy']:.4f}"
        )
        if run_dir is not None:
            write_json(run_dir / "metrics.json", metrics)
            write_rows(run_dir / "skipped.csv", ["path", "reason", "stage"], skipped)
            plot_confusion_matrix(scores["confusion_matrix"], self.classes_, run_dir / "confusion_matrix.png")
            test = {"paths": [s.path for s, good in zip(known, ok) if good], "y": y, "proba": proba}
            self._write_report(run_dir, test, result.features[ok], log, metrics)
        return metrics

    def score(self, data: str | Path | Dataset) -> float:
        """Accuracy on ``data`` (scikit-learn's ``score``)."""
        return float(self.evaluate(data)["test"]["accuracy"])

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Write the one-file bundle (safetensors; weights + metadata, no pickle)."""
        self._check_fitted()
        meta = {
            "classes": self.classes_,
            "strategy": self._strategy(),
            "backbone": self.backbone_.describe(),
            "head": {"name": self.head, "params": self.head_.params()},
            "settings": {"seed": self.seed, "split": list(self.split), "top_k": self.top_k},
            "split": getattr(self, "split_", None),
            "metrics": {
                k: v
                for k, v in getattr(self, "metrics_", {}).items()
                if k in ("test", "val", "evaluated_on", "per_class", "confusion_matrix")
            },
            "versions": library_versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        state = self.backbone_.state_arrays()
        head_arrays = {k: np.asarray(v) for k, v in self.head_.arrays().items()}
        return save_bundle(path, meta, state, head_arrays)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> ImageClassifier:
        meta, state, head_arrays = load_bundle(path)
        b = meta["backbone"]
        settings = meta.get("settings", {})
        clf = cls(
            backbone=b["name"],
            head=meta["head"]["name"],
            seed=settings.get("seed", 0),
            split=tuple(settings.get("split", (0.8, 0.1, 0.1))),
            top_k=settings.get("top_k", 3),
            **overrides,
        )
        try:
            clf.backbone_ = backbone_from_state(b["name"], state, b)
            clf.head_ = restore_head(meta["head"]["name"], head_arrays, meta["head"]["params"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise HeadstartError(
                f"model file {path} is damaged or incomplete ({type(e).__name__}: {str(e)[:100]})"
            ) from e
        clf.classes_ = list(meta["classes"])
        clf.split_ = meta.get("split") or {}
        clf.metrics_ = meta.get("metrics", {})
        clf.meta_ = meta
        return clf


def load(path: str | Path, **overrides: Any) -> ImageClassifier:
    """Load a saved bundle (a ``model.safetensors`` file or the run folder holding it)."""
    return ImageClassifier.load(path, **overrides)


__all__ = ["ImageClassifier", "load", "expand_paths", "Sample"]
