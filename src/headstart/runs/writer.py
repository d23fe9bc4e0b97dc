"""``RunWriter``: the one owner of a run folder's files.

``ImageClassifier.fit`` and ``evaluate`` compute; they hand what they computed to a RunWriter,
which writes each file once, atomically (through ``headstart.core.io``):

- ``model.safetensors`` (through the estimator's ``save``), written FIRST, so a failing plot or
  report never costs a trained model;
- ``split.csv``, ``skipped.csv``, ``test_predictions.csv``, ``test_probabilities.npy``,
  ``duplicate_groups.csv`` (quick data check), ``excluded.csv`` (``exclude``);
- ``confusion_matrix.png``, then ``map.csv``/``map.json`` (``reporting.run_report.save_map``)
  and ``report.html`` (``reporting.run_report.build_report``, from the files above), a failure
  of either logged as a warning;
- ``metrics.json`` LAST, with the seconds spent saving and drawing;
- ``log.txt``: every line the run logged, from any layer (``logging`` under ``headstart``): while
  the writer is open (``with RunWriter(...) as writer``) it attaches the console and ``log.txt``
  handlers (``headstart.core.logs.log_run``) with a filter that passes rank 0's lines only;
- ``finetune.json`` (fine-tuning): the data and parameters, written before training starts so
  ``ImageClassifier.resume`` can continue a killed run.

The fine-tuning loop (``headstart.training``) writes ``history.csv``, ``checkpoints/`` and
``tensorboard/`` itself, through ``headstart.core.io``, after every epoch: they must exist while
training runs, for a resume after a kill.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from headstart.core.errors import ParameterError
from headstart.core.folders import owner_alive, recover, staging_folder, staging_folders, swap_in
from headstart.core.io import clean_stale_temporaries, write_bytes, write_json, write_rows
from headstart.core.logs import RunFileHandler, log_run
from headstart.data.discovery import Dataset, Sample
from headstart.doctor import CheckReport
from headstart.reporting.plots import confusion_title, write_confusion_matrix
from headstart.reporting.run_report import (
    MAP_CSV,
    MAP_JSON,
    PREDICTIONS_CSV,
    PROBABILITIES_NPY,
    build_report,
    save_map,
)
from headstart.training.distributed import RankZeroFilter
from headstart.training.loop import CHECKPOINT_DIR, HISTORY_FILE, TENSORBOARD_DIR

MODEL_FILE = "model.safetensors"
RUN_CONFIG = "finetune.json"
# Files of one run that another run in the same folder does not rewrite (a new run removes them,
# so the report never mixes two runs): fine-tuning's, and those written only when there is data.
STALE_FILES = (
    RUN_CONFIG,
    HISTORY_FILE,
    CHECKPOINT_DIR,
    TENSORBOARD_DIR,
    "duplicate_groups.csv",
    "excluded.csv",
    "corrections_applied.csv",
)
logger = logging.getLogger(__name__)


@dataclass
class Predictions:
    """The evaluated images: paths, true class indices and probabilities (one row each)."""

    paths: list[str]
    y: np.ndarray
    proba: np.ndarray
    features: np.ndarray | None = None  # for the report's feature map


@dataclass
class ReportSettings:
    """How the report's feature map is made: ``map_method`` tsne, pca or none."""

    map_method: str = "tsne"
    seed: int = 0
    cache_dir: Path | None = None


@dataclass
class TrainingRun:
    """What ``fit`` hands the writer."""

    metrics: dict[str, Any]
    dataset: Dataset
    split_rows: list[list[str]]  # path (relative to the data root), label, split
    splits: list[str]  # index-aligned with ``checks.samples``
    skipped: list[tuple[str, str, str]]
    test: Predictions
    started: float  # time.perf_counter() when fit began
    checks: CheckReport | None = None
    excluded: list[Sample] = field(default_factory=list)


