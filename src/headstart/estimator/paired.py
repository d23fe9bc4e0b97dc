"""How sure auto is of its winner: the winner against the cheap probe on the same validation
images (exact McNemar, ``evaluation.intervals``), and the probe kept when the costlier winner is
not better beyond noise.

Why: validation sets are small (200 images: one image is half a point), and a model that costs
more to run (a second backbone, a bigger one, TTA, several networks averaged) and wins by one or
two images has not shown it is worth its price, which the user pays on every prediction and
export. The rule: such a winner must win the one-sided exact McNemar test against the probe at
the 5% level, else the probe is the model.

A winner that runs at the probe's cost (the same backbone, one network, one view: a fine-tuned
network, multi-layer features) is kept on its higher validation accuracy, and the test is
reported only: nothing is saved by the probe, and at flowers' 362 validation images a fine-tune
that is better is rarely better "beyond noise" (``last:3``: 8 fixed, 6 broken, p = 0.40; on the
test split 0.9661 against the probe's 0.9323). Its training time is spent by then.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import numpy as np

from headstart.evaluation.intervals import better_beyond_noise, compare_paired

ALPHA = 0.05


class Scored(Protocol):
    """What this needs of an auto candidate."""

    name: str
    kind: str
    val_proba: np.ndarray | None
    fitted: Any


C = TypeVar("C", bound=Scored)


def prefer_cheaper(
    best: C,
    probe: C,
    y_val: np.ndarray,
    best_proba: Any = None,
    probe_proba: Any = None,
    same_cost: bool = False,
) -> tuple[C, dict[str, Any]]:
    """``best`` if it beats ``probe`` beyond noise on the validation images, or if it runs at the
    probe's cost (``same_cost``), else ``probe``; and the record of the paired test
    (``metrics.json``'s ``auto.paired``). The probabilities compared are the candidates'
    ``val_proba`` unless given (on images ``y_val`` labels)."""
    best_proba = best.val_proba if best_proba is None else best_proba
    probe_proba = probe.val_proba if probe_proba is None else probe_proba
    if (
        best is probe
        or probe.kind != "probe"
        or probe.fitted is None
        or probe_proba is None
        or best_proba is None
    ):
        return best, {"test": "none", "why": "the probe won, or it cannot be the model"}
    cmp = compare_paired(y_val, probe_proba.argmax(axis=1), best_proba.argmax(axis=1))
    sure = better_beyond_noise(cmp, ALPHA)
    kept = sure or same_cost
    record = {
        "test": "exact McNemar, one-sided (best better than the probe)",
        "best": best.name,
        "against": probe.name,
        "n_val": cmp.n,
        "best_fixes": cmp.only_b_right,
        "best_breaks": cmp.only_a_right,
        "p_value": round(cmp.p_b_better, 6),
        "alpha": ALPHA,
        "beyond_noise": sure,
        "same_cost": same_cost,
        "rule": "the same cost to run: the higher validation accuracy"
        if same_cost
        else "costlier to run: only when better beyond noise",
        "chosen": best.name if kept else probe.name,
    }
    return (best if kept else probe), record


__all__ = ["ALPHA", "prefer_cheaper"]
