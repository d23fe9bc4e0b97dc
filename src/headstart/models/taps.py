"""Multi-layer features: pooled activations of several block groups of a timm backbone, taken
in one forward pass (Head2Toe, Evci et al., ICML 2022: intermediate layers carry what the last
one has thrown away, which matters on data unlike ImageNet).

The block groups are timm's own (``feature_info`` / ``forward_intermediates``), so no layer
names are parsed here; the last group is the backbone's usual pooled output, so a multi-layer
vector ends with exactly the ``last`` features.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.core.choices import FEATURE_LAYERS
from headstart.core.choices import TTA_CHOICES as TTA_CHOICES  # callers import it from here too

if TYPE_CHECKING:
    from torch.nn import Module

    from headstart.models.backbones import TimmModel


LAYER_CHOICES = FEATURE_LAYERS


def stage_widths(model: TimmModel) -> list[int]:
    """Channels of each intermediate block group timm reports for ``model``."""
    info = model.feature_info
    if hasattr(info, "channels"):
        return [int(c) for c in info.channels()]
    return [int(f["num_chs"]) for f in info]


def layer_group_widths(model: TimmModel) -> list[int]:
    """Width of each group of a multi-layer vector: every block group's channels, then the
    pooled last features."""
    return [*stage_widths(model), int(model.num_features)]


def multi_layer_module(model: TimmModel) -> Module:
    """A torch module: images -> concat(global-average-pool of each block group's output, the
    usual pooled last features), one forward pass."""
    import torch

    if not hasattr(model, "forward_intermediates"):
        from headstart.core.errors import ParameterError

        raise ParameterError("features", f"{type(model).__name__} has no forward_intermediates: use 'last'")

    class MultiLayer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            final, stages = self.net.forward_intermediates(x)
            pooled = [s.mean(dim=(2, 3)) for s in stages]
            return torch.cat([*pooled, self.net.forward_head(final, pre_logits=True)], dim=1)

    return MultiLayer().eval()


def candidate_group_sets(n_groups: int) -> list[list[int]]:
    """Which groups the head may use: the last features alone, then the deepest block groups
    added one at a time down to all of them (deep groups are the most general; shallow ones add
    texture and colour statistics that data unlike ImageNet needs)."""
    last = n_groups - 1
    return [list(range(first, n_groups)) for first in range(last, -1, -1)]


RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(0, 6, 13))


def choose_layer_groups(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, group_widths: list[int]
) -> tuple[list[int], dict[str, Any]]:
    """The feature groups that predict the validation split best, and the search's record.

    Each candidate (``candidate_group_sets``) is scored by ridge regressions onto one-hot labels
    on its standardised columns, at every strength in ``RIDGE_ALPHAS`` (so a wider candidate is
    not judged at a narrower one's strength): the lowest validation squared error (smoother than
    accuracy on a small validation split). A candidate within 0.5% of the best with fewer groups
    wins. Why ridge: one eigendecomposition gives every strength at once, a few seconds in all
    where a logistic regression per candidate and strength takes minutes.
    """
    bounds = np.cumsum([0, *group_widths])
    mean, scale = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    xs = ((x_train - mean) / scale).astype(np.float64)
    xvs = ((x_val - mean) / scale).astype(np.float64)
    labels = np.unique(y_train)
    onehot = (y_train[:, None] == labels[None, :]).astype(np.float64)
    target_val = (y_val[:, None] == labels[None, :]) - onehot.mean(axis=0)
    targets = onehot - onehot.mean(axis=0)
    rows = [
        _ridge_candidate(xs[:, cols], targets, xvs[:, cols], target_val, labels, y_val, groups)
        for groups in candidate_group_sets(len(group_widths))
        for cols in [np.concatenate([np.arange(bounds[g], bounds[g + 1]) for g in groups])]
    ]
    lowest = min(r["val_squared_error"] for r in rows)
    best = min((r for r in rows if r["val_squared_error"] <= lowest * 1.005), key=lambda r: len(r["groups"]))
    return best["groups"], {"chosen_groups": best["groups"], "group_widths": group_widths, "search": rows}


def _ridge_candidate(
    x: np.ndarray,
    targets: np.ndarray,
    x_val: np.ndarray,
    target_val: np.ndarray,
    labels: np.ndarray,
    y_val: np.ndarray,
    groups: list[int],
) -> dict[str, Any]:
    """One candidate's ridge fits at every strength, from one eigendecomposition; its best row.

    With fewer images than columns the decomposition is of the images' Gram matrix ``x x^T``
    (n x n), else of the covariance ``x^T x`` (d x d): the same predictions, since
    ``(x^T x + a I)^-1 x^T = x^T (x x^T + a I)^-1``, from the smaller of the two."""
    t0 = time.perf_counter()
    if len(x) < x.shape[1]:
        eigenvalues, vectors = np.linalg.eigh(x @ x.T)
        projected, rotated = vectors.T @ targets, x_val @ x.T @ vectors
    else:
        eigenvalues, vectors = np.linalg.eigh(x.T @ x)
        projected, rotated = vectors.T @ (x.T @ targets), x_val @ vectors
    best: dict[str, Any] = {}
    for alpha in RIDGE_ALPHAS:
        pred = rotated @ (projected / (eigenvalues + alpha)[:, None])
        error = float(((pred - target_val) ** 2).sum(axis=1).mean())
        if not best or error < best["val_squared_error"]:
            accuracy = float((labels[pred.argmax(1)] == y_val).mean())
            best = {"alpha": alpha, "val_squared_error": error, "val_accuracy": accuracy}
    return {"groups": groups, "width": x.shape[1], **best, "seconds": time.perf_counter() - t0}
