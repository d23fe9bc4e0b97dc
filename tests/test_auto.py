"""``strategy="auto"``: the search on tiny generated images (a few candidates, short budgets)."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import COLORS, make_class_folders, make_image
from sklearn.base import clone

import headstart
from headstart.estimator import auto
from headstart.estimator.classifier import ImageClassifier
from headstart.models.heads import LogisticHead

FAST = dict(
    verbose=False, report_map="none", epochs=1, train_batch_size=8, loader_workers=0, precision="fp32"
)


def split_folders(root: Path) -> Path:
    """train 8, val 4, test 6 images per class: the three splits have different sizes."""
    for split, n in (("train", 8), ("val", 4), ("test", 6)):
        for c in ("red", "green", "blue"):
            for i in range(n):
                seed = 1000 * list(COLORS).index(c) + 100 * len(split) + i
                make_image(root / split / c / f"{c}_{i}.jpg", COLORS[c], seed=seed)
    return root


def statuses(clf: ImageClassifier) -> dict[str, str]:
    return {c["name"]: c["status"] for c in clf.auto_["candidates"]}


def test_a_tiny_budget_still_gives_a_model_and_says_what_the_budget_skipped(tmp_path):
    data = make_class_folders(tmp_path / "colors", per_class=8)
    clf = ImageClassifier(strategy="auto", time_budget=1.0, **FAST).fit(data, out_dir=tmp_path / "run")
    found = statuses(clf)
    assert found["probe"] == "done"  # the base probe always runs; the others when their estimates fit
    assert found["probe-multi"] == "done" or found["probe-multi"].startswith("skipped: ")
    skipped = [name for name, status in found.items() if status.startswith("skipped: budget")]
    assert {"finetune:last:2", "probe-backbone", "probe-tta"} <= set(skipped)
    winner = clf.auto_["winner"]
    assert clf.strategy_ == "feature-extraction" and winner in ("probe", "probe-multi")
    files = sorted(data.rglob("*.jpg"))[:4]
    loaded = headstart.load(tmp_path / "run", verbose=False)  # the winner's features, as fitted
    assert np.allclose(loaded.predict_proba(files), clf.predict_proba(files), atol=1e-4)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["auto"]["winner"] == winner and metrics["auto"]["judged_on"] == "val"
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert f"auto: the winner is {winner} " in (tmp_path / "run" / "log.txt").read_text()


def test_the_test_split_is_not_scored_before_the_winner_is_chosen(tmp_path, monkeypatch):
    data = split_folders(tmp_path / "splits")
    n_test = 18
    events: list[str] = []
    real_proba, real_finish = LogisticHead.predict_proba, auto.finish

    def proba(self, x):
        events.append("test-sized" if len(x) == n_test else "other")
        return real_proba(self, x)

    def finish(search):
        events.append("winner chosen")
        return real_finish(search)

    monkeypatch.setattr(LogisticHead, "predict_proba", proba)
    monkeypatch.setattr(auto, "finish", finish)
    monkeypatch.setattr(auto, "FINETUNE_DEPTHS", ())  # probes only: this test is about who is scored when
    clf = ImageClassifier(strategy="auto", time_budget=60.0, **FAST).fit(data)
    chosen = events.index("winner chosen")
    assert "test-sized" not in events[:chosen] and "test-sized" in events[chosen:]
    assert clf.auto_["n_val"] == 12 and clf.metrics_["evaluated_on"] == "test"


def test_auto_leaves_the_parameters_as_given_and_keeps_the_winner_in_best_params(tmp_path, monkeypatch):
    """scikit-learn's search contract: ``fit`` never rewrites the user's parameters, so
    ``clone`` after ``fit`` is the estimator before it; the winner's are ``best_params_`` and the
    fitted model (its features, predictions and bundle) is the winner's."""
    data = make_class_folders(tmp_path / "colors", per_class=8)
    monkeypatch.setattr(auto, "FINETUNE_DEPTHS", ())
    real_best = auto.Search.best

    def best(self):  # probe-tta forced to win: its parameters differ from the user's
        tta = [c for c in self.eligible() if c.name == "probe-tta"]
        return tta[0] if tta else real_best(self)

    monkeypatch.setattr(auto.Search, "best", best)
    # and kept: the paired test would keep the probe, which ties with it on these colours
    monkeypatch.setattr(auto, "prefer_cheaper", lambda best, probe, *args, **kwargs: (best, {"test": "none"}))
    monkeypatch.setattr(
        auto,
        "_planned",
        lambda search: [auto.Candidate("probe-tta", "probe", auto.CandidateParams(tta="flip"), 1.0)],
    )
    clf = ImageClassifier(strategy="auto", time_budget=600.0, **FAST)  # ends when the candidates do
    before = clone(clf).get_params()
    clf.fit(data, out_dir=tmp_path / "run")
    assert clone(clf).get_params() == before == clf.get_params()
    assert clf.auto_["winner"] == "probe-tta", statuses(clf)
    # time left with a probe candidate best: the option it lacks is tried on top of it
    composed = next(c for c in clf.auto_["candidates"] if c["name"] == "probe-tta multi")
    assert composed["params"] == {"features": "multi", "tta": "flip"} and composed["status"] == "done"
    assert clf.best_params_ == {"tta": "flip"}
    assert clf.features_.tta == "flip" and clf.tta == "none"
    files = sorted(data.rglob("*.jpg"))[:4]
    loaded = headstart.load(tmp_path / "run", verbose=False)  # the winner's features, as fitted
    assert loaded.features_.tta == "flip"
    assert np.allclose(loaded.predict_proba(files), clf.predict_proba(files), atol=1e-4)


