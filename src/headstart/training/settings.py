"""What decides a fine-tuning run: its settings, and the precision they resolve to on this CPU."""

from __future__ import annotations

import math
from dataclasses import dataclass

from headstart.core.choices import TRAINING_PRECISIONS, class_weight_value
from headstart.core.errors import ParameterError

PRECISIONS = TRAINING_PRECISIONS


@dataclass
class FineTuneSettings:
    """Everything that decides a fine-tuning run (saved with the run, checked on resume)."""

    unfreeze: str = "last:2"
    epochs: int = 4
    # Budgeted in optimiser steps instead (images seen = steps x batch_size): ``steps`` in all,
    # with an evaluation, a checkpoint, a history row and an early-stopping count every
    # ``eval_every`` steps (None: an epoch's steps or half of ``steps``, the fewer); the
    # schedule spans all the steps. None: ``epochs`` whole epochs, each one round.
    steps: int | None = None
    eval_every: int | None = None
    lr: float = 1e-3  # the head's; backbone groups get less (see ``backbone_lr_scale``)
    backbone_lr_scale: float = 0.1  # the top trainable group's lr relative to the head
    layer_decay: float = 0.6  # each earlier group: times this
    batch_size: int = 32
    augment: str = "default"
    class_weight: str | None = None  # None or "balanced" ("none" is read as None)
    patience: int = 3
    time_budget: float | None = None  # seconds of wall time for the whole fit
    label_smoothing: float = 0.1
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of all steps
    grad_clip: float = 1.0
    # BatchNorm statistics: frozen everywhere by default (Keras' advice for fine-tuning: small
    # batches of augmented images make poor statistics); False updates them in trainable parts.
    freeze_bn_stats: bool = True
    # Keep the probe's own L2 penalty (scikit-learn's 1/(2 C n) ||W||^2) on the head, so training
    # optimises the objective the probe was chosen with.
    keep_probe_l2: bool = True
    workers: int | None = None
    precision: str = "auto"  # auto (bf16 where the CPU has it), bf16 or fp32
    threads: int | None = None  # torch threads; None: the cores not already busy (see compute_threads)
    # How the frozen leading stages run: auto/openvino (compiled inference graph), torch
    # (inference mode) or off (the whole network in torch's training path); see training/prefix.py.
    # Off by default: the compiled graph crashed a process after torch.distributed work (README).
    frozen_prefix: str = "off"
    seed: int = 0

    def __post_init__(self) -> None:
        self.class_weight = class_weight_value(self.class_weight)


@dataclass(frozen=True)
class Rounds:
    """How a run is cut: ``count`` rounds of ``steps_each`` optimiser steps, each ending with an
    evaluation; ``images`` per round (None: a whole epoch, the last batch a partial one); the
    last round cut to ``last_steps`` when set (a run re-planned to end by a deadline)."""

    count: int
    steps_each: int
    images: int | None
    last_steps: int | None = None

    def steps_in(self, round_: int) -> int:
        """Optimiser steps of round ``round_`` (1-based)."""
        return self.last_steps if (round_ == self.count and self.last_steps) else self.steps_each

    def steps_by(self, round_: int) -> int:
        """Optimiser steps by the end of round ``round_``."""
        return sum(self.steps_in(k) for k in range(1, round_ + 1))

    @property
    def total_steps(self) -> int:
        return self.steps_by(self.count)


def plan_rounds(settings: FineTuneSettings, n_train: int) -> Rounds:
    """The rounds ``settings`` ask for on ``n_train`` images: ``epochs`` epochs, or ``steps``
    rounded up to whole rounds."""
    per_epoch = max(1, math.ceil(n_train / settings.batch_size))
    if settings.steps is None:
        return Rounds(settings.epochs, per_epoch, None)
    steps = max(1, int(settings.steps))
    each = settings.eval_every or min(per_epoch, math.ceil(steps / 2))
    each = max(1, min(int(each), steps))
    return Rounds(math.ceil(steps / each), each, each * settings.batch_size)


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """bf16 autocast where the CPU (or the GPU ``device``, e.g. ``cuda:0``) has native bf16
    (decided at run time), else fp32."""
    import torch

    if precision not in PRECISIONS:
        raise ParameterError("precision", f"unknown value '{precision}': use {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return "fp32"
    if device.startswith("cuda"):
        native = bool(torch.cuda.is_bf16_supported())
    else:
        native = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if precision == "bf16" and not native:
        raise ParameterError(
            "precision", f"bf16: this {device.split(':')[0].upper()} has no native bf16; use auto or fp32"
        )
    return "bf16" if native else "fp32"
