"""Finding labelled images: class folders, a CSV, file-name labels, predefined split folders.

Everything here only reads: the user's files are never moved, renamed, copied or written.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from headstart.core.errors import HeadstartError, ParameterError
from headstart.core.io import unprotect_cell
from headstart.data.images import is_image_name

SPLIT_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "validation", "valid"),
    "test": ("test", "evaluation", "testing"),
}
FILENAME_LABEL = re.compile(r"^([^_]+)_.+")
PATH_COLUMNS = ("path", "filepath", "file_path", "file", "filename", "image", "image_path", "fname")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "y", "class_name", "tags")
LABEL_SEPARATOR = ";"  # between the labels of one image in a multi-label CSV


@dataclass(frozen=True)
class Sample:
    """One labelled image file."""

    path: str
    label: str
    split: str | None = None  # set when the data came with predefined splits
    # Multi-label data only (None otherwise): every label of the image, sorted; ``label`` is then
    # these joined by ``;`` (one name per label set, what single-label code and split.csv show).
    labels: tuple[str, ...] | None = None

    @property
    def label_set(self) -> tuple[str, ...]:
        """The image's labels: ``labels`` for multi-label data, else ``(label,)``."""
        return self.labels if self.labels is not None else (self.label,)


@dataclass
class Dataset:
    """Labelled image paths plus what discovery passed over and why."""

    root: Path
    samples: list[Sample]
    kind: str
    ignored: list[tuple[str, str]] = field(default_factory=list)
    multi_label: bool = False  # samples carry ``labels`` (several labels per image)

    @property
    def classes(self) -> list[str]:
        """Class names; for multi-label data every label any image carries."""
        if self.multi_label:
            return sorted({name for s in self.samples for name in s.label_set})
        return sorted({s.label for s in self.samples})

    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.samples]

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.samples]

    def relative(self, path: str) -> str:
        """``path`` relative to the data root (as given where it has none, e.g. another drive)."""
        try:
            return os.path.relpath(path, self.root)
        except ValueError:
            return path

    def class_counts(self) -> dict[str, int]:
        """Images per class, by class name."""
        return dict(sorted(Counter(self.labels).items()))


def _walk_images(top: Path, ignored: list[tuple[str, str]]) -> list[Path]:
    """All image files below ``top``, following links once, skipping hidden entries."""
    found: list[Path] = []
    seen: set[str] = set()

    def on_error(err: OSError) -> None:
        ignored.append((str(err.filename), f"folder unreadable: {err.strerror}"))

    top_real = os.path.realpath(top)
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True, onerror=on_error):
        real = os.path.realpath(dirpath)
        if real in seen or top_real.startswith(real.rstrip(os.sep) + os.sep):
            # visited already, or a link up to an ancestor (which would pull in other classes)
            ignored.append((dirpath, "symbolic-link loop (folder already visited)"))
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith("."):
                ignored.append((str(path), "hidden file"))
                continue
            if is_image_name(name):
                found.append(path)
            else:
                ignored.append((str(path), "not an image file name"))
    return found


def _split_dirs(root: Path) -> dict[str, Path]:
    subdirs = {p.name.lower(): p for p in _subdirs(root)}
    found = {}
    for split, names in SPLIT_NAMES.items():
        for name in names:
            if name in subdirs:
                found[split] = subdirs[name]
                break
    return found if "train" in found and len(found) >= 2 else {}


def _subdirs(root: Path) -> list[Path]:
    try:
        entries = sorted(root.iterdir())
    except OSError as e:
        raise HeadstartError(f"cannot read folder {root}: {e.strerror}") from e
    return [p for p in entries if p.is_dir() and not p.name.startswith(".")]


def _from_class_folders(root: Path, ignored: list, split: str | None) -> list[Sample]:
    samples = []
    for class_dir in _subdirs(root):
        for path in _walk_images(class_dir, ignored):
            samples.append(Sample(str(path), class_dir.name, split))
    try:
        loose = [p for p in root.iterdir() if p.is_file() and is_image_name(p.name)]
    except OSError:
        loose = []
    ignored.extend((str(p), "image not inside a class folder") for p in sorted(loose))
    return samples


