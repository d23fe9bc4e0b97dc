"""Intervals and the paired test against known values (scipy's exact binomial test as reference)."""

import numpy as np
import pytest
from scipy.stats import binomtest

from headstart.data.corrections import Correction, apply_corrections, read_corrections, write_corrections
from headstart.data.discovery import Dataset, Sample
from headstart.estimator.paired import prefer_cheaper
from headstart.evaluation.comparison import Answer, compare_answers
from headstart.evaluation.intervals import (
    accuracy_ci95,
    better_beyond_noise,
    compare_paired,
    mcnemar_exact,
    wilson_interval,
)
from headstart.evaluation.metrics import classification_metrics


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (81, 263), (340, 365), (1, 2), (199, 200)])
def test_wilson_matches_scipy(k, n):
    low, high = wilson_interval(k, n)
    ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert low == pytest.approx(ref.low, abs=1e-9) and high == pytest.approx(ref.high, abs=1e-9)
    assert low <= k / n <= high


def test_wilson_known_values():
    # 0 of 10: the upper end is z^2 / (n + z^2)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753279), abs=1e-7)
    # the example: ~94% of 365 test images is about +-2.4 points
    low, high = wilson_interval(343, 365)
    assert 0.045 < high - low < 0.052
    assert np.isnan(wilson_interval(0, 0)[0])
    assert accuracy_ci95(np.array([True, True, False, True])) == accuracy_ci95(3, 4)


@pytest.mark.parametrize("b,c", [(1, 9), (0, 0), (5, 5), (12, 30), (0, 7), (40, 2)])
def test_exact_mcnemar_matches_binomial_test(b, c):
    expected = 1.0 if b + c == 0 else binomtest(c, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)
    greater = 1.0 if b + c == 0 else binomtest(c, b + c, 0.5, alternative="greater").pvalue
    assert mcnemar_exact(b, c, "greater") == pytest.approx(greater, rel=1e-12)


def test_mcnemar_known_value():
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)  # 2 * P(X <= 1), X ~ Bin(10, 1/2)


def test_paired_comparison_counts_discordant_pairs():
    y = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    a = np.array([0, 1, 1, 0, 2, 2, 0, 1])  # wrong on 1 and 3
    b = np.array([0, 0, 1, 1, 2, 0, 0, 1])  # fixes 1 and 3, breaks 5
    cmp = compare_paired(y, a, b)
    assert (cmp.only_b_right, cmp.only_a_right) == (2, 1)
    assert cmp.a_accuracy == 0.75 and cmp.b_accuracy == 0.875
    assert cmp.p_two_sided == pytest.approx(1.0)
    assert not better_beyond_noise(cmp)
    many = compare_paired(np.zeros(40, int), np.r_[np.zeros(20, int), np.ones(20, int)], np.zeros(40, int))
    assert better_beyond_noise(many) and many.p_b_better == pytest.approx(0.5**20)


def test_metrics_carry_intervals():
    y = np.array([0, 0, 1, 1, 1])
    proba = np.eye(2)[[0, 1, 1, 1, 0]]
    m = classification_metrics(y, proba, ["a", "b"], 1)
    assert m["accuracy_ci95"] == accuracy_ci95(3, 5)
    assert m["per_class"]["a"]["accuracy_ci95"] == accuracy_ci95(1, 2)
    assert m["per_class"]["b"]["accuracy_ci95"] == accuracy_ci95(2, 3)


class _Candidate:
    def __init__(self, name, kind, pred, n_classes=2):
        self.name, self.kind, self.fitted = name, kind, object()
        self.val_proba = np.eye(n_classes)[pred]


def test_auto_keeps_the_probe_unless_the_costlier_is_better_beyond_noise():
    y = np.zeros(200, int)
    probe = _Candidate("probe", "probe", np.r_[np.zeros(190, int), np.ones(10, int)])
    close = _Candidate("finetune:last:2", "finetune", np.r_[np.zeros(191, int), np.ones(9, int)])
    chosen, record = prefer_cheaper(close, probe, y)
    assert chosen is probe and record["beyond_noise"] is False and record["best_fixes"] == 1
    clear = _Candidate("finetune:half", "finetune", np.zeros(200, int))
    chosen, record = prefer_cheaper(clear, probe, y)
    assert chosen is clear and record["p_value"] < 0.05
    assert prefer_cheaper(probe, probe, y)[0] is probe


def test_a_winner_at_the_probes_cost_needs_only_the_higher_accuracy():
    y = np.zeros(200, int)
    probe = _Candidate("probe", "probe", np.r_[np.zeros(190, int), np.ones(10, int)])
    close = _Candidate("finetune:last:3", "finetune", np.r_[np.zeros(192, int), np.ones(8, int)])
    chosen, record = prefer_cheaper(close, probe, y, same_cost=True)
    assert chosen is close and record["beyond_noise"] is False and record["same_cost"] is True


