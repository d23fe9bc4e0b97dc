"""Classifier heads trained on cached features.

Each head saves itself as plain arrays plus JSON-able parameters (no pickle), so a bundle
can be loaded anywhere without trusting code inside it.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict, TypeVar

import numpy as np

from headstart.core.probability import log_loss, softmax

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

L = TypeVar("L", bound="LinearOnStandardised")


class _SweepFigures(TypedDict):
    C: float
    val_log_loss: float
    val_accuracy: float
    seconds: float


class SweepRow(_SweepFigures, total=False):
    """One regularisation strength a linear head tried: its validation figures and time
    (``widened``: tried beyond the grid's edge)."""

    widened: bool


class Head:
    """Common interface: ``fit`` on train (choosing settings on val), ``predict_proba``."""

    name: ClassVar[str] = "head"
    registry: ClassVar[dict[str, type[Head]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        Head.registry[cls.name] = cls

    def fit(
        self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, n_classes: int
    ) -> dict[str, Any]:
        raise NotImplementedError

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> Head:
        raise NotImplementedError


def make_head(name: str, **params: Any) -> Head:
    if name not in Head.registry:
        raise ValueError(f"unknown head '{name}': choose one of {', '.join(sorted(Head.registry))}")
    return Head.registry[name](**params)


def restore_head(name: str, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> Head:
    return Head.registry[name].restore(arrays, params)


def next_c(c: float, upward: bool) -> float:
    """The next regularisation strength beyond ``c`` on the 1-3-10 grid (factors of ~3): 0.003 ->
    0.001 -> 0.0003 downward, 1 -> 3 -> 10 upward."""
    decade = 10.0 ** np.floor(np.log10(c) + 1e-9)
    leading = 3.0 if c / decade >= 2.0 else 1.0
    if upward:
        return float(f"{(decade * 10 if leading == 3.0 else decade * 3):.0e}")
    return float(f"{(decade if leading == 3.0 else decade * 0.3):.0e}")


class LinearOnStandardised:
    """What a linear head on standardised features saves and restores (its ``mean``, ``scale``,
    ``coef``, ``intercept``, and the ``C`` chosen from ``cs``), shared by the softmax and the
    one-vs-rest logistic heads."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    C: float | None  # float once fitted; None in a bundle saved without one
    cs: tuple[float, ...]
    refit: bool

    def __init__(
        self, cs: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0), refit: bool = True
    ) -> None:
        self.cs = tuple(cs)
        self.refit = refit

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "scale": self.scale, "coef": self.coef, "intercept": self.intercept}

    def params(self) -> dict[str, Any]:
        return {"C": self.C, "cs": list(self.cs), "refit": self.refit}

    @classmethod
    def restore(cls: type[L], arrays: dict[str, np.ndarray], params: dict[str, Any]) -> L:
        head = cls(cs=tuple(params.get("cs", ())), refit=params.get("refit", True))
        head.C = params.get("C")
        for key in ("mean", "scale", "coef", "intercept"):
            setattr(head, key, np.asarray(arrays[key], dtype=np.float32))
        return head


def averaged_linear_head(heads: Sequence[Head]) -> Head:
    """One head, on the members' features concatenated in order, whose logits are the mean of
    ``heads``' logits (softmax of the mean logits: an ensemble of fine-tuned networks saved,
    exported and served as one model). Standardising is per column, so each member keeps its
    own means and scales; each member's weights are divided by the number of members."""
    linear = [h for h in heads if isinstance(h, LinearOnStandardised)]
    if len(linear) != len(heads):
        raise ValueError("only linear heads on standardised features can be averaged")
    first, n = linear[0], len(linear)
    arrays = {
        "mean": np.concatenate([h.mean for h in linear]),
        "scale": np.concatenate([h.scale for h in linear]),
        "coef": np.concatenate([h.coef for h in linear], axis=1) / n,
        "intercept": np.mean([h.intercept for h in linear], axis=0),
    }
    averaged = type(first).restore(arrays, first.params())
    assert isinstance(averaged, Head)  # a linear head class is a Head too
    return averaged


class LogisticHead(LinearOnStandardised, Head):
    """Multinomial logistic regression on standardised features.

    ``C`` is chosen on the validation split (lowest log-loss), then the model is refitted on
    train + validation with that ``C``: the split's images all end up teaching the model.
    When the best ``C`` is the smallest or the largest tried, the grid widens beyond that edge
    (factors of ~3, up to ``C_LIMITS``) until the best is inside it: an optimum on the edge of
    a grid was never shown to be one.
    """

    name = "logistic"
    C_LIMITS = (1e-5, 1e3)
    # lbfgs stops when the largest gradient entry is under the tolerance. The weights' error is
    # at most that gradient times the objective's flattest curvature, 1/(C n), so it grows with C:
    # the tolerance is TOL up to C = TOL_C and shrinks as 1/C beyond (not under TOL_FLOOR).
    # Rule: tight enough that a far tighter solve (tol 1e-6, 5000 iterations) chooses the same
    # C; checked on the flowers features and on generated data (tests/test_head_sweep.py).
    TOL = 1e-3
    TOL_C = 0.1
    TOL_FLOOR = 1e-6
    MAX_ITER = 1000

    def _fit_one(
        self, x: np.ndarray, y: np.ndarray, c: float, warm: LogisticRegression | None = None
    ) -> LogisticRegression:
        from sklearn.linear_model import LogisticRegression

        model = warm or LogisticRegression(warm_start=True)
        tol = max(self.TOL_FLOOR, self.TOL * min(1.0, self.TOL_C / c))
        model.set_params(C=c, tol=tol, max_iter=self.MAX_ITER)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(np.asarray(x, dtype=np.float32), y)
        return model

    def fit(self, x, y, x_val, y_val, n_classes):  # type: ignore[override]
        from threadpoolctl import threadpool_limits

        # One BLAS/OpenMP thread: each lbfgs step multiplies by a skinny (classes x features)
        # matrix, too small to share out; a second thread costs more in hand-offs than it saves,
        # ten times more when another process holds the other core (benchmarks/iteration_speed.md).
        with threadpool_limits(limits=1):
            return self._fit_sweep(x, y, x_val, y_val, n_classes)

    def _fit_sweep(
        self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, n_classes: int
    ) -> dict[str, Any]:
        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0) + 1e-6
        sweep = _Sweep(
            self, (x - self.mean) / self.scale, y, (x_val - self.mean) / self.scale, y_val, n_classes
        )
        rises = 0
        for c in sorted(self.cs):
            # Small C first, each fit warm-started from the last. Validation loss is U-shaped
            # in C, so after two rises past the best the larger (slower) Cs are not tried.
            rises = 0 if sweep.try_c(c, sweep.last_model) else rises + 1
            if rises >= 2:
                break
        widened = sweep.widen(self.C_LIMITS)
        self.C = sweep.best["C"]
        # the train-only model's validation probabilities at the chosen C: calibration's input,
        # kept so it need not fit that model again (fitted state of this fit, never saved)
        self.held_out_val_proba_ = sweep.best_val_proba
        if self.refit:
            x_all = np.concatenate([x, x_val])
            y_all = np.concatenate([y, y_val])
            self.mean = x_all.mean(axis=0)
            self.scale = x_all.std(axis=0) + 1e-6
            model = self._fit_one((x_all - self.mean) / self.scale, y_all, self.C)
        else:
            model = sweep.best_model
        self.coef, self.intercept = self._full_weights(model, n_classes)
        return {"C": self.C, "sweep": sweep.rows, "widened": widened, "refit_on_train_val": self.refit}

    @staticmethod
    def _rank(row: SweepRow) -> tuple[float, float]:
        return (row["val_log_loss"], -row["val_accuracy"])

    @staticmethod
    def _full_weights(model: LogisticRegression, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """Weights for all classes (a class absent from training gets -inf logits)."""
        coef = np.zeros((n_classes, model.coef_.shape[1]), dtype=np.float32)
        intercept = np.full(n_classes, -1e4, dtype=np.float32)
        classes = model.classes_.astype(int)
        if len(classes) == 2 and model.coef_.shape[0] == 1:  # binary: sigmoid == 2-way softmax
            coef[classes[1]] = model.coef_[0] / 2
            coef[classes[0]] = -model.coef_[0] / 2
            intercept[classes[1]] = model.intercept_[0] / 2
            intercept[classes[0]] = -model.intercept_[0] / 2
        else:
            coef[classes] = model.coef_
            intercept[classes] = model.intercept_
        return coef, intercept

    def _full_proba(self, model: LogisticRegression, xs: np.ndarray, n_classes: int) -> np.ndarray:
        coef, intercept = self._full_weights(model, n_classes)
        return softmax(xs @ coef.T + intercept)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return softmax(((x - self.mean) / self.scale) @ self.coef.T + self.intercept)


class _Sweep:
    """The validation sweep of a LogisticHead over C: one row per C tried, and the best model."""

    def __init__(
        self,
        head: LogisticHead,
        xs: np.ndarray,
        y: np.ndarray,
        xvs: np.ndarray,
        y_val: np.ndarray,
        n_classes: int,
    ) -> None:
        self.head, self.xs, self.y, self.xvs, self.y_val = head, xs, y, xvs, y_val
        self.n_classes = n_classes
        self.rows: list[SweepRow] = []
        self.last_model: LogisticRegression | None = None
        self.best_model: LogisticRegression | None = None
        self.best_val_proba: np.ndarray | None = None

    @property
    def best(self) -> SweepRow:
        return min(self.rows, key=LogisticHead._rank)

    def try_c(self, c: float, warm: LogisticRegression | None) -> bool:
        """Fit at ``c`` (warm-started from ``warm``, which it updates) and score on validation;
        whether it is the best so far."""
        t0 = time.perf_counter()
        model = self.head._fit_one(self.xs, self.y, c, warm)
        proba = self.head._full_proba(model, self.xvs, self.n_classes)
        self.rows.append(
            {
                "C": c,
                "val_log_loss": log_loss(proba, self.y_val),
                "val_accuracy": float((proba.argmax(1) == self.y_val).mean()),
                "seconds": time.perf_counter() - t0,
            }
        )
        self.last_model = model
        if self.best is self.rows[-1]:
            self.best_model, self.best_val_proba = copy.deepcopy(model), proba
            return True
        return False

    def widen(self, limits: tuple[float, float]) -> bool:
        """Try Cs beyond the edge the best one sits on, one at a time (warm-started from the best
        model), until the best is inside the tried range or the next C is past ``limits``;
        whether any was tried. A widened row has ``"widened": True``."""
        widened = False
        while True:
            tried = [row["C"] for row in self.rows]
            best_c = self.best["C"]
            if best_c == min(tried):
                c = next_c(best_c, upward=False)
            elif best_c == max(tried):
                c = next_c(best_c, upward=True)
            else:
                return widened
            if not limits[0] <= c <= limits[1] or c in tried:
                return widened
            self.try_c(c, copy.deepcopy(self.best_model))
            self.rows[-1]["widened"] = widened = True


class MLPHead(Head):
    """The Keras tutorials' head: Dense(hidden, relu) -> Dropout -> softmax, on features.

    Trained with Adam and early stopping on validation loss; the best epoch is kept.
    """

    name = "mlp"

    def __init__(
        self,
        hidden: int = 256,
        dropout: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        epochs: int = 100,
        patience: int = 10,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        self.hidden, self.dropout, self.lr = hidden, dropout, lr
        self.weight_decay, self.epochs, self.patience = weight_decay, epochs, patience
        self.batch_size, self.seed = batch_size, seed

    def _module(self, d: int, n_classes: int):
        import torch

        return torch.nn.Sequential(
            torch.nn.Linear(d, self.hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(self.dropout),
            torch.nn.Linear(self.hidden, n_classes),
        )

    def fit(self, x, y, x_val, y_val, n_classes):  # type: ignore[override]
        import torch

        torch.manual_seed(self.seed)
        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0) + 1e-6
        xt = torch.from_numpy(((x - self.mean) / self.scale).astype(np.float32))
        yt = torch.from_numpy(y.astype(np.int64))
        xv = torch.from_numpy(((x_val - self.mean) / self.scale).astype(np.float32))
        yv = torch.from_numpy(y_val.astype(np.int64))
        net = self._module(x.shape[1], n_classes)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        loss_fn = torch.nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(self.seed)
        best, best_state, waited, history = float("inf"), None, 0, []
        for epoch in range(self.epochs):
            net.train()
            order = torch.randperm(len(xt), generator=gen)
            total = 0.0
            for i in range(0, len(order), self.batch_size):
                idx = order[i : i + self.batch_size]
                opt.zero_grad()
                loss = loss_fn(net(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            net.eval()
            with torch.no_grad():
                logits = net(xv)
                val_loss = float(loss_fn(logits, yv))
                val_acc = float((logits.argmax(1) == yv).float().mean())
            history.append(
                {"epoch": epoch + 1, "loss": total / len(xt), "val_loss": val_loss, "val_accuracy": val_acc}
            )
            if val_loss < best - 1e-4:
                best, waited = val_loss, 0
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                waited += 1
                if waited >= self.patience:
                    break
        assert best_state is not None
        net.load_state_dict(best_state)
        self.weights = {k: v.numpy() for k, v in best_state.items()}
        self.n_classes = n_classes
        self.best_epoch = int(min(history, key=lambda r: r["val_loss"])["epoch"])
        return {"best_epoch": self.best_epoch, "history": history}

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.scale
        h = np.maximum(z @ self.weights["0.weight"].T + self.weights["0.bias"], 0.0)
        return softmax(h @ self.weights["3.weight"].T + self.weights["3.bias"])

    def arrays(self):  # type: ignore[override]
        return {"mean": self.mean, "scale": self.scale, **{f"net.{k}": v for k, v in self.weights.items()}}

    def params(self):  # type: ignore[override]
        return {
            "hidden": self.hidden,
            "dropout": self.dropout,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "epochs": self.epochs,
            "patience": self.patience,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "best_epoch": getattr(self, "best_epoch", None),
        }

    @classmethod
    def restore(cls, arrays, params):  # type: ignore[override]
        head = cls(**{k: v for k, v in params.items() if k != "best_epoch"})
        head.best_epoch = params.get("best_epoch")
        head.mean = np.asarray(arrays["mean"], dtype=np.float32)
        head.scale = np.asarray(arrays["scale"], dtype=np.float32)
        head.weights = {
            k[4:]: np.asarray(v, dtype=np.float32) for k, v in arrays.items() if k.startswith("net.")
        }
        return head


class KNNHead(Head):
    """k nearest neighbours by cosine similarity, distance-weighted; k chosen on validation."""

    name = "knn"

    def __init__(self, ks: tuple[int, ...] = (1, 3, 5, 7, 11, 15, 21)) -> None:
        self.ks = tuple(ks)

    @staticmethod
    def _normalise(x: np.ndarray) -> np.ndarray:
        return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)

    def _model(self, x: np.ndarray, y: np.ndarray, k: int) -> KNeighborsClassifier:
        from sklearn.neighbors import KNeighborsClassifier

        k = min(k, len(x))
        return KNeighborsClassifier(n_neighbors=k, weights="distance", metric="euclidean").fit(
            self._normalise(x), y
        )

    def _proba(self, model: KNeighborsClassifier, x: np.ndarray) -> np.ndarray:
        proba = np.zeros((len(x), self.n_classes), dtype=np.float64)
        proba[:, model.classes_.astype(int)] = model.predict_proba(self._normalise(x))
        return proba

    def fit(self, x, y, x_val, y_val, n_classes):  # type: ignore[override]
        self.n_classes = n_classes
        sweep = []
        for k in self.ks:
            proba = self._proba(self._model(x, y, k), x_val)
            sweep.append({"k": k, "val_accuracy": float((proba.argmax(1) == y_val).mean())})
        self.k = int(max(sweep, key=lambda r: (r["val_accuracy"], -r["k"]))["k"])
        self.x = np.concatenate([x, x_val]).astype(np.float32)
        self.y = np.concatenate([y, y_val]).astype(np.int64)
        self._fitted = self._model(self.x, self.y, self.k)
        return {"k": self.k, "sweep": sweep}

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self._proba(self._fitted, x)

    def arrays(self):  # type: ignore[override]
        return {"x": self.x, "y": self.y}

    def params(self):  # type: ignore[override]
        return {"k": self.k, "ks": list(self.ks), "n_classes": self.n_classes}

    @classmethod
    def restore(cls, arrays, params):  # type: ignore[override]
        head = cls(ks=tuple(params["ks"]))
        head.k, head.n_classes = params["k"], params["n_classes"]
        head.x, head.y = np.asarray(arrays["x"], np.float32), np.asarray(arrays["y"], np.int64)
        head._fitted = head._model(head.x, head.y, head.k)
        return head
