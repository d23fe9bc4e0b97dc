"""Fine-tuning on multi-label images: a sigmoid output per class and binary cross-entropy.

The loaders carry integer labels (an unreadable image gets -100, which every loss leaves out),
so a multi-label item's label is its ROW in a table of multi-hot targets: :class:`MultiHotLoss`
looks the rows up. Everything else (epochs, early stopping on val_loss, checkpoints, resume)
is the single-label loop's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.training.loop import FineTuner, Objective

if TYPE_CHECKING:
    from torch import Tensor

    from headstart.models.heads import Head
    from headstart.training.loop import LossFn


class MultiHotLoss:
    """Binary cross-entropy of logits against ``targets[labels]``, summed over the classes and
    averaged over the images (so the probe's L2 penalty ``1/(2 C n) ||W||^2`` keeps the one-vs-rest
    logistic regressions' objective).

    ``correct`` counts an image as the fraction of its classes right at probability 0.5 (the
    accuracy fine-tuning reports and compares with the probe's); ``proba`` is the sigmoid.
    """

    def __init__(self, targets: np.ndarray) -> None:
        import torch

        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        import torch

        target = self.targets[labels.long()]
        return (
            torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
            .sum(1)
            .mean()
        )

    def correct(self, logits: Tensor, labels: Tensor) -> float:
        target = self.targets[labels.long()]
        return float(((logits > 0).float() == target).float().mean(1).sum())

    def proba(self, logits: Tensor) -> Tensor:
        import torch

        return torch.sigmoid(logits)


class MultiLabelFineTuner(FineTuner):
    """:class:`FineTuner` with a BCE objective; items are (path, row of ``targets``).

    Args:
        targets: multi-hot rows, one per item index the loaders may carry.
        (the rest as :class:`FineTuner`)
    """

    def __init__(self, targets: np.ndarray, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.targets = np.asarray(targets, dtype=np.float32)

    def _losses(
        self, head: Head, train: Sequence[tuple[str, int]], n_classes: int
    ) -> tuple[Objective, LossFn]:
        """BCE for training and validation alike (no label smoothing, no class weights)."""
        loss = MultiHotLoss(self.targets)
        c = getattr(head, "C", None)
        l2 = 0.5 / (float(c) * len(train)) if (self.settings.keep_probe_l2 and c) else 0.0
        return Objective(loss, l2), loss

    def output_loss(self) -> LossFn:
        return MultiHotLoss(self.targets)