class RunWriter:
    """Writes a run folder (``run_dir``; None: nothing is written, lines are only printed).

    Use it as a context manager for the run's duration: inside, every ``headstart`` log line (of
    any layer) is printed (when ``verbose``) and kept in ``log.txt``. Calling the writer with a
    message logs it.

    ``staged`` (training): the run is written into a staging folder beside ``final_dir`` and
    swapped in whole by :meth:`commit` (``core.folders``), so a failed or killed run leaves the
    earlier run as it was, resumable state included. ``resume``: continue in the staging folder
    a killed run left (where it had one), else in a staged copy of ``final_dir``.
    """

    def __init__(
        self, run_dir: str | Path | None, verbose: bool = True, staged: bool = False, resume: bool = False
    ) -> None:
        self.final_dir = Path(run_dir).expanduser() if run_dir is not None else None
        self.run_dir = self.final_dir
        self.verbose = verbose
        if self.final_dir is not None and staged:
            recover(self.final_dir)
            sweep_failed_runs(self.final_dir)
            self.run_dir = resumed_staging(self.final_dir) if resume else staging_folder(self.final_dir)
        if self.run_dir is not None:
            clean_stale_temporaries(self.run_dir)
        self._logging = ExitStack()
        self._file: RunFileHandler | None = None

    def __enter__(self) -> RunWriter:
        self._file = self._logging.enter_context(log_run(self.run_dir, self.verbose, [RankZeroFilter()]))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._logging.close()

    def log(self, message: str) -> None:
        """One line of the run: printed (when verbose) and kept in ``log.txt``, while open."""
        logger.info(message)

    def commit(self) -> None:
        """A staged run becomes ``final_dir``, whole (nothing to do for an unstaged one)."""
        if self.run_dir is None or self.final_dir is None or self.run_dir == self.final_dir:
            return
        swap_in(self.run_dir, self.final_dir)
        self.run_dir = self.final_dir
        if self._file is not None:  # the run's later lines go to its final log.txt
            self._file.path = self.final_dir / self._file.path.name

    def shown(self, path: Path) -> Path:
        """``path`` as it will be named once the run is committed (for messages)."""
        if self.run_dir is None or self.final_dir is None or not path.is_relative_to(self.run_dir):
            return path
        return self.final_dir / path.relative_to(self.run_dir)

    def remove_stale_files(self) -> None:
        """Files an earlier run left in this folder that this run will not write again
        (``STALE_FILES``): removed at the start of a new (not resumed) run."""
        if self.run_dir is None:
            return
        for name in STALE_FILES:
            path = self.run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink(missing_ok=True)

    def __call__(self, message: str) -> None:
        self.log(message)

    def path(self, name: str) -> Path:
        assert self.run_dir is not None, "this RunWriter writes no files (run_dir is None)"
        return self.run_dir / name

    # ------------------------------------------------------------------ fine-tuning's config

    def write_run_config(self, data_root: str | Path, params: dict[str, Any]) -> None:
        """``finetune.json``: what ``ImageClassifier.resume`` needs (``params`` JSON-able)."""
        if self.run_dir is not None:
            write_json(self.path(RUN_CONFIG), {"data": str(data_root), "params": params})

    # ------------------------------------------------------------------ train

    def write_training_run(
        self, run: TrainingRun, save_model: Callable[[Path], Path], report: ReportSettings
    ) -> None:
        """Every file of a training run, the model first and ``metrics.json`` last.

        Sets ``timings`` ``save``, ``report`` and ``total`` in ``run.metrics``.
        """
        timings = run.metrics["timings"]
        if self.run_dir is None:
            timings["total"] = time.perf_counter() - run.started
            return
        t = time.perf_counter()
        save_model(self.path(MODEL_FILE))
        write_rows(self.path("split.csv"), ["path", "label", "split"], run.split_rows)
        self._write_skipped(run.skipped)
        self._write_predictions(run.test, run.metrics["classes"])
        self._write_data_checks(run)
        self._write_confusion_matrix(run.metrics, confusion_title(run.metrics))
        timings["save"] = time.perf_counter() - t
        timings["report"] = self._write_report(run.metrics, run.test, report)
        timings["total"] = time.perf_counter() - run.started
        write_json(self.path("metrics.json"), run.metrics)
        self.commit()
        self.log(f"done in {timings['total']:.1f}s: {self.path(MODEL_FILE)}, {self.path('metrics.json')}")

    # ------------------------------------------------------------------ evaluate

    def write_evaluation(
        self,
        metrics: dict[str, Any],
        skipped: Sequence[tuple[str, str, str]],
        test: Predictions,
        report: ReportSettings,
    ) -> None:
        """``evaluate``'s files: metrics, skipped files, predictions, confusion matrix, report."""
        if self.run_dir is None:
            return
        write_json(self.path("metrics.json"), metrics)
        self._write_skipped(skipped)
        self._write_predictions(test, metrics["classes"])
        self._write_confusion_matrix(metrics, confusion_title(metrics))
        self._write_report(metrics, test, report)

    # ------------------------------------------------------------------ the files

    def _write_skipped(self, skipped: Sequence[tuple[str, str, str]]) -> None:
        write_rows(self.path("skipped.csv"), ["path", "reason", "stage"], skipped)

    def _write_predictions(self, test: Predictions, classes: Sequence[str]) -> None:
        """Absolute paths (``headstart report`` may run from elsewhere) and the full
        probabilities (float32 .npy, one row per CSV row, columns in ``classes`` order)."""
        rows = [
            [os.path.abspath(p), classes[int(t)], classes[int(pr.argmax())], f"{pr.max():.4f}"]
            for p, t, pr in zip(test.paths, test.y, test.proba)
        ]
        write_rows(self.path(PREDICTIONS_CSV), ["path", "label", "predicted", "probability"], rows)
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(test.proba, dtype=np.float32), allow_pickle=False)
        write_bytes(self.path(PROBABILITIES_NPY), buffer.getvalue())

    def _write_data_checks(self, run: TrainingRun) -> None:
        """``duplicate_groups.csv`` (each group member, its final split, whether the group was
        kept on one side of the split) and ``excluded.csv`` (what ``exclude`` left out)."""
        if run.checks is not None:
            merged = set((run.metrics.get("data_checks") or {}).get("groups_merged_into_one_split", []))
            write_rows(
                self.path("duplicate_groups.csv"),
                ["group", "kind", "path", "label", "split", "merged", "conflicting_labels", "across_splits"],
                duplicate_group_rows(run.checks, run.splits, merged, run.dataset.relative),
            )
        if run.excluded:
            write_rows(
                self.path("excluded.csv"),
                ["path", "label"],
                [[run.dataset.relative(s.path), s.label] for s in run.excluded],
            )

    def _write_confusion_matrix(self, metrics: dict[str, Any], title: str) -> None:
        path = self.path("confusion_matrix.png")
        self._guarded(
            path.name,
            lambda: write_confusion_matrix(metrics["confusion_matrix"], metrics["classes"], path, title),
        )

    def _write_report(self, metrics: dict[str, Any], test: Predictions, settings: ReportSettings) -> float:
        """The feature map and ``report.html``; returns the seconds spent."""
        t0 = time.perf_counter()

        def draw() -> None:
            self._write_map(metrics["classes"], test, settings)
            path = build_report(self.path("."), metrics)
            size = path.stat().st_size / 1e6
            self.log(f"report: {self.shown(path)} ({size:.1f} MB, {time.perf_counter() - t0:.1f}s)")

        self._guarded("report", draw, f"; try `headstart report {self.final_dir}`")
        return time.perf_counter() - t0

    def _write_map(self, classes: Sequence[str], test: Predictions, settings: ReportSettings) -> None:
        if settings.map_method == "none" or test.features is None:
            for name in (MAP_CSV, MAP_JSON):  # a map of an earlier run in this folder
                self.path(name).unlink(missing_ok=True)
            return
        labels = [classes[int(t)] for t in test.y]
        info = save_map(
            self.path("."),
            test.features,
            test.paths,
            labels,
            ["test"] * len(labels),
            settings.map_method,
            "test",
            settings.seed,
            settings.cache_dir,
        )
        self.log(
            f"feature map: {info['method']} of {info['n']} test images in {info['seconds']:.1f}s"
            + (" (cached)" if info["from_cache"] else "")
        )

    def _guarded(self, what: str, draw: Callable[[], object], hint: str = "") -> None:
        """Figures and pages never cost the run: a failure is a warning (traceback in log.txt)."""
        try:
            draw()
        except Exception as e:  # noqa: BLE001 - any drawing error must leave the saved model alone
            # the traceback goes to log.txt only: the console handler prints the message
            logger.info(
                f"warning: the {what} could not be written ({type(e).__name__}: {e}){hint}", exc_info=True
            )


