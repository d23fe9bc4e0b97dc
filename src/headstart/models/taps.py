"""Multi-layer features: pooled activations of several block groups of a timm backbone, taken
in one forward pass (Head2Toe, Evci et al., ICML 2022: intermediate layers carry what the last
one has thrown away, which matters on data unlike ImageNet).

The block groups are timm's own (``feature_info`` / ``forward_intermediates``), so no layer
names are parsed here; the last group is the backbone's usual pooled output, so a multi-layer
vector ends with exactly the ``last`` features.
"""

from __future__ import annotations

from typing import Any

LAYER_CHOICES = ("last", "multi")


def stage_widths(model: Any) -> list[int]:
    """Channels of each intermediate block group timm reports for ``model``."""
    info = model.feature_info
    if hasattr(info, "channels"):
        return [int(c) for c in info.channels()]
    return [int(f["num_chs"]) for f in info]


def layer_group_widths(model: Any) -> list[int]:
    """Width of each group of a multi-layer vector: every block group's channels, then the
    pooled last features."""
    return [*stage_widths(model), int(model.num_features)]


def multi_layer_module(model: Any) -> Any:
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


def choose_layer_groups(
    x_train: Any, y_train: Any, x_val: Any, y_val: Any, group_widths: list[int], c: float = 0.1
) -> tuple[list[int], dict[str, Any]]:
    """The feature groups that predict the validation split best, and the search's record.

    Each candidate (``candidate_group_sets``) is scored by a logistic regression on its
    standardised columns, each group scaled by 1/sqrt(its width) so a wide group does not drown
    a narrow one at a shared ``c``; lowest validation log-loss wins, ties to fewer groups.
    """
    import time
    import warnings

    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    bounds = np.cumsum([0, *group_widths])
    mean, scale = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    weight = np.concatenate([np.full(w, 1 / np.sqrt(w)) for w in group_widths])
    xs, xvs = (x_train - mean) / scale * weight, (x_val - mean) / scale * weight
    labels = np.unique(y_train)
    rows: list[dict[str, Any]] = []
    for groups in candidate_group_sets(len(group_widths)):
        cols = np.concatenate([np.arange(bounds[g], bounds[g + 1]) for g in groups])
        t0 = time.perf_counter()
        model = LogisticRegression(C=c * len(groups), max_iter=200, tol=1e-3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(xs[:, cols], y_train)
        proba = model.predict_proba(xvs[:, cols])
        known = np.isin(y_val, labels)
        rows.append(
            {
                "groups": groups,
                "width": len(cols),
                "val_log_loss": float(log_loss(y_val[known], proba[known], labels=labels)),
                "val_accuracy": float((labels[proba.argmax(1)] == y_val).mean()),
                "seconds": time.perf_counter() - t0,
            }
        )
    best = min(rows, key=lambda r: (round(r["val_log_loss"], 4), len(r["groups"])))
    return best["groups"], {"chosen_groups": best["groups"], "group_widths": group_widths, "search": rows}
