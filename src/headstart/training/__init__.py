"""Fine-tuning: the epoch loop, its callbacks and checkpoints."""

from headstart.training.callbacks import (
    Callback,
    CallbackList,
    Checkpointing,
    EarlyStopping,
    EpochEndFunction,
    FillTime,
    History,
    TensorBoard,
    TimeBudget,
)
from headstart.training.checkpoints import settings_fingerprint
from headstart.training.loop import FineTuner, FineTuneResult
from headstart.training.settings import FineTuneSettings
from headstart.training.state import TrainState

__all__ = [
    "Callback",
    "CallbackList",
    "Checkpointing",
    "EarlyStopping",
    "EpochEndFunction",
    "FillTime",
    "FineTuneResult",
    "FineTuneSettings",
    "FineTuner",
    "History",
    "TensorBoard",
    "TimeBudget",
    "TrainState",
    "settings_fingerprint",
]
