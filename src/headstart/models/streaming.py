"""The logistic head trained in mini-batches, for feature matrices that do not fit in memory.

Same model and same choice as ``LogisticHead`` (multinomial logistic regression on standardised
features; the L2 strength ``C`` chosen on the validation split by log-loss, then refitted on
train + validation), but the features are read a chunk at a time, so memory does not grow with
the number of images. Every ``C`` of the sweep is trained at once, one pass over the data per
epoch (a stacked linear layer, one slice per ``C``; Adam is element-wise, so the slices train as
separate models would). Saved as the same arrays (``mean``, ``scale``, ``coef``, ``intercept``),
so export and prediction treat it as a logistic head.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from headstart.models.heads import LogisticHead, SweepRow, log_loss, softmax


class Rows(Protocol):
    """Features a row range at a time: a numpy array, or a feature store (which also streams
    ``chunks``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice, /) -> np.ndarray: ...


CHUNK_ROWS = 8192


def _chunks(x: Rows, rows: int | None = None) -> Iterator[np.ndarray]:
    """float32 rows of an array, or of anything with ``chunks(rows)`` (a feature store)."""
    rows = rows or CHUNK_ROWS
    if hasattr(x, "chunks"):
        yield from x.chunks(rows)
        return
    for start in range(0, len(x), rows):
        yield np.asarray(x[start : start + rows], dtype=np.float32)