def _from_file_names(root: Path, ignored: list, split: str | None) -> list[Sample]:
    samples = []
    for path in _walk_images(root, ignored):
        match = FILENAME_LABEL.match(path.stem)
        if match:
            samples.append(Sample(str(path), match.group(1), split))
        else:
            ignored.append((str(path), "file name has no 'LABEL_' prefix"))
    return samples


def _from_folder(root: Path, ignored: list, split: str | None, labels_from: str) -> list[Sample]:
    if labels_from == "folder":
        return _from_class_folders(root, ignored, split)
    if labels_from == "filename":
        return _from_file_names(root, ignored, split)
    with_images = [d for d in _subdirs(root) if _has_image(d)]
    if with_images:
        return _from_class_folders(root, ignored, split)
    return _from_file_names(root, ignored, split)


def _has_image(folder: Path) -> bool:
    for _dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(is_image_name(f) and not f.startswith(".") for f in filenames):
            return True
    return False


def _read_csv(path: Path) -> tuple[list[Sample], list[tuple[str, str]]]:
    ignored: list[tuple[str, str]] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise HeadstartError(f"cannot read CSV {path}: {e}") from e
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise HeadstartError(f"CSV {path} is empty: expected columns path,label")
    header = [c.strip().lower() for c in rows[0]]
    path_col = next((header.index(c) for c in PATH_COLUMNS if c in header), None)
    label_col = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
    split_col = header.index("split") if "split" in header else None
    if path_col is None or label_col is None:
        if len(header) >= 2 and is_image_name(rows[0][0]):
            path_col, label_col, body = 0, 1, rows  # no header row
        else:
            raise HeadstartError(
                f"CSV {path} needs a header with a path column and a label column "
                f"(found: {', '.join(rows[0])})"
            )
    else:
        body = rows[1:]
    samples = []
    for line_no, row in enumerate(body, start=2):
        if len(row) <= max(path_col, label_col) or not row[path_col].strip():
            ignored.append((f"{path}:{line_no}", "CSV row without path and label"))
            continue
        file = Path(unprotect_cell(row[path_col].strip()))
        file = file if file.is_absolute() else path.parent / file
        split = None
        if split_col is not None and len(row) > split_col and row[split_col].strip():
            split = _normal_split(row[split_col])
            if split is None:
                raise HeadstartError(
                    f"CSV {path} line {line_no}: unknown split {row[split_col].strip()!r} "
                    "(use train, val or test, or leave the split column out)"
                )
        samples.append(Sample(str(file), unprotect_cell(row[label_col].strip()), split))
    return samples, ignored


def _normal_split(name: str) -> str | None:
    name = name.strip().lower()
    for split, names in SPLIT_NAMES.items():
        if name in names:
            return split
    return None


def discover(source: str | Path, labels_from: str = "auto", multi_label: bool | None = None) -> Dataset:
    """Find labelled images under ``source``.

    ``labels_from``: ``auto`` (default), ``folder`` (class sub-folders), ``filename``
    (``9_1339.jpg`` is class 9) or ``csv`` (``source`` is a CSV of path,label).
    Predefined ``train``/``val``/``test`` folders (or their long names) are kept as given.
    ``multi_label``: a CSV's label cell holds labels separated by ``;`` (True), is one label as
    written (False), or None: multi-label when any row has more than one. True on folders gives
    each image its one label as a label set.
    """
    root = require_data_path(source)
    if root.is_file():
        if root.suffix.lower() != ".csv" and labels_from != "csv":
            raise HeadstartError(f"{root} is a file: give a folder of images or a CSV of path,label")
        samples, ignored = _read_csv(root)
        dataset = _as_multi_label(Dataset(root.parent.resolve(), samples, "csv", ignored), multi_label)
    else:
        ignored = []
        split_dirs = _split_dirs(root)
        if split_dirs:
            samples = []
            for split, folder in split_dirs.items():
                samples += _from_folder(folder, ignored, split, labels_from)
            kind = "split-folders"
        else:
            samples = _from_folder(root, ignored, None, labels_from)
            kind = "file-names" if samples and Path(samples[0].path).parent == root else "class-folders"
        dataset = Dataset(root.resolve(), samples, kind, ignored)
        if multi_label:
            dataset = _as_multi_label(dataset, True)
    if not dataset.samples:
        raise HeadstartError(
            f"no labelled images found in {root}: expected class sub-folders of images "
            "(jpg, png, bmp, gif, webp, tif), a CSV of path,label, or files named LABEL_*.jpg"
        )
    check_class_names(dataset.classes)
    return dataset