@pytest.mark.slow  # extracts with a second backbone and the ensemble
def test_every_candidate_is_recorded_with_its_validation_score_and_time(tmp_path, monkeypatch):
    data = make_class_folders(tmp_path / "colors", per_class=8)
    monkeypatch.setattr(auto, "FINETUNE_DEPTHS", ())
    clf = ImageClassifier(strategy="auto", time_budget=120.0, **FAST).fit(data, out_dir=tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())["auto"]
    names = [c["name"] for c in record["candidates"]]
    assert names[:2] == ["probe", "probe-multi"] and {"probe-backbone", "probe-tta"} <= set(names)
    for c in record["candidates"]:
        assert c["status"] == "done" or c["status"].startswith(("skipped: ", "stopped"))
        assert c["seconds"] is not None or c["status"].startswith("skipped: budget")
        if c["status"] == "done":
            assert 0 <= c["val_accuracy"] <= 1 and c["val_log_loss"] >= 0 and c["seconds"] >= 0
    assert record["winner"] in names and record["why"]
    assert clf.metrics_["auto"] == record


@pytest.mark.slow
def test_an_interrupt_during_a_finetuning_candidate_keeps_the_best_so_far(tmp_path, monkeypatch):
    data = make_class_folders(tmp_path / "colors", per_class=8)
    monkeypatch.setattr(auto, "FINETUNE_DEPTHS", ("last:2",))
    monkeypatch.setattr(
        auto,
        "_planned",
        lambda search: [
            auto.Candidate(
                "finetune:last:2", "finetune", auto.CandidateParams(unfreeze="last:2", epochs=1), 1.0
            )
        ],
    )

    def stop(epoch, row):
        raise KeyboardInterrupt

    clf = ImageClassifier(strategy="auto", time_budget=600.0, **FAST)
    clf.fit(data, out_dir=tmp_path / "run", on_epoch_end=stop)
    found = statuses(clf)
    assert found["finetune:last:2"] == "stopped: interrupted" and clf.auto_["stopped"] == "interrupted"
    assert clf.auto_["winner"] in ("probe", "probe-multi")
    assert (tmp_path / "run" / "model.safetensors").is_file()
    proba = clf.predict_proba(sorted(data.rglob("*.jpg"))[:2])
    assert np.allclose(proba.sum(1), 1)


