"""Callbacks: what happens around the epoch loop, one small class each (as in Keras, Lightning
or fastai).

The loop calls each hook on every callback, in list order:

- ``on_fit_start(state)``: before the first epoch (after a resume and the probe's evaluation);
- ``on_epoch_start(state)``: before each epoch (``state.epoch`` is set);
- ``on_batch_end(state)``: after each training step;
- ``on_epoch_end(state, row)``: after each complete epoch, with its history row;
- ``on_fit_end(state)``: after the loop ended normally (completed or stopped);
- ``on_exception(state, error)``: when the loop ends with an exception (an interrupt included),
  before it propagates; close what ``on_fit_start`` opened here as well as in ``on_fit_end``.

A callback stops the run with ``state.request_stop(reason, message)`` (or by setting
``state.stop``): a stop during an epoch drops that epoch, one at its end keeps it. Adding a
behaviour (another logger, another stopping rule) is one more class, never an edit of the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from headstart.core.io import write_rows
from headstart.training.checkpoints import BEST, LAST, Checkpoint, last_checkpoint, save_checkpoint
from headstart.training.state import MIN_DELTA, TrainState

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

logger = logging.getLogger(__name__)


# "epoch" is the round (an epoch unless the run is budgeted in steps); "step": optimiser steps by its end
HISTORY_COLUMNS = [
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "images_per_s",
    "seconds",
    "step",
]
SCALARS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s")


class Callback:
    """The base class: every hook does nothing; override the ones needed."""

    def on_fit_start(self, state: TrainState) -> None:
        pass

    def on_epoch_start(self, state: TrainState) -> None:
        pass

    def on_batch_end(self, state: TrainState) -> None:
        pass

    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None:
        pass

    def on_fit_end(self, state: TrainState) -> None:
        pass

    def on_exception(self, state: TrainState, error: BaseException) -> None:
        pass


class CallbackList(Callback):
    """Several callbacks called as one, in order."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_fit_start(self, state: TrainState) -> None:
        for callback in self.callbacks:
            callback.on_fit_start(state)

    def on_epoch_start(self, state: TrainState) -> None:
        for callback in self.callbacks:
            callback.on_epoch_start(state)

    def on_batch_end(self, state: TrainState) -> None:
        for callback in self.callbacks:
            callback.on_batch_end(state)

    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(state, row)

    def on_fit_end(self, state: TrainState) -> None:
        for callback in self.callbacks:
            callback.on_fit_end(state)

    def on_exception(self, state: TrainState, error: BaseException) -> None:
        for callback in self.callbacks:
            callback.on_exception(state, error)


class EarlyStopping(Callback):
    """Stops when ``monitor`` (lower is better) has not improved by ``min_delta`` for ``patience``
    epochs; never after the last epoch. Its count is ``state.waited``, so a resumed run goes on
    counting where the checkpoint left it (put it before :class:`Checkpointing`)."""

    def __init__(self, patience: int, monitor: str = "val_loss", min_delta: float = MIN_DELTA) -> None:
        self.patience = patience
        self.monitor = monitor
        self.min_delta = min_delta
        self.best = float("inf")

    def on_fit_start(self, state: TrainState) -> None:
        self.best = float(state.best["val_loss"]) if self.monitor == "val_loss" else float("inf")

    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None:
        value = row[self.monitor]
        if value < self.best - self.min_delta:
            self.best = value
            state.waited = 0
        else:
            state.waited += 1
        if state.waited >= self.patience and state.epoch < state.epochs:
            state.request_stop(
                "early_stopping",
                f"early stopping: {self.monitor} has not improved for {state.waited} epoch(s)",
            )


class TimeBudget(Callback):
    """Stops at ``deadline`` (a ``time.time()``), which covers a resumed run's earlier epochs too.

    Checked before each epoch and after each batch: an epoch the deadline interrupts is dropped
    (the best model so far is kept), so every kept epoch is complete.
    """

    def __init__(self, deadline: float | None, clock: Callable[[], float] = time.time) -> None:
        self.deadline = deadline
        self.clock = clock
        self.until: float | None = None

    def on_fit_start(self, state: TrainState) -> None:
        self.until = None if self.deadline is None else self.deadline - state.trained_s

    def _over(self) -> bool:
        return self.until is not None and self.clock() >= self.until

    def on_epoch_start(self, state: TrainState) -> None:
        if self._over():
            state.request_stop("time_budget")

    def on_batch_end(self, state: TrainState) -> None:
        if self._over():
            state.request_stop(
                "time_budget",
                f"time budget reached during epoch {state.epoch}: that epoch is dropped, the best model kept",
            )