def _moments(sources: list[Rows]) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and standard deviation over the rows of every source, a chunk at a time."""
    total: Any = 0.0
    squares: Any = 0.0
    n = 0
    for source in sources:
        for chunk in _chunks(source):
            c = chunk.astype(np.float64)
            total, squares, n = total + c.sum(axis=0), squares + (c * c).sum(axis=0), n + len(c)
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(squares / max(n, 1) - mean * mean, 0.0))
    return mean.astype(np.float32), (std + 1e-6).astype(np.float32)


class StreamingLogisticHead(LogisticHead):
    """``LogisticHead`` fitted by mini-batch Adam on chunks of a feature store.

    Args:
        cs: the inverse L2 strengths tried (as ``LogisticHead``'s).
        refit: refit on train + validation with the chosen ``C``.
        epochs: passes over the data (more for small data: at least ``min_steps`` updates).
        batch_size: rows per update.
        lr: Adam's initial learning rate (cosine decay to zero).
        seed: shuffling and initialisation.
    """

    name = "logistic-sgd"

    def __init__(
        self,
        cs: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
        refit: bool = True,
        epochs: int = 6,
        batch_size: int = 512,
        lr: float = 3e-3,
        seed: int = 0,
        min_steps: int = 600,
    ) -> None:
        super().__init__(cs, refit)
        self.epochs, self.batch_size, self.lr, self.seed, self.min_steps = (
            epochs,
            batch_size,
            lr,
            seed,
            min_steps,
        )

    def fit(self, x, y, x_val, y_val, n_classes):  # type: ignore[override]
        cs = sorted(self.cs)
        t0 = time.perf_counter()
        self.mean, self.scale = _moments([x])
        weights = self._train([x], [np.asarray(y)], cs, n_classes)
        losses = self._val_scores(x_val, np.asarray(y_val), weights)
        seconds = (time.perf_counter() - t0) / len(cs)
        sweep = [
            SweepRow(C=c, val_log_loss=loss, val_accuracy=acc, seconds=seconds)
            for c, (loss, acc) in zip(cs, losses)
        ]
        best = min(range(len(cs)), key=lambda i: self._rank(sweep[i]))
        self.C = cs[best]
        if self.refit:
            self.mean, self.scale = _moments([x, x_val])
            weights = self._train([x, x_val], [np.asarray(y), np.asarray(y_val)], [self.C], n_classes)
            best = 0
        self.coef, self.intercept = weights[0][best], weights[1][best]
        return {"C": self.C, "sweep": sweep, "refit_on_train_val": self.refit, "streaming": True}

    def _batches(
        self, sources: list[Rows], labels: list[np.ndarray], rng: np.random.Generator
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Standardised mini-batches of every source, chunk by chunk, shuffled within a chunk."""
        for source, y in zip(sources, labels):
            start = 0
            for chunk in _chunks(source):
                xs = (chunk - self.mean) / self.scale
                ys = y[start : start + len(chunk)]
                start += len(chunk)
                order = rng.permutation(len(chunk))
                for b in range(0, len(order), self.batch_size):
                    idx = order[b : b + self.batch_size]
                    yield xs[idx], ys[idx]

    def _train(
        self, sources: list[Rows], labels: list[np.ndarray], cs: list[float], n_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients and intercepts, one per ``C``, of mean cross-entropy + ||W||^2 / (2 C n)."""
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # updates this small are slower split across threads
        try:
            return self._descend(sources, labels, cs, n_classes)
        finally:
            torch.set_num_threads(threads)

    def _descend(
        self, sources: list[Rows], labels: list[np.ndarray], cs: list[float], n_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        import torch

        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        n = sum(len(y) for y in labels)
        d = len(self.mean)
        weight = torch.zeros((len(cs), d, n_classes), requires_grad=True)
        bias = torch.zeros((len(cs), 1, n_classes), requires_grad=True)
        decay = torch.tensor([1.0 / (2.0 * c * n) for c in cs]).view(-1, 1, 1)
        opt = torch.optim.Adam([weight, bias], lr=self.lr)
        per_epoch = max(1, math.ceil(n / self.batch_size))
        epochs = max(self.epochs, math.ceil(self.min_steps / per_epoch))
        total, step = epochs * per_epoch, 0
        for _ in range(epochs):
            for xb, yb in self._batches(sources, labels, rng):
                for group in opt.param_groups:
                    group["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                xt = torch.from_numpy(np.ascontiguousarray(xb, dtype=np.float32))
                yt = torch.from_numpy(yb.astype(np.int64)).repeat(len(cs))
                logits = torch.matmul(xt.unsqueeze(0), weight) + bias
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, n_classes), yt, reduction="sum")
                loss = loss / len(xb) + (decay * weight * weight).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
        coef = weight.detach().numpy().transpose(0, 2, 1).astype(np.float32)
        return coef, bias.detach().numpy()[:, 0, :].astype(np.float32)

    def _val_scores(
        self, x_val: Rows, y_val: np.ndarray, weights: tuple[np.ndarray, np.ndarray]
    ) -> list[tuple[float, float]]:
        """(log-loss, accuracy) on validation of each ``C``'s model, a chunk at a time."""
        coef, intercept = weights
        loss = np.zeros(len(coef))
        right = np.zeros(len(coef))
        start = 0
        for chunk in _chunks(x_val):
            xs = (chunk - self.mean) / self.scale
            ys = y_val[start : start + len(chunk)]
            start += len(chunk)
            for i in range(len(coef)):
                proba = softmax(xs @ coef[i].T + intercept[i])
                loss[i] += log_loss(proba, ys) * len(ys)
                right[i] += float((proba.argmax(1) == ys).sum())
        n = max(len(y_val), 1)
        return [(float(loss[i] / n), float(right[i] / n)) for i in range(len(coef))]

    def params(self):  # type: ignore[override]
        return {
            **super().params(),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "seed": self.seed,
            "min_steps": self.min_steps,
        }

    @classmethod
    def restore(cls, arrays, params):  # type: ignore[override]
        settings = {k: params[k] for k in ("epochs", "batch_size", "lr", "seed", "min_steps") if k in params}
        head = cls(cs=tuple(params.get("cs", ())), refit=params.get("refit", True), **settings)
        head.C = params.get("C")
        for key in ("mean", "scale", "coef", "intercept"):
            setattr(head, key, np.asarray(arrays[key], dtype=np.float32))
        return head