@pytest.mark.slow
def test_a_finetuning_candidate_runs_within_the_budget_and_is_measured(tmp_path, monkeypatch):
    data = make_class_folders(tmp_path / "colors", per_class=8)
    monkeypatch.setattr(auto, "FINETUNE_DEPTHS", ("last:1",))
    monkeypatch.setitem(auto.PRIORS, "finetune:last:1", 10.0)  # before the other probes
    clf = ImageClassifier(strategy="auto", time_budget=600.0, **FAST).fit(data)
    record = clf.auto_
    assert "last:1" in record["throughput"] and record["throughput"]["last:1"]["train_s"] > 0
    ft = next(c for c in record["candidates"] if c["name"] == "finetune:last:1")
    assert ft["status"].startswith(("done", "stopped by budget")) and ft["estimate_s"] > 0
    assert ft["epochs_run"] == 1
    if ft["probe_kept"]:  # no epoch beat the probe: the probe's score is not the candidate's own
        assert "not eligible" in ft["status"] and record["winner"] != "finetune:last:1"
    assert clf.strategy_ in ("finetune", "feature-extraction")


def test_auto_is_the_default_of_the_library_and_the_cli():
    import inspect

    from headstart.cli.app import train

    assert ImageClassifier().strategy == "auto"
    assert inspect.signature(train).parameters["strategy"].default == "auto"


