"""``headstart sort MODEL PHOTOS --out SORTED``: a folder of new photos, sorted into class folders.

Every image under PHOTOS (recursively) is placed in ``SORTED/<class>/`` (each of its labels'
folders for a multi-label model), or in ``SORTED/_unknown/`` when the model turns it down;
``SORTED/sorted.csv`` lists every placement and ``SORTED/skipped.csv`` the files that could not
be read. Rules:

- PHOTOS is only read. A placement is a hard link where the file system allows (no space used;
  a copy across devices), a copy, or a symbolic link (``mode``).
- A file's name in its class folder is its path under PHOTOS with the folders joined by ``__``
  (``2023/beach/IMG_1.jpg`` -> ``2023__beach__IMG_1.jpg``): two photos of the same name in
  different folders never meet, and the name is the same on every run whatever else is in PHOTOS
  (should two paths still flatten alike, the later one gets a short hash of its path).
- Every file is written under a temporary name and renamed into place, so a killed run leaves no
  half file; a re-run finds the placements already made (same file, or a link to it) and skips
  them, and features already extracted come from the feature cache: a killed run resumes. A
  placement a previous run listed in ``sorted.csv`` that this run no longer makes (the model
  changed its mind) is removed, so a photo is never in two class folders by accident.
- Under torchrun every process extracts its share of each batch (``features.sharding``); rank 0
  alone writes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from headstart.core.errors import ParameterError
from headstart.core.io import clean_stale_temporaries, read_rows, write_rows
from headstart.core.progress import NullProgress, ProgressSink
from headstart.data.discovery import expand_paths

SortMode = Literal["link", "copy", "symlink"]
UNKNOWN_FOLDER = "_unknown"
SORTED_CSV = "sorted.csv"
SKIPPED_CSV = "skipped.csv"
SORTED_COLUMNS = ("source", "label", "probability", "score", "destination", "top_class")
BATCH = 256  # images predicted, then placed, at a time: progress moves and a kill loses little
# (paths) -> predict_top_k's answers: {"path", "predictions", "labels", "unknown", "score"?, "error"?}
Predictor = Callable[[Sequence[str]], list[dict[str, Any]]]


@dataclass
class SortSummary:
    """What a sort did."""

    n_images: int = 0
    n_skipped: int = 0
    per_folder: Counter[str] = field(default_factory=Counter)
    placed: Counter[str] = field(default_factory=Counter)  # how: link, copy, symlink, kept, removed
    seconds: float = 0.0


def folder_name(label: str) -> str:
    """A class name as one folder name: no separators, never ``.``/``..`` or empty."""
    name = label.replace("/", "_").replace("\\", "_").replace(os.sep, "_").strip()
    return name if name.strip(".") else f"_{name}"


def flat_name(relative: str) -> str:
    """A path under PHOTOS as one file name (folders joined by ``__``)."""
    return "__".join(Path(relative).parts)


def check_folders(photos: Path, out: Path) -> None:
    """PHOTOS is a folder, and neither folder holds the other (PHOTOS is never written, and a
    re-run must not find the sorted copies as new photos)."""
    if not photos.is_dir():
        raise ParameterError("photos", f"{photos} is not a folder")
    a, b = os.path.realpath(photos), os.path.realpath(out)
    if a == b or b.startswith(a.rstrip(os.sep) + os.sep) or a.startswith(b.rstrip(os.sep) + os.sep):
        raise ParameterError("out", f"{out} and {photos} overlap: choose an output folder outside the photos")


def destination_names(files: Sequence[str], photos: Path) -> dict[str, str]:
    """Each source's file name in its class folders (``flat_name``, unique within the run)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for f in files:
        relative = os.path.relpath(f, photos)
        name = flat_name(relative)
        if name in taken:
            digest = hashlib.sha1(relative.encode("utf-8", "surrogateescape")).hexdigest()[:8]
            stem, suffix = os.path.splitext(name)
            name = f"{stem}__{digest}{suffix}"
        taken.add(name)
        names[f] = name
    return names


def placements(result: dict[str, Any]) -> list[tuple[str, float]]:
    """(label, probability) of each place an answered image goes: each accepted label, or
    ``_unknown`` (with the top probability) when it has none (turned down, or a multi-label
    model's image with no label above its threshold)."""
    proba = {p["label"]: float(p["probability"]) for p in result["predictions"]}
    top = float(result["predictions"][0]["probability"]) if result["predictions"] else float("nan")
    if result.get("unknown") or not result.get("labels"):
        return [(UNKNOWN_FOLDER, top)]
    return [(label, proba.get(label, top)) for label in result["labels"]]


