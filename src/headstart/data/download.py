"""Downloadable example data: the TensorFlow flowers photos, fetched once and checksum-verified."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from headstart.core.errors import HeadstartError
from headstart.core.io import atomic_path
from headstart.core.progress import ConsoleProgress, ProgressSink

FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
FLOWERS_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"


def fetch_flowers(
    cache_dir: Path,
    url: str = FLOWERS_URL,
    sha256: str = FLOWERS_SHA256,
    progress: ProgressSink | None = None,
) -> Path:
    """Download (once) and unpack the TensorFlow flowers photos; checksum verified.

    The archive is downloaded to a temporary file that takes its name only once its checksum
    is right, and unpacked into a temporary folder that is renamed into place, so an
    interrupted download or unpack is never mistaken for a done one.
    """
    target = cache_dir / "datasets" / "flower_photos"
    if (target / "daisy").is_dir():
        return target
    archive = cache_dir / "datasets" / "flower_photos.tgz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    if not archive.exists() or _sha256(archive) != sha256:
        with atomic_path(archive) as part:
            _download(url, part, progress or ConsoleProgress(unit="MiB"))
            if _sha256(part) != sha256:
                raise HeadstartError(f"the archive downloaded from {url} failed its sha256 check; try again")
    _unpack(archive, target)
    return target


def _unpack(archive: Path, target: Path) -> None:
    """Unpack ``archive``'s ``flower_photos`` folder to ``target`` through a temporary folder."""
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
        if target.exists():  # a half-unpacked folder: replaced whole
            shutil.rmtree(target)
        unpacked.rename(target)
    except tarfile.TarError as e:
        raise HeadstartError(f"{archive} is damaged ({e}); delete it and try again") from e
    finally:
        shutil.rmtree(unpacking, ignore_errors=True)


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
