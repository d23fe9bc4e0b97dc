"""Checkpoints: written atomically after every epoch, read back to resume a run where its last
complete epoch ended, and refused when they come from other data or settings."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

from headstart.core.errors import HeadstartError
from headstart.core.io import atomic_path
from headstart.training.settings import FineTuneSettings
from headstart.training.state import TrainState

if TYPE_CHECKING:
    from torch import Tensor

CHECKPOINT_DIR = "checkpoints"
LAST, BEST = "last.pt", "best.pt"
# Settings that may change between a run and its resume: they do not change what is learnt.
RESUMABLE_CHANGES = ("workers", "threads", "time_budget", "patience", "frozen_prefix")


class Checkpoint(TypedDict, total=False):
    """``last.pt``: everything resuming needs after ``epoch`` (``best.pt`` holds ``network`` and
    ``epoch`` only). Keys a checkpoint of an older version may lack are read with defaults."""

    epoch: int
    network: dict[str, Tensor]
    optimizer: dict[str, Any]  # torch's own state dicts: nested, of many kinds
    scheduler: dict[str, Any]
    history: list[dict[str, float]]
    best_val_loss: float
    best_val_accuracy: float
    best_epoch: int
    start_val: dict[str, float] | None
    waited: int
    trained_s: float
    fingerprint: str
    rounds: int | None  # the rounds planned by then (a run re-planned to its deadline: see FillTime)
    last_steps: int | None  # and the last one's steps, when cut short


class ReadCheckpoint(Checkpoint, total=False):
    """A checkpoint as :func:`read_checkpoints` returns it: with its file and the best weights."""

    path: str
    best_state: dict[str, Tensor] | None


def save_checkpoint(path: Path, state: Checkpoint) -> None:
    """torch.save through a temporary file: a kill while writing never leaves half a file."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint's contents (tensors on the CPU); a damaged file is a user error."""
    import torch

    try:
        return cast(Checkpoint, torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # noqa: BLE001 - any failure means an unusable file
        raise HeadstartError(f"checkpoint {path} is damaged ({type(e).__name__}): start a new run") from e


def settings_fingerprint(
    settings: FineTuneSettings, train: Sequence[tuple[str, int]], extra: dict[str, Any]
) -> str:
    """What must match for a checkpoint to be resumed: settings (but those in
    ``RESUMABLE_CHANGES``), the training set and ``extra``."""
    spec = {k: v for k, v in asdict(settings).items() if k not in RESUMABLE_CHANGES}
    blob = json.dumps([spec, list(train), extra], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def last_checkpoint(state: TrainState) -> Checkpoint:
    """Everything resuming needs after ``state.epoch``: weights, optimiser, schedule, history and
    the early-stopping and time-budget counters."""
    return {
        "epoch": state.epoch,
        "network": state.network.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "history": state.history,
        "best_val_loss": state.best["val_loss"],
        "best_val_accuracy": state.best["val_accuracy"],
        "best_epoch": state.best["epoch"],
        "start_val": state.start_val,
        "waited": state.waited,
        "trained_s": state.trained_s,
        "fingerprint": state.fingerprint,
        "rounds": state.rounds.count if state.rounds is not None else None,
        "last_steps": state.rounds.last_steps if state.rounds is not None else None,
    }


def restore(state: TrainState, directory: Path | None) -> Path:
    """Load ``directory``'s last checkpoint into ``state`` (and its best model, if one was saved).

    Raises:
        HeadstartError: no checkpoint, a damaged one, or one from other data or settings.
    """
    saved = read_checkpoints(state, directory)
    apply_checkpoint(state, saved)
    return Path(saved["path"])


def read_checkpoints(state: TrainState, directory: Path | None) -> ReadCheckpoint:
    """``directory``'s last checkpoint, checked against ``state``'s fingerprint, with its path
    (``path``) and the best model's weights (``best_state``, None when no epoch was best).

    Raises:
        HeadstartError: no checkpoint, a damaged one, or one from other data or settings.
    """
    if directory is None or not (directory / LAST).is_file():
        raise HeadstartError(
            f"no checkpoint to resume in {state.run_dir} ({CHECKPOINT_DIR}/{LAST} is missing: the run "
            "ended before its first epoch); start it again without resuming"
        )
    last = directory / LAST
    saved = load_checkpoint(last)
    if saved.get("fingerprint") != state.fingerprint:
        raise HeadstartError(
            f"the checkpoint in {state.run_dir} is from different data or settings: resume with the "
            "same ones, or start a new run in another folder"
        )
    best_path = directory / BEST
    found = best_path.is_file() and saved["best_epoch"]
    read = ReadCheckpoint(**saved)
    read["path"] = str(last)
    read["best_state"] = load_checkpoint(best_path)["network"] if found else None
    return read


def apply_checkpoint(state: TrainState, saved: ReadCheckpoint) -> None:
    """Put a checkpoint read by :func:`read_checkpoints` into ``state``."""
    state.network.load_state_dict(saved["network"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.history = list(saved["history"])
    state.waited, state.trained_s = int(saved["waited"]), float(saved["trained_s"])
    state.epoch = int(saved["epoch"])
    state.start_epoch = state.epoch + 1
    state.start_val = saved.get("start_val")
    rounds, last = saved.get("rounds"), saved.get("last_steps")
    if (
        rounds
        and state.rounds is not None
        and (rounds, last) != (state.rounds.count, state.rounds.last_steps)
    ):
        state.set_rounds(rounds, last)
    state.best["val_loss"] = float(saved["best_val_loss"])
    state.best["val_accuracy"] = float(saved.get("best_val_accuracy", 0.0))
    if saved.get("best_state") is not None:
        state.best["epoch"] = int(saved["best_epoch"])
        state.best["state"] = saved["best_state"]


def remove_leftovers(directory: Path | None) -> None:
    """Delete temporary files a kill while writing left behind: they are never checkpoints."""
    if directory is not None and directory.is_dir():
        for leftover in directory.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
