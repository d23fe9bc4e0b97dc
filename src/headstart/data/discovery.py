"""Finding labelled images (class folders, CSV, file-name labels, split folders) and splitting them.

Everything here only reads: the user's files are never moved, renamed, copied or written.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.core.progress import ConsoleProgress, ProgressSink
from headstart.data.images import is_image_name

SPLIT_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "validation", "valid"),
    "test": ("test", "evaluation", "testing"),
}
FILENAME_LABEL = re.compile(r"^([^_]+)_.+")
PATH_COLUMNS = ("path", "filepath", "file_path", "file", "filename", "image", "image_path", "fname")
LABEL_COLUMNS = ("label", "class", "category", "target", "y", "class_name")

FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
FLOWERS_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"


@dataclass(frozen=True)
class Sample:
    path: str
    label: str
    split: str | None = None  # set when the data came with predefined splits


@dataclass
class Dataset:
    """Labelled image paths plus what discovery passed over and why."""

    root: Path
    samples: list[Sample]
    kind: str
    ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return sorted({s.label for s in self.samples})

    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.samples]

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.samples]

    def relative(self, path: str) -> str:
        try:
            return os.path.relpath(path, self.root)
        except ValueError:
            return path

    def class_counts(self) -> dict[str, int]:
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
        file = Path(row[path_col].strip())
        file = file if file.is_absolute() else path.parent / file
        split = None
        if split_col is not None and len(row) > split_col:
            split = _normal_split(row[split_col])
        samples.append(Sample(str(file), row[label_col].strip(), split))
    return samples, ignored


def _normal_split(name: str) -> str | None:
    name = name.strip().lower()
    for split, names in SPLIT_NAMES.items():
        if name in names:
            return split
    return None


def discover(source: str | Path, labels_from: str = "auto") -> Dataset:
    """Find labelled images under ``source``.

    ``labels_from``: ``auto`` (default), ``folder`` (class sub-folders), ``filename``
    (``9_1339.jpg`` is class 9) or ``csv`` (``source`` is a CSV of path,label).
    Predefined ``train``/``val``/``test`` folders (or their long names) are kept as given.
    """
    root = Path(source).expanduser()
    if not root.exists():
        raise HeadstartError(f"data path not found: {root} (give a folder of class sub-folders or a CSV)")
    if root.is_file():
        if root.suffix.lower() != ".csv" and labels_from != "csv":
            raise HeadstartError(f"{root} is a file: give a folder of images or a CSV of path,label")
        samples, ignored = _read_csv(root)
        dataset = Dataset(root.parent.resolve(), samples, "csv", ignored)
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
    if not dataset.samples:
        raise HeadstartError(
            f"no labelled images found in {root}: expected class sub-folders of images "
            "(jpg, png, bmp, gif, webp, tif), a CSV of path,label, or files named LABEL_*.jpg"
        )
    return dataset


# --------------------------------------------------------------------------- splitting


def _class_rng(seed: int, label: str) -> np.random.Generator:
    # Per-class streams: adding a class never reshuffles the others.
    return np.random.default_rng([seed, zlib.crc32(label.encode())])


def make_split(
    labels: Sequence[str],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    groups: Sequence[Sequence[int]] | None = None,
) -> list[str]:
    """Seeded, stratified train/val/test assignment: every class is in every split.

    ``groups`` (lists of indices, e.g. duplicate images) are each kept on one side; see
    :func:`keep_groups_together`. Without groups the split is what it always was.
    """
    f_train, f_val, f_test = _check_fractions(fractions)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    out = ["train"] * len(labels)
    need = 1 + (f_val > 0) + (f_test > 0)
    for label, idx in sorted(by_class.items()):
        n = len(idx)
        if n < need:
            raise HeadstartError(
                f"class '{label}' has {n} usable image(s): at least {need} are needed to put one in "
                "each of train/validation/test (add images, or remove the class)"
            )
        order = _class_rng(seed, label).permutation(idx)
        n_test = max(1, round(n * f_test)) if f_test > 0 else 0
        n_val = max(1, round(n * f_val)) if f_val > 0 else 0
        while n - n_test - n_val < 1:  # keep at least one training image
            if n_val > 1:
                n_val -= 1
            else:
                n_test -= 1
        for i in order[:n_test]:
            out[i] = "test"
        for i in order[n_test : n_test + n_val]:
            out[i] = "val"
    return keep_groups_together(out, groups, labels) if groups else out


def keep_groups_together(
    splits: Sequence[str], groups: Sequence[Sequence[int]], labels: Sequence[str] | None = None
) -> list[str]:
    """Move each group's members to one split: the one most of them drew, ties to train.

    Applied after the plain seeded split, so data without groups splits exactly as before, and
    a copy of a training image never lands in validation or test. A group whose move would
    empty a split, or (given ``labels``) take a class out of train, is left as drawn (and so
    shows up as a group across splits) rather than making training fail.
    """
    out = list(splits)
    rank = {"train": 0, "val": 1, "test": 2}
    labels = labels if labels is not None else [""] * len(out)
    count = Counter(out) + Counter((lab, s) for lab, s in zip(labels, out) if s == "train")
    for group in groups:
        if len({out[i] for i in group}) < 2:
            continue
        votes = Counter(out[i] for i in group)
        target = min(votes, key=lambda s: (-votes[s], rank.get(s, 3)))
        after = count.copy()
        for i in group:
            for key, step in ((out[i], -1), (target, 1)):
                after[key] += step
                if key == "train":
                    after[(labels[i], "train")] += step
        if any(after[key] <= 0 < count[key] for key in count):
            continue
        count = after
        for i in group:
            out[i] = target
    return out


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or fractions[0] <= 0:
        raise HeadstartError(
            f"--split needs three fractions train,val,test like 0.8,0.1,0.1 (got {fractions})"
        )
    total = float(sum(fractions))
    return fractions[0] / total, fractions[1] / total, fractions[2] / total


def parse_split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError as e:
        raise HeadstartError(f"--split takes fractions like 0.8,0.1,0.1 (got '{text}')") from e
    return _check_fractions(parts)


def assign_splits(
    samples: Sequence[Sample],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    groups: Sequence[Sequence[int]] | None = None,
) -> tuple[list[str], str]:
    """Use predefined splits where given; fill a missing val/test from train, stratified.

    ``groups`` (duplicate images) stay on one side of every split this makes; predefined
    splits are never changed (a group across them is a leak to report, not to fix silently).
    """
    given = [s.split for s in samples]
    if all(g is None for g in given):
        method = "stratified" + (", duplicate groups kept together" if groups else "")
        return make_split([s.label for s in samples], fractions, seed, groups), method
    f_train, f_val, f_test = _check_fractions(fractions)
    out = [g or "train" for g in given]
    present = set(out)
    missing = [s for s in ("val", "test") if s not in present]
    if missing:
        train_idx = [i for i, g in enumerate(out) if g == "train"]
        sub = (
            f_train,
            f_val if "val" in missing else 0.0,
            f_test if "test" in missing else 0.0,
        )
        where = {i: k for k, i in enumerate(train_idx)}
        inner_groups = [[where[i] for i in g if i in where] for g in groups or ()]
        inner = make_split(
            [samples[i].label for i in train_idx], sub, seed, [g for g in inner_groups if len(g) > 1]
        )
        for i, g in zip(train_idx, inner):
            out[i] = g
        return out, f"predefined (+{'/'.join(missing)} carved from train)"
    return out, "predefined"


# --------------------------------------------------------------------------- flowers


def fetch_flowers(
    cache_dir: Path,
    url: str = FLOWERS_URL,
    sha256: str = FLOWERS_SHA256,
    progress: ProgressSink | None = None,
) -> Path:
    """Download (once) and unpack the TensorFlow flowers photos; checksum verified.

    The archive is fetched to a ``.part`` file and unpacked into a temporary folder that is
    renamed into place, so an interrupted download or unpack is never mistaken for a done one.
    """
    target = cache_dir / "datasets" / "flower_photos"
    if (target / "daisy").is_dir():
        return target
    archive = cache_dir / "datasets" / "flower_photos.tgz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    if not archive.exists() or _sha256(archive) != sha256:
        part = archive.with_suffix(".part")
        progress = progress or ConsoleProgress(unit="MiB")
        _download(url, part, progress)
        if _sha256(part) != sha256:
            part.unlink(missing_ok=True)
            raise HeadstartError(f"the archive downloaded from {url} failed its sha256 check; try again")
        part.replace(archive)
    unpacking = Path(tempfile.mkdtemp(prefix=".unpack-", dir=archive.parent))
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(unpacking, filter="data")
            else:  # Python without tar filters: refuse members that would leave the folder
                for member in tar.getmembers():
                    if member.name.startswith(("/", "..")) or ".." in Path(member.name).parts:
                        raise HeadstartError(f"unsafe path in archive: {member.name}")
                tar.extractall(unpacking)
        unpacked = unpacking / "flower_photos"
        if not (unpacked / "daisy").is_dir():
            raise HeadstartError(f"{archive} does not hold flower_photos/daisy; delete it and try again")
        if target.exists():  # a half-unpacked folder from an older version
            shutil.rmtree(target)
        unpacked.rename(target)
    except tarfile.TarError as e:
        raise HeadstartError(f"{archive} is damaged ({e}); delete it and try again") from e
    finally:
        shutil.rmtree(unpacking, ignore_errors=True)
    return target


def _download(url: str, dest: Path, progress: ProgressSink) -> None:
    """Stream ``url`` to ``dest`` in 1 MiB blocks with progress (MiB/s and ETA)."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            progress.start(f"downloading {url}", max(1, round(total / 2**20)))
            got = shown = 0
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                got += len(block)
                progress.advance(got // 2**20 - shown)
                shown = got // 2**20
            progress.finish()
    except OSError as e:
        dest.unlink(missing_ok=True)
        raise HeadstartError(
            f"could not download the flowers photos from {url} ({e}); offline? pass a DATA folder instead"
        ) from e


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