def same_placement(source: str, destination: Path, mode: SortMode) -> bool:
    """Whether ``destination`` already is ``source`` as ``mode`` places it."""
    if mode == "symlink":
        return destination.is_symlink() and os.readlink(destination) == os.path.abspath(source)
    if destination.is_symlink() or not destination.is_file():
        return False
    if os.path.samefile(source, destination):
        return True
    a, b = os.stat(source), os.stat(destination)
    return mode == "copy" and a.st_size == b.st_size and int(a.st_mtime) == int(b.st_mtime)


def place(source: str, destination: Path, mode: SortMode) -> str:
    """Put ``source`` at ``destination`` (through a temporary name); how it was placed."""
    if same_placement(source, destination, mode):
        return "kept"
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    how: str = mode
    if mode == "symlink":
        os.symlink(os.path.abspath(source), tmp)
    elif mode == "link":
        try:
            os.link(source, tmp)
        except OSError:  # another device, or a file system without hard links
            shutil.copy2(source, tmp)
            how = "copy"
    else:
        shutil.copy2(source, tmp)
    os.replace(tmp, destination)
    return how


def remove_stale(out: Path, previous: list[dict[str, str]], kept: set[str]) -> int:
    """Remove what the previous run's ``sorted.csv`` placed and this run no longer does."""
    removed = 0
    root = os.path.realpath(out)
    for row in previous:
        dest = row.get("destination", "")
        if not dest or dest in kept:
            continue
        path = out / dest
        inside = os.path.realpath(path.parent).startswith(root + os.sep)
        if inside and (path.is_file() or path.is_symlink()):
            path.unlink()
            removed += 1
    return removed


@dataclass
class SortJob:
    """One ``sort``: where from, where to, how."""

    photos: Path
    out: Path
    mode: SortMode = "link"
    dry_run: bool = False
    writes: bool = True  # False on torchrun's ranks other than 0
    progress: ProgressSink = field(default_factory=NullProgress)


def sort_photos(predict: Predictor, classes: Sequence[str], job: SortJob) -> SortSummary:
    """Sort every image under ``job.photos`` into ``job.out`` (see the module's rules).

    Args:
        predict: the model's ``predict_top_k`` (with its reject option as saved).
        classes: the model's classes (each becomes a folder name).
        job: the folders and the mode.
    """
    check_folders(job.photos, job.out)
    folders = {c: folder_name(c) for c in classes}
    if UNKNOWN_FOLDER in folders.values():
        raise ParameterError("model", f"a class is named {UNKNOWN_FOLDER}, the folder of unknown images")
    started = time.perf_counter()
    files, missing = expand_paths([job.photos])
    names = destination_names(files, job.photos)
    previous = read_rows(job.out / SORTED_CSV) if job.writes else []
    if job.writes:  # a killed run's half-placed files (their process gone) go first
        clean_stale_temporaries(job.out, depth=1)
    rows: list[list[object]] = []
    skipped: list[list[str]] = [[p, reason] for p, reason in missing]
    summary = SortSummary(n_images=len(files))
    job.progress.start("sorting", len(files))
    for start in range(0, len(files), BATCH):
        batch = files[start : start + BATCH]
        for result in predict(batch):
            _sort_one(result, names, folders, job, rows, skipped, summary)
        job.progress.advance(len(batch))
    job.progress.finish()
    summary.n_skipped = len(skipped)
    if job.writes:
        if not job.dry_run:
            summary.placed["removed"] = remove_stale(job.out, previous, {str(r[4]) for r in rows})
        write_rows(job.out / SORTED_CSV, SORTED_COLUMNS, rows)
        write_rows(job.out / SKIPPED_CSV, ("path", "reason"), skipped)
    summary.seconds = time.perf_counter() - started
    return summary


def _sort_one(
    result: dict[str, Any],
    names: dict[str, str],
    folders: dict[str, str],
    job: SortJob,
    rows: list[list[object]],
    skipped: list[list[str]],
    summary: SortSummary,
) -> None:
    """One answered image: its rows, and (unless a dry run) its placements."""
    source = result["path"]
    if result.get("error"):
        skipped.append([source, str(result["error"])])
        return
    score = result.get("score")
    top_class = result["predictions"][0]["label"] if result["predictions"] else ""
    for label, probability in placements(result):
        folder = UNKNOWN_FOLDER if label == UNKNOWN_FOLDER else folders.get(label, folder_name(label))
        destination = f"{folder}/{names[source]}"
        score_cell = "" if score is None else f"{float(score):.6f}"
        rows.append([source, label, f"{probability:.6f}", score_cell, destination, top_class])
        summary.per_folder[folder] += 1
        if job.writes and not job.dry_run:
            summary.placed[place(source, job.out / destination, job.mode)] += 1
