"""What the epoch loop and its callbacks share: one mutable :class:`TrainState` per fit."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from headstart.training.settings import FineTuneSettings, Rounds

if TYPE_CHECKING:
    from torch import Tensor
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler

    from headstart.training.network import Network


# An epoch improves on the best when its val_loss is lower by more than this.
MIN_DELTA = 1e-4


def warmup_cosine(warmup: int, total_steps: int) -> Callable[[int], float]:
    """The lr factor per step: linear warm-up over ``warmup`` steps, then a cosine to zero."""

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return schedule


class Best(TypedDict):
    """The best epoch so far: its validation figures and its weights (None before the probe's)."""

    val_loss: float
    val_accuracy: float
    epoch: int
    state: dict[str, Tensor] | None


def no_best() -> Best:
    """The best model before any epoch: nothing to beat (``state`` is set to the probe's weights)."""
    return {"val_loss": float("inf"), "val_accuracy": 0.0, "epoch": 0, "state": None}


@dataclass
class TrainState:
    """The run as the loop and its callbacks see it.

    A callback stops the run by setting ``stop`` to a short reason (it becomes
    ``info["stopped_because"]``), optionally with ``stop_message`` for the log. A stop set during
    an epoch (in ``on_batch_end``) drops that epoch; one set in ``on_epoch_end`` keeps it.
    """

    settings: FineTuneSettings
    # Set by the loop; a state built from settings alone (to drive callbacks) has None here.
    network: Network = None  # type: ignore[assignment]
    optimizer: Optimizer = None  # type: ignore[assignment]
    scheduler: LRScheduler = None  # type: ignore[assignment]
    precision: str = "fp32"
    run_dir: Path | None = None
    fingerprint: str = ""
    epoch: int = 0  # the epoch running, or the last one that ended
    start_epoch: int = 1  # the first epoch this fit runs (after a resume: the one after the checkpoint)
    history: list[dict[str, float]] = field(default_factory=list)
    best: Best = field(default_factory=no_best)  # val_loss, val_accuracy, epoch, state
    improved: bool = False  # whether the epoch that just ended is the new best
    waited: int = 0  # epochs since the best (kept by EarlyStopping, saved in checkpoints)
    trained_s: float = 0.0  # seconds of complete epochs, resumed runs included
    start_val: dict[str, float] | None = None  # the probe's val_loss and val_accuracy
    stop: str | None = None
    stop_message: str = ""
    forward: Callable[[Tensor], Tensor] | None = (
        None  # what runs the training forward when not the network: its DDP wrapper
    )
    rounds: Rounds | None = None  # set by the loop: its rounds (epochs, or rounds of steps)
    val_proba: np.ndarray | None = None  # the last round's validation probabilities (one process)
    best_val_proba: np.ndarray | None = None  # the best round's
    warmup_steps: int = 1  # the schedule's warm-up, kept when the rounds are re-planned

    @property
    def epochs(self) -> int:
        """Rounds in all (an epoch each, unless the run is budgeted in steps)."""
        return self.rounds.count if self.rounds is not None else self.settings.epochs

    @property
    def in_steps(self) -> bool:
        return self.settings.steps is not None

    def set_rounds(self, count: int, last_steps: int | None = None) -> None:
        """Re-plan a run budgeted in steps to ``count`` rounds of the same size, the last one cut
        to ``last_steps`` if given: the cosine after the warm-up is stretched (or shrunk) to end
        at the new last step; the steps already taken keep the rate they had, so the rate moves
        a little at the next step and no more.
        """
        assert self.rounds is not None, "the loop sets the rounds before any re-plan"
        last = last_steps if last_steps and last_steps < self.rounds.steps_each else None
        self.rounds = replace(self.rounds, count=max(1, int(count)), last_steps=last)
        schedule = warmup_cosine(self.warmup_steps, self.rounds.total_steps)
        if self.scheduler is not None:  # torch's LambdaLR: one factor function per group
            self.scheduler.lr_lambdas = [schedule] * len(self.scheduler.lr_lambdas)  # type: ignore[attr-defined]

    def request_stop(self, reason: str, message: str = "") -> None:
        """Stop after the current batch or epoch; ``message`` is logged once the loop stops."""
        self.stop = reason
        self.stop_message = message
