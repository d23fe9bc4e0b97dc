"""The reject threshold's coverage target and the held-out-class measure of "unknown"."""

from __future__ import annotations

import numpy as np
import pytest

from headstart.estimator.openset import fold_scorer
from headstart.evaluation.heldout import auroc, held_out_folds, held_out_summary
from headstart.evaluation.reject import choose_threshold, coverage_threshold


def test_the_coverage_rule_raises_the_threshold_of_an_accurate_model():
    scores = np.linspace(0.5, 0.99, 20)[::-1]  # 20 known images, all right
    correct = np.ones(20)
    assert choose_threshold(scores, correct, 0.95).threshold == 0.0  # the accuracy rule alone
    choice = choose_threshold(scores, correct, 0.95, target_coverage=0.95)
    assert choice.set_by == "coverage" and choice.coverage == 0.95  # 1 of 20 turned down
    assert choice.threshold == pytest.approx(scores[-1])
    assert (scores > choice.threshold).sum() == 19


def test_the_accuracy_rule_wins_when_it_needs_more():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 0, 0])
    choice = choose_threshold(scores, correct, 1.0, target_coverage=0.75)
    assert choice.set_by == "accuracy" and choice.threshold == 0.7 and choice.coverage == 0.5


def test_coverage_threshold_keeps_ties_together():
    assert coverage_threshold(np.array([0.9, 0.5, 0.5, 0.1]), 0.5) == 0.1  # both 0.5s accepted
    assert coverage_threshold(np.array([0.9, 0.8]), 1.0) == 0.0
    assert coverage_threshold(np.zeros(0), 0.95) == 0.0


def test_auroc():
    assert auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auroc(np.array([0.1]), np.array([0.9])) == 0.0


def test_held_out_folds_on_separable_clusters():
    """Four well-separated clusters: a class left out of the head lands far from the bank, so
    its images score low (AUROC near 1) and the threshold turns most of them down."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 16)) * 4

    def draw(n):
        y = np.repeat(np.arange(4), n)
        return centres[y] + rng.normal(0, 0.5, (len(y), 16)), y

    x_train, y_train = draw(20)
    x_val, y_val = draw(6)
    scorer = fold_scorer(1.0, 1.0, True, 0)
    folds = held_out_folds(x_train, y_train, x_val, y_val, list("abcd"), 0.5, scorer)
    assert [f.held_out for f in folds] == list("abcd")
    assert all(f.n_unknown == 6 and f.n_known == 18 for f in folds)
    summary = held_out_summary(folds, 0.5)
    assert summary["auroc"] > 0.95
    assert summary["turned_down"] > summary["known_turned_down"]


def test_report_sections_read_metrics_and_errors_csv(tmp_path):
    import json

    from PIL import Image

    from headstart.core.io import write_rows
    from headstart.reporting.unknown import error_extras, unknown_section

    assert unknown_section({}) == ""
    folds = [
        {
            "held_out": "tulips",
            "n_unknown": 8,
            "n_known": 30,
            "auroc": 0.9,
            "turned_down": 0.5,
            "known_turned_down": 0.05,
        }
    ]
    reject = {
        "threshold": 0.4, "score": "max_probability*knn", "mode": "auto", "target_accuracy": 0.95,
        "target_coverage": 0.95, "threshold_set_by": "coverage", "coverage": 0.96, "accuracy_accepted": 0.97,
        "held_out_class": {"auroc": 0.9, "turned_down": 0.5, "known_turned_down": 0.05, "folds": folds},
    }  # fmt: skip
    html = unknown_section({"reject": reject})
    assert (
        "0.4000" in html and "coverage rule" in html and 'held-out-auroc">0.900' in html and "tulips" in html
    )
    photo = tmp_path / "p.png"
    Image.new("RGB", (20, 20), (10, 200, 10)).save(photo)
    (tmp_path / "errors").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "errors" / "o.png")
    near = json.dumps([{"path": str(photo), "label": "roses", "similarity": 0.8}])
    write_rows(
        tmp_path / "errors.csv", ["path", "overlay", "neighbours"], [[str(photo), "errors/o.png", near]]
    )
    extra = error_extras(tmp_path)[str(photo)]
    assert 'class="heatmap"' in extra and "roses (0.80)" in extra
