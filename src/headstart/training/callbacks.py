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

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from headstart.core.io import write_rows
from headstart.training.checkpoints import BEST, LAST, Checkpoint, last_checkpoint, save_checkpoint
from headstart.training.state import MIN_DELTA, TrainState

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


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
