"""Output folders replaced whole or not at all: a run or an export is written into a staging
folder beside its destination and swapped in at the end.

Rules:
- the staging folder is a hidden sibling, ``.NAME.headstart-new-PID-RANDOM``, in the same parent
  (one file system, so the swap is a rename);
- the swap is one atomic ``renameat2(RENAME_EXCHANGE)`` where the kernel and file system have it
  (Linux), so a crash or kill -9 at any moment leaves the old folder or the new one under NAME,
  never a mix; elsewhere two renames, and the short window between them leaves the old folder
  under ``.NAME.headstart-old-*`` (``recover`` puts it back);
- the folder swapped out is deleted after the swap; staging folders of processes that have
  ended (a killed run) are deleted at the next successful swap, unless they are the one being
  resumed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
from pathlib import Path

import psutil

NEW_MARK = ".headstart-new-"
OLD_MARK = ".headstart-old-"
AT_FDCWD = -100
RENAME_EXCHANGE = 2


def staging_folder(final: Path) -> Path:
    """A new, empty staging folder for ``final`` (its parent is made if missing)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    path = final.parent / f".{final.name}{NEW_MARK}{os.getpid()}-{secrets.token_hex(3)}"
    path.mkdir()
    return path


def staging_folders(final: Path) -> list[Path]:
    """Staging folders left for ``final`` (by this process or others), newest first."""
    if not final.parent.is_dir():
        return []
    found = [p for p in final.parent.glob(f".{final.name}{NEW_MARK}*") if p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def owner_alive(staging: Path) -> bool:
    """Whether the process that made ``staging`` still runs (its pid is in the name)."""
    pid = staging.name.rsplit(NEW_MARK, 1)[-1].split("-")[0]
    return pid.isdigit() and int(pid) != os.getpid() and psutil.pid_exists(int(pid))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def swap_in(staging: Path, final: Path) -> None:
    """Put ``staging`` at ``final`` whole; the folder it replaces, and staging folders of ended
    processes, are deleted afterwards."""
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise FileExistsError(f"{final} exists and is not a folder: not replacing it")
    if not final.exists():
        os.replace(staging, final)
    elif _exchange(staging, final):
        shutil.rmtree(staging, ignore_errors=True)  # now the old folder
    else:
        old = final.parent / f".{final.name}{OLD_MARK}{os.getpid()}-{secrets.token_hex(3)}"
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    for left in staging_folders(final):
        if not owner_alive(left):
            shutil.rmtree(left, ignore_errors=True)


def recover(final: Path) -> None:
    """Where a crash fell between the two renames of the fallback swap: the old folder back."""
    if final.exists() or not final.parent.is_dir():
        return
    olds = sorted(final.parent.glob(f".{final.name}{OLD_MARK}*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.replace(olds[-1], final)
