"""How sure auto is of its winner: the winner against the cheap probe on the same validation
images (exact McNemar, ``evaluation.intervals``), and the probe kept when the costlier winner is
not better beyond noise.

Why: validation sets are small (200 images: one image is half a point), and a costlier model
(fine-tuned, a second backbone, TTA) that wins by one or two images has not shown it is better;
it costs more to train, to run and to export. The rule: the winner must win the one-sided exact
McNemar test against the probe at the 5% level, else the probe is the model.
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
    best: C, probe: C, y_val: np.ndarray, best_proba: Any = None, probe_proba: Any = None
) -> tuple[C, dict[str, Any]]:
    """``best`` if it beats ``probe`` beyond noise on the validation images, else ``probe``;
    and the record of the paired test (``metrics.json``'s ``auto.paired``). The probabilities
    compared are the candidates' ``val_proba`` unless given (on images ``y_val`` labels)."""
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
        "chosen": best.name if sure else probe.name,
    }
    return (best if sure else probe), record


__all__ = ["ALPHA", "prefer_cheaper"]