@pytest.mark.cli
def test_the_cli_batch_size_is_the_finetuning_batch_under_auto(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from headstart.cli.app import app

    seen = {}

    def fit(self, data, out_dir=None):
        seen.update(self.get_params())
        return self

    monkeypatch.setattr(ImageClassifier, "fit", fit)
    result = CliRunner().invoke(app, ["train", str(tmp_path), "--batch-size", "16", "--time-budget", "2"])
    assert result.exit_code == 0, result.output
    assert seen["strategy"] == "auto" and seen["train_batch_size"] == 16 and seen["batch_size"] == 8
    assert seen["time_budget"] == 120


@pytest.mark.slow
def test_fine_tuned_networks_are_combined_and_an_ensemble_winner_is_one_model(tmp_path, monkeypatch):
    """Two fine-tuning depths; the combined candidates (best + flip TTA, the mean of both, with
    and without flip) are scored on validation; an ensemble with TTA forced to win is saved as one
    bundle whose feature path (both tuned backbones, mirrors, one averaged head) gives what the
    tuned networks gave on the test split."""
    data = split_folders(tmp_path / "splits")
    depths = ("last:1", "last:2")
    monkeypatch.setattr(auto, "FINETUNE_DEPTHS", depths)
    monkeypatch.setattr(
        auto,
        "_planned",
        lambda search: [
            auto.Candidate(f"finetune:{d}", "finetune", auto.CandidateParams(unfreeze=d, epochs=1), 1.0)
            for d in depths
        ],
    )
    monkeypatch.setattr(
        auto.Search, "eligible", lambda self: [c for c in self.candidates if c.val_accuracy is not None]
    )
    real_best = auto.Search.best

    def best(self):
        combined = [c for c in self.eligible() if c.params.tta == "flip" and len(c.params.members or ()) == 2]
        return combined[0] if combined else real_best(self)

    monkeypatch.setattr(auto.Search, "best", best)
    # and kept: on these few images the paired test would keep the cheaper probe
    monkeypatch.setattr(auto, "prefer_cheaper", lambda best, probe, *args, **kwargs: (best, {"test": "none"}))
    params = {**FAST, "engine": "onnxruntime", "reject": "auto"}
    clf = ImageClassifier(strategy="auto", time_budget=600.0, **params).fit(data, out_dir=tmp_path / "run")
    found = statuses(clf)
    names = {"finetune:last:1", "finetune:last:2"}
    combined = [c for c in clf.auto_["candidates"] if c["kind"] == "finetune-combined"]
    assert len(combined) == 3 and all(c["status"] == "done" for c in combined), found
    assert {c["inference_cost"] for c in combined} == {2, 4}
    # each fine-tuning candidate trains on its own batches (seed + k): different mistakes to average
    assert sorted(c["seed"] for c in clf.auto_["candidates"] if c["kind"] == "finetune") == [0, 1]
    winner = next(c for c in combined if c["name"] == clf.auto_["winner"])
    assert set(winner["params"]["members"]) == names and winner["params"]["tta"] == "flip"
    spec = clf.features_
    assert len(spec.members) == 2 and spec.tta == "flip" and clf.best_params_["tta"] == "flip"
    assert clf.tta == "none"  # the user's parameter, as given
    assert spec.members[0].key != spec.members[1].key  # two different tuned networks
    test_paths = clf.test_["paths"]
    np.testing.assert_allclose(clf.predict_proba(test_paths), clf.test_["proba"], atol=2e-3)
    loaded = headstart.load(tmp_path / "run", verbose=False, engine="onnxruntime")
    assert len(loaded.features_.members) == 2 and loaded.features_.tta == "flip"
    np.testing.assert_allclose(loaded.predict_proba(test_paths), clf.test_["proba"], atol=2e-3)
    # the reject score's neighbours live in the ensemble's own feature space (both tuned networks)
    assert clf.reject_bank_.shape[1] == spec.width == 2 * spec.members[0].num_features
    scores = [a["score"] for a in loaded.predict_top_k(test_paths[:4])]
    assert scores == pytest.approx([a["score"] for a in clf.predict_top_k(test_paths[:4])], abs=1e-3)


@pytest.mark.slow  # a fine-tune and a second backbone's extraction
def test_a_tuned_network_averaged_with_the_other_backbones_probe_is_one_model(tmp_path, monkeypatch):
    """The tuned network of the first backbone and the probe on the second, averaged: scored on
    validation like every candidate and, forced to win, saved as one bundle (the tuned backbone,
    the pretrained second one, one averaged head) that predicts what the search's networks did."""
    data = split_folders(tmp_path / "splits")
    monkeypatch.setattr(auto, "FINETUNE_DEPTHS", ("last:1",))
    monkeypatch.setattr(
        auto,
        "_planned",
        lambda search: [
            auto.Candidate(
                "finetune:last:1", "finetune", auto.CandidateParams(unfreeze="last:1", epochs=1), 1.0
            ),
            auto.Candidate(
                "probe-backbone", "probe", auto.CandidateParams(backbone=auto.SECOND_BACKBONE), 0.5
            ),
        ],
    )
    monkeypatch.setattr(
        auto.Search, "eligible", lambda self: [c for c in self.candidates if c.val_accuracy is not None]
    )
    real_best = auto.Search.best

    def best(self):
        mixed = [c for c in self.eligible() if "probe-backbone" in (c.params.members or ())]
        return mixed[0] if mixed else real_best(self)

    monkeypatch.setattr(auto.Search, "best", best)
    monkeypatch.setattr(auto, "prefer_cheaper", lambda best, probe, *args, **kwargs: (best, {"test": "none"}))
    params = {**FAST, "engine": "onnxruntime"}
    clf = ImageClassifier(strategy="auto", time_budget=600.0, **params).fit(data, out_dir=tmp_path / "run")
    mixed = next(c for c in clf.auto_["candidates"] if c["name"] == clf.auto_["winner"])
    assert mixed["kind"] == "finetune-combined" and mixed["status"] == "done", statuses(clf)
    assert mixed["params"]["members"] == ["finetune:last:1", "probe-backbone"]
    assert mixed["inference_cost"] == 2
    spec = clf.features_
    assert [m.name for m in spec.members] == ["tf_efficientnet_lite0", auto.SECOND_BACKBONE]
    assert (
        "fine-tuned" in spec.members[0].weights_source and "fine-tuned" not in spec.members[1].weights_source
    )
    test_paths = clf.test_["paths"]
    loaded = headstart.load(tmp_path / "run", verbose=False, engine="onnxruntime")
    np.testing.assert_allclose(loaded.predict_proba(test_paths), clf.test_["proba"], atol=2e-3)
