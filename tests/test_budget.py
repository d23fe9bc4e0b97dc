"""How auto sizes its candidates to the time it has (``estimator.budget``), and the large-data plan."""

import numpy as np
import pytest
from conftest import make_class_folders

from headstart.estimator import auto, budget
from headstart.estimator.budget import Rates, finetune_plan, judged_subset
from headstart.estimator.classifier import ImageClassifier

RATES = Rates(train_s=0.02, eval_s=0.005)  # 50 images/s training, 200 evaluating


def test_whole_epochs_when_they_fit_else_the_steps_that_do():
    # 3,000 train / 400 val images, 4 epochs: 4 x (60 + 2) s + 5 s (the probe's score is known,
    # the best round's evaluation is the candidate's) = 253 s
    whole = finetune_plan(RATES, 3000, 400, 32, 4, 300.0)
    assert whole is not None and (whole.epochs, whole.steps) == (4, None)
    assert whole.seconds == pytest.approx(253.0)
    cut = finetune_plan(RATES, 3000, 400, 32, 4, 100.0)
    assert cut is not None and cut.epochs is None and 0 < cut.steps < 4 * 94
    assert cut.seconds <= 100.0 and cut.images_seen == pytest.approx(cut.steps * 32, abs=4 * 32)
    # 50,000 images: one epoch (1,000 s) does not fit 600 s; the steps that do are a fraction of it
    large = finetune_plan(RATES, 50_000, 2000, 32, 4, 600.0)
    assert large is not None and large.steps is not None and large.images_seen < 50_000
    assert large.seconds <= 600.0
    assert finetune_plan(RATES, 50_000, 2000, 32, 4, 40.0) is None  # under MIN_STEP_IMAGES' worth
    assert (
        budget.fewest_steps_seconds(RATES, 50_000, 2000, 32) > 40.0
    )  # what its skipped status says it needs
    # on 840 train images the fewest is one epoch (the shapes set: 2,000 images were 2.4 epochs)
    small = finetune_plan(RATES, 840, 116, 32, 4, 30.0)
    assert small is not None and small.images_seen >= 840 and small.seconds <= 30.0


def test_the_judged_subset_is_capped_stratified_and_seeded():
    y = np.repeat([0, 1, 2], [3000, 1500, 500])
    val = np.zeros(len(y), bool)
    val[::2] = True  # 2,500 validation images
    chosen = judged_subset(val, y, seed=0, cap=1000)
    assert chosen.sum() == 1000 and not (chosen & ~val).any()
    assert np.bincount(y[chosen]).tolist() == [600, 300, 100]
    assert (judged_subset(val, y, seed=0, cap=1000) == chosen).all()
    assert (judged_subset(val, y, seed=1, cap=1000) != chosen).any()
    assert (judged_subset(val, y, seed=0, cap=5000) == val).all()  # under the cap: all of it


def test_an_extraction_estimate_is_the_sample_pace_plus_the_start():
    assert budget.extraction_estimate(10_000, 2.0, 64, 3.0) == pytest.approx(3.0 + 10_000 * 2.0 / 64)


@pytest.mark.slow  # three short fine-tuning runs on generated images
def test_on_large_data_the_depths_are_trialled_and_the_better_one_trains_with_the_time_left(
    tmp_path, monkeypatch
):
    """Measured rates 100x slower than real make 30 images 'large': whole epochs need more than
    half the time; each depth trains a trial of a few steps, then the better depth trains again
    with the time left, in more steps; the search says why it stopped."""
    data = make_class_folders(tmp_path / "colors", per_class=10)
    slow = {"train_s": 5.0, "eval_s": 0.05}
    monkeypatch.setattr(auto, "measure_training", lambda *a, **k: dict(slow))
    monkeypatch.setattr(auto, "MEASURED_TO_EPOCH", 1.0)
    monkeypatch.setattr(auto, "_calibrate", lambda *a, **k: None)
    monkeypatch.setattr(auto, "FINETUNE_DEPTHS", ("last:1", "last:2"))
    monkeypatch.setattr(auto, "TRIAL_DEPTHS", ("last:1", "last:2"))
    monkeypatch.setitem(auto.PRIORS, "finetune:last:1", 0.2)
    planned = auto._planned
    monkeypatch.setattr(auto, "_planned", lambda search: planned(search)[:2])  # the two depths
    monkeypatch.setattr(budget, "MIN_STEP_IMAGES", 4)
    monkeypatch.setattr(auto, "MIN_LONG_IMAGES", 4)
    monkeypatch.setattr(auto, "TRIALS_FROM_IMAGES", 10)
    params = dict(verbose=False, report_map="none", train_batch_size=4, loader_workers=0, precision="fp32")
    clf = ImageClassifier(strategy="auto", time_budget=400.0, **params).fit(data)
    record = {c["name"]: c for c in clf.auto_["candidates"]}
    trials = [record["finetune:last:1"], record["finetune:last:2"]]
    assert all(t["params"].get("steps") and "epochs" not in t["params"] for t in trials), record
    long = next(c for name, c in record.items() if name.endswith(" long"))
    assert long["params"]["steps"] > max(t["params"]["steps"] for t in trials)
    assert long["status"].startswith("done") and long["steps_run"] > max(t["params"]["steps"] for t in trials)
    # its real rounds take far less than the rates say: re-planned to its ceiling, 3x the rounds
    assert long["replanned"][0][:2] == [1, 12] and long["params"]["steps"] == 3 * long["steps_first_planned"]
    assert clf.auto_["stop_reason"] and clf.auto_["reserve_s"]["finetune"] > 0