def check_class_names(classes: Sequence[str]) -> None:
    """Refuse a class name that a line-based file (``labels.txt``, a CSV read line by line)
    cannot hold: one with a line break of any kind Python's ``splitlines`` knows. Refused
    rather than escaped, since every reader of ``labels.txt`` would have to unescape it."""
    for name in classes:
        if name and name.splitlines() != [name]:
            raise HeadstartError(
                f"class name {name!r} holds a line break, which labels.txt and the CSVs cannot "
                "hold: rename that folder (or fix that label) and run again"
            )


def require_data_path(source: str | Path | Dataset) -> Path:
    """``source`` as a path that exists (a typo is refused before anything else happens)."""
    if isinstance(source, Dataset):
        return source.root
    root = Path(source).expanduser()
    if not root.exists():
        raise HeadstartError(f"data path not found: {root} (give a folder of class sub-folders or a CSV)")
    return root


def split_label_cell(cell: str) -> tuple[str, ...]:
    """The labels of a multi-label cell: split on ``;``, stripped, empty ones dropped, sorted, distinct."""
    return tuple(sorted({part.strip() for part in cell.split(LABEL_SEPARATOR) if part.strip()}))


def _as_multi_label(dataset: Dataset, multi_label: bool | None) -> Dataset:
    """``dataset`` with label sets (see ``discover``'s ``multi_label``); unchanged when single-label."""
    if multi_label is False:
        return dataset
    label_sets = [split_label_cell(s.label) for s in dataset.samples]
    if multi_label is None and not any(len(labels) > 1 for labels in label_sets):
        return dataset
    samples = [
        Sample(s.path, LABEL_SEPARATOR.join(labels), s.split, labels)
        for s, labels in zip(dataset.samples, label_sets)
    ]
    return Dataset(dataset.root, samples, dataset.kind, dataset.ignored, multi_label=True)


def expand_paths(paths: Sequence[str | Path]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files as given, folders as their images (recursively, sorted, through the same loop-safe
    walk as ``discover``); missing paths and unreadable folders reported."""
    files: list[str] = []
    missing: list[tuple[str, str]] = []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            ignored: list[tuple[str, str]] = []
            files += [str(f) for f in _walk_images(p, ignored)]
            missing += [(f, reason) for f, reason in ignored if reason.startswith("folder unreadable")]
        elif p.exists():
            files.append(str(p))
        else:
            missing.append((str(p), "path not found"))
    return files, missing


def check_out_dir(out_dir: str | Path | None, data: str | Path | Dataset) -> None:
    """Refuse a run folder inside a data folder: the next run would find it as a class (and
    headstart never writes into the user's data)."""
    if out_dir is None:
        return
    if isinstance(data, Dataset):
        root = None if data.kind == "csv" else data.root
    else:
        root = Path(data).expanduser() if Path(data).expanduser().is_dir() else None
    if root is None:
        return
    root_real, out_real = os.path.realpath(root), os.path.realpath(Path(out_dir).expanduser())
    if out_real == root_real or out_real.startswith(root_real.rstrip(os.sep) + os.sep):
        raise ParameterError(
            "out_dir",
            f"{out_dir} is inside the data folder {root}: choose a run folder outside it "
            "(headstart never writes into your data)",
        )