def _scored_search(rows):
    """An auto search over 200 validation images (all of class 0) whose candidates, given as
    (name, kind, params, images wrong), are scored: each gets the last ``wrong`` images wrong."""
    from types import SimpleNamespace

    from headstart.estimator.auto import Candidate, Search

    y = np.zeros(200, int)
    ctx = SimpleNamespace(backbone="lite0", features="last", tta="none")
    split = SimpleNamespace(mask=lambda name: np.ones(200, bool))
    search = Search(ctx, SimpleNamespace(y=y), split, print, 0.0, np.ones(200, bool))  # type: ignore[arg-type]
    for name, kind, params, wrong in rows:
        c = Candidate(name, kind, params)
        c.val_proba = np.eye(2)[np.r_[np.zeros(200 - wrong, int), np.ones(wrong, int)]]
        c.val_accuracy, c.fitted = (200 - wrong) / 200, object()
        search.candidates.append(c)
    return search


def test_auto_passes_over_a_costlier_winner_to_one_at_the_probes_cost():
    """ensemble 0.96 (costlier, 2 fixed: not beyond noise), last:3 0.955 (the probe's cost),
    probe 0.95: last:3 is the model, and the record names the ensemble passed over."""
    from headstart.estimator.auto import CandidateParams, _choose

    search = _scored_search(
        (
            ("probe", "probe", CandidateParams(), 10),
            ("probe-ensemble", "probe", CandidateParams(backbone="lite0+lite2"), 8),
            ("finetune:last:3", "finetune", CandidateParams(unfreeze="last:3"), 9),
        )
    )
    made = search.candidates
    winner, record = _choose(search)
    assert winner.name == "finetune:last:3" and record["same_cost"] is True
    assert [p["name"] for p in record["passed_over"]] == ["probe-ensemble"]
    made[2].val_accuracy = None  # without it, the probe
    winner, record = _choose(search)
    assert winner.name == "probe" and record["best"] == "probe-ensemble" and not record["beyond_noise"]


def test_a_tie_with_the_probe_goes_to_a_tuned_network_at_its_cost_only():
    """Equal validation accuracy: the tuned network at the probe's cost wins; multi-layer
    features (a probe) and a tuned network with flip TTA (costlier) do not: the probe, tried first."""
    from headstart.estimator.auto import CandidateParams, _choose, _why

    search = _scored_search(
        (
            ("probe", "probe", CandidateParams(), 10),
            ("probe-multi", "probe", CandidateParams(features="multi"), 10),
            (
                "finetune:half tta",
                "finetune-combined",
                CandidateParams(members=("finetune:half",), tta="flip"),
                10,
            ),
            ("finetune:half", "finetune", CandidateParams(unfreeze="half"), 10),
        )
    )
    winner, record = _choose(search)
    assert winner.name == "finetune:half" and record["same_cost"] is True and record["best_fixes"] == 0
    assert "a tie goes to the tuned network" in _why(search, winner)
    search.candidates.pop()  # without it, the probe: it was tried first
    assert _choose(search)[0].name == "probe"
    assert "a tie goes to the candidate tried first" in _why(search, search.candidates[0])


def test_comparison_new_class_is_a_row_and_only_shared_images_are_paired():
    answers = [
        Answer("1.jpg", "cat", "dog", "cat"),  # fixed
        Answer("2.jpg", "dog", "dog", "cat"),  # broken
        Answer("3.jpg", "dog", "dog", "dog"),
        Answer("4.jpg", "fox", "dog", "fox"),  # a class A never knew
    ]
    result = compare_answers(answers, ["cat", "dog"], ["cat", "dog", "fox"])
    assert [x["path"] for x in result["fixed"]] == ["1.jpg"]
    assert [x["path"] for x in result["broken"]] == ["2.jpg"]
    assert result["a"]["n"] == 3 and result["b"]["n"] == 4
    assert (
        result["per_class"]["fox"]["status"] == "new in B"
        and result["per_class"]["fox"]["a_accuracy"] is None
    )
    assert result["per_class"]["cat"]["change"] == pytest.approx(1.0)
    assert result["mcnemar_p"] == pytest.approx(1.0)


def test_corrections_relabel_exclude_and_report_unmatched(tmp_path):
    root = tmp_path / "data"
    samples = [Sample(str(root / "a" / f"{i}.jpg"), "a") for i in range(3)]
    dataset = Dataset(root, samples, "class-folders")
    path = write_corrections(
        tmp_path / "c.csv",
        [
            Correction("a/0.jpg", "relabel", "b"),
            Correction(str(root / "a" / "1.jpg"), "exclude"),
            Correction("a/missing.jpg", "exclude"),
            Correction("a/2.jpg", "relabel", "=cmd"),  # a formula-like name stays a name
        ],
    )
    corrected, left_out, records = apply_corrections(dataset, read_corrections(path))
    assert [s.label for s in corrected.samples] == ["b", "=cmd"]
    assert [s.path for s in left_out] == [samples[1].path]
    assert {r.correction.path: r.status for r in records}["a/missing.jpg"] == "unmatched"
    assert [s.label for s in dataset.samples] == ["a", "a", "a"]  # the input is untouched