class FillTime(Callback):
    """Fits a run budgeted in steps to end at ``until`` (a ``time.time()``): after each round but
    the last, the rounds that fit at the pace of those run so far (training and evaluation)
    become the plan, the last one cut short when a part of a round fits
    (``TrainState.set_rounds``: the schedule is reshaped to end with them).

    Why: a plan made from a few measured batches misses a real round's pace by up to 1.5x either
    way (the loader, other programs), so a run planned to fill a time budget ends far short of it,
    or is cut by it mid-schedule. Between ``min_rounds`` and ``max_factor`` times the rounds first
    planned; ``margin`` of a round is kept for a round slower than the mean (a round cut by a
    deadline is dropped); a last round shorter than ``least_part`` of a round is not added. Each
    change is logged and kept in ``replans``: (after round, rounds, steps in all).
    """

    def __init__(
        self,
        until: float,
        min_rounds: int = 1,
        max_factor: float = 3.0,
        margin: float = 0.1,
        least_part: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.until, self.min_rounds, self.max_factor, self.margin = until, min_rounds, max_factor, margin
        self.least_part, self.clock = least_part, clock
        self.planned: int | None = None
        self.replans: list[tuple[int, int, int]] = []

    def on_fit_start(self, state: TrainState) -> None:
        self.planned = state.epochs

    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None:
        rounds = state.rounds
        if not state.in_steps or rounds is None or state.epoch >= state.epochs:
            return  # the last round has run: its schedule has ended, so nothing is stretched
        count, last = self._plan(state, rounds.steps_each)
        if (count, last) == (rounds.count, rounds.last_steps):
            return
        state.set_rounds(count, last)
        steps = state.rounds.total_steps if state.rounds is not None else 0
        self.replans.append((state.epoch, count, steps))
        logger.info(
            f"re-planned after round {state.epoch}: {count} rounds ({steps} steps"
            f"{f', the last one {last}' if last else ''}) end by the deadline"
        )

    def _plan(self, state: TrainState, steps_each: int) -> tuple[int, int | None]:
        """Rounds, and the last one's steps when cut, that end by ``until`` at the pace so far."""
        done = [r for r in state.history if r["epoch"] >= state.start_epoch]
        pace = sum(r["seconds"] for r in done) / max(len(done), 1)
        images = steps_each * state.settings.batch_size
        train = sum(images / r["images_per_s"] for r in done if r["images_per_s"] > 0) / max(len(done), 1)
        room = self.until - self.clock() - self.margin * pace
        whole = int(max(room, 0.0) // pace) if pace > 0 else 0
        rest = room - whole * pace - (pace - train)  # a part of a round: its steps and an evaluation
        part = int(steps_each * rest / train) if train > 0 and rest > 0 else 0
        ceiling = int(self.max_factor * (self.planned or state.epochs))
        count, last = state.epoch + whole, None
        if part >= self.least_part * steps_each and count < ceiling:
            count, last = count + 1, min(part, steps_each)
        if count > ceiling:
            count, last = ceiling, None
        return max(count, state.epoch, self.min_rounds), last


class Checkpointing(Callback):
    """After every epoch, ``directory/last.pt`` (all that resuming needs) and, when the epoch is
    the new best, ``directory/best.pt`` (its weights); both written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None:
        best = state.best["state"]
        if state.improved and best is not None:  # an improved epoch has just become the best
            save_checkpoint(self.directory / BEST, Checkpoint(network=best, epoch=state.epoch))
        save_checkpoint(self.directory / LAST, last_checkpoint(state))


class History(Callback):
    """``path`` (history.csv): one row per complete epoch, rewritten atomically after each epoch
    and at the end, so it always holds whole rows."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(self, history: list[dict[str, float]]) -> None:
        write_rows(
            self.path,
            HISTORY_COLUMNS,
            [[row.get(c, float("nan")) for c in HISTORY_COLUMNS] for row in history],
        )

    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None:
        self.write(state.history)

    def on_fit_end(self, state: TrainState) -> None:
        self.write(state.history)


class TensorBoard(Callback):
    """Each epoch's scalars as TensorBoard events in ``log_dir`` (only where tensorboard is
    installed: see :meth:`available`)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer: SummaryWriter | None = None

    @staticmethod
    def available() -> bool:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:  # tensorboard is optional
            return False
        return True

    def on_fit_start(self, state: TrainState) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir))

    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None:
        assert self.writer is not None, "on_fit_start opens the writer"
        for key in SCALARS:
            self.writer.add_scalar(key, row[key], state.epoch)
        self.writer.flush()

    def on_fit_end(self, state: TrainState) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_exception(self, state: TrainState, error: BaseException) -> None:
        self.on_fit_end(state)


class EpochEndFunction(Callback):
    """A plain function ``fn(epoch, row)`` called after each complete epoch."""

    def __init__(self, fn: Callable[[int, dict[str, float]], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None:
        self.fn(state.epoch, row)