def duplicate_group_rows(
    checks: CheckReport, splits: Sequence[str], merged: set[int], relative: Callable[[str], str]
) -> list[list[object]]:
    """One row per member of each duplicate group (groups numbered from 1, as in metrics.json)."""
    rows = []
    for n, group in enumerate(checks.groups, start=1):
        conflict = len({checks.samples[i].label for i in group.members}) > 1
        across = len({splits[i] for i in group.members}) > 1
        for i in group.members:
            sample = checks.samples[i]
            rows.append(
                [
                    n,
                    group.kind,
                    relative(sample.path),
                    sample.label,
                    splits[i],
                    "yes" if n in merged else "no",
                    "yes" if conflict else "no",
                    "yes" if across else "no",
                ]
            )
    return rows


def resumable(folder: Path) -> bool:
    """Whether ``folder`` holds a fine-tuning run that can continue (config and a checkpoint)."""
    return (folder / RUN_CONFIG).is_file() and (folder / CHECKPOINT_DIR / "last.pt").is_file()


def resumable_folder(run_dir: Path) -> Path:
    """Where a fine-tuning run of ``run_dir`` can be resumed from: the newest staging folder a
    killed run left, else ``run_dir`` itself."""
    for staging in staging_folders(run_dir):
        if not owner_alive(staging) and resumable(staging):
            return staging
    return run_dir


def sweep_failed_runs(run_dir: Path) -> None:
    """Staging folders of runs that ended without committing and cannot be resumed: removed."""
    for staging in staging_folders(run_dir):
        if not owner_alive(staging) and not resumable(staging):
            shutil.rmtree(staging, ignore_errors=True)


def resumed_staging(run_dir: Path) -> Path:
    """The staging folder a resume continues in: a killed run's own, or a new one holding a
    copy of ``run_dir`` (so a failed resume leaves ``run_dir`` as it was)."""
    source = resumable_folder(run_dir)
    if source != run_dir:
        return source
    staging = staging_folder(run_dir)
    shutil.copytree(run_dir, staging, dirs_exist_ok=True, symlinks=True)
    return staging


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """``finetune.json`` of a fine-tuning run: ``{"data": DATA_ROOT, "params": {...}}``."""
    path = resumable_folder(Path(run_dir).expanduser()) / RUN_CONFIG
    if not path.is_file():
        raise ParameterError(
            "run_dir",
            f"{path.parent} holds no fine-tuning run to resume ({RUN_CONFIG} is missing): give the run "
            "folder of a fine-tuning run",
        )
    return json.loads(path.read_text(encoding="utf-8"))
