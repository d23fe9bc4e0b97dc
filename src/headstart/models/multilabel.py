"""The multi-label head: one-vs-rest logistic regression on standardised features.

One binary logistic regression per class, each giving the probability that the image carries
that label (a sigmoid, independent of the other classes). Its arrays have the single-label
logistic head's names and shapes (``mean``, ``scale``, ``coef`` (classes x features),
``intercept``), so fine-tuning and export build on it the same way, with a sigmoid where the
single-label head has a softmax.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

from headstart.core.probability import binary_log_loss, sigmoid
from headstart.models.heads import Head, LinearOnStandardised

MULTILABEL_HEAD = "multilabel-logistic"


def _fit_binary(x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """One class's weights and bias; a class that is always (or never) present in ``y`` gets
    zero weights and the log-odds of its (clipped) rate."""
    from sklearn.linear_model import LogisticRegression

    rate = float(y.mean()) if len(y) else 0.0
    if rate in (0.0, 1.0):
        rate = min(max(rate, 1e-3), 1 - 1e-3)
        return np.zeros(x.shape[1], dtype=np.float32), float(np.log(rate / (1 - rate)))
    model = LogisticRegression(C=c, max_iter=300, tol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y.astype(np.int64))
    return model.coef_[0].astype(np.float32), float(model.intercept_[0])


class MultiLabelLogisticHead(LinearOnStandardised, Head):
    """One-vs-rest logistic regression; ``C`` (shared by the classes) chosen on validation by the
    mean binary log-loss, then refitted on train + validation (``refit``).

    ``val_proba`` (not saved) holds the chosen train-only model's validation probabilities:
    per-class thresholds are chosen on them, since the refitted model has seen validation.
    """

    name = MULTILABEL_HEAD

    def _fit_all(self, xs: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
        pairs = [_fit_binary(xs, y[:, k], c) for k in range(y.shape[1])]
        return np.stack([w for w, _ in pairs]), np.array([b for _, b in pairs], dtype=np.float32)

    def fit(self, x, y, x_val, y_val, n_classes):  # type: ignore[override]
        """``y`` and ``y_val``: multi-hot rows (or class indices, taken as one label each)."""
        y, y_val = _as_multi_hot(y, n_classes), _as_multi_hot(y_val, n_classes)
        self.mean, self.scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        xs = ((x - self.mean) / self.scale).astype(np.float32)
        xvs = ((x_val - self.mean) / self.scale).astype(np.float32)
        sweep: list[dict[str, Any]] = []
        best: tuple[np.ndarray, np.ndarray] | None = None
        rises = 0
        for c in sorted(self.cs):
            # Validation loss is U-shaped in C: after two rises past the best, larger Cs are not tried.
            t0 = time.perf_counter()
            coef, intercept = self._fit_all(xs, y, c)
            proba = sigmoid(xvs @ coef.T + intercept)
            sweep.append(
                {"C": c, "val_log_loss": binary_log_loss(y_val, proba), "seconds": time.perf_counter() - t0}
            )
            if min(sweep, key=lambda r: r["val_log_loss"]) is sweep[-1]:
                best, self.val_proba, rises = (coef, intercept), proba, 0
            else:
                rises += 1
                if rises >= 2:
                    break
        self.C = min(sweep, key=lambda r: r["val_log_loss"])["C"]
        assert best is not None
        self.coef, self.intercept = best
        if self.refit:
            x_all, y_all = np.concatenate([x, x_val]), np.concatenate([y, y_val])
            self.mean, self.scale = x_all.mean(axis=0), x_all.std(axis=0) + 1e-6
            self.coef, self.intercept = self._fit_all(
                ((x_all - self.mean) / self.scale).astype(np.float32), y_all, self.C
            )
        return {"C": self.C, "sweep": sweep, "refit_on_train_val": self.refit}

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """Each class's logit (log-odds)."""
        return ((x - self.mean) / self.scale) @ self.coef.T + self.intercept

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Each class's probability, independently (rows need not sum to 1)."""
        return sigmoid(self.decision_function(x))


def _as_multi_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2:
        return y.astype(np.float32)
    out = np.zeros((len(y), n_classes), dtype=np.float32)
    out[np.arange(len(y)), y.astype(int)] = 1.0
    return out
