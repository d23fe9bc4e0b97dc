"""ImageClassifier as a scikit-learn estimator: parameters, validation, stateless prediction."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import cli
from sklearn.base import clone

import headstart
from headstart.core.errors import ParameterError
from headstart.estimator.classifier import CONSTRAINTS, FineTuneClassifier, ImageClassifier
from headstart.runs.writer import resumable_folder


def test_get_params_set_params_and_clone_round_trip():
    clf = ImageClassifier(head="mlp", seed=3, split=(0.7, 0.2, 0.1), time_budget=90.0, verbose=False)
    params = clf.get_params()
    assert params["head"] == "mlp" and params["split"] == (0.7, 0.2, 0.1) and params["time_budget"] == 90.0
    assert set(params) == set(inspect.signature(ImageClassifier.__init__).parameters) - {"self"}
    assert set(params) == set(CONSTRAINTS), "every parameter has exactly one constraint"
    copy = clone(clf)
    assert copy is not clf and copy.get_params() == params
    assert copy.set_params(epochs=7, strategy="finetune") is copy
    assert copy.epochs == 7 and copy.strategy == "finetune" and clf.epochs == 4
    assert ImageClassifier(**params).get_params() == params


def test_init_stores_parameters_as_given():
    split = [0.6, 0.2, 0.2]
    clf = ImageClassifier(split=split, strategy="finetune")
    assert clf.split is split and clf.head_params is None  # no coercion, no rewriting


def test_finetune_classifier_is_an_alias_with_another_default():
    clf = headstart.FineTuneClassifier(unfreeze="half", epochs=2)
    assert isinstance(clf, ImageClassifier) and clf.strategy == "finetune"
    assert clf.get_params() == ImageClassifier(strategy="finetune", unfreeze="half", epochs=2).get_params()
    copy = clone(clf)
    assert type(copy) is FineTuneClassifier and copy.get_params() == clf.get_params()
    assert FineTuneClassifier(strategy="feature-extraction").strategy == "feature-extraction"
    assert repr(clf) == "FineTuneClassifier(epochs=2, unfreeze='half')"


@pytest.mark.parametrize(
    "params,name",
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"unfreeze": "middle"}, "unfreeze"),
        ({"augment": "wild"}, "augment"),
        ({"class_weight": "heavy"}, "class_weight"),
        ({"lr": 0}, "lr"),
        ({"time_budget": -1.0}, "time_budget"),
        ({"strategy": "magic"}, "strategy"),
        ({"head": "forest"}, "head"),
        ({"split": (0.8, 0.1)}, "split"),
        ({"top_k": 0}, "top_k"),
        ({"verbose": "yes"}, "verbose"),
        ({"report_map": "umap"}, "report_map"),
        ({"strategy": "finetune", "head": "knn"}, "head"),
    ],
)
def test_fit_checks_parameters_first_and_names_them(tmp_path, params, name):
    clf = ImageClassifier(**{"verbose": False, **params})
    with pytest.raises(ParameterError) as info:
        clf.fit(tmp_path / "no such folder")  # the parameter is reported, not the missing data
    assert info.value.param == name and str(info.value).startswith(f"{name}: ")
    assert "--" not in str(info.value), "library errors never name a CLI flag"
    assert not hasattr(clf, "head_")


def test_valid_values_pass():
    from headstart.core.params import validate_params

    for params in (
        {"unfreeze": "LAST:3", "class_weight": "none", "time_budget": 1e-6, "workers": 2},
        {"unfreeze": "all", "class_weight": None, "time_budget": None, "exclude": ["a.jpg", Path("b.jpg")]},
    ):
        validate_params({**ImageClassifier().get_params(), **params}, CONSTRAINTS)


def test_resume_without_a_run_names_the_run_folder(tmp_path):
    with pytest.raises(ParameterError) as info:
        ImageClassifier.resume(tmp_path, verbose=False)
    assert info.value.param == "run_dir" and "no fine-tuning run to resume" in str(info.value)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from conftest import make_class_folders

    root = make_class_folders(tmp_path_factory.mktemp("est") / "colors", per_class=8)
    return root, ImageClassifier(strategy="feature-extraction", verbose=False, report_map="none").fit(root)


def test_prediction_writes_no_state(fitted):
    root, clf = fitted
    files = sorted(str(p) for p in root.rglob("*.jpg"))[:4] + [str(root / "missing.jpg")]
    before = {k: v for k, v in vars(clf).items()}
    proba = clf.predict_proba(files)
    labels = clf.predict(files)
    top = clf.predict_top_k(files, k=2)
    features = clf.transform(files)
    assert vars(clf).keys() == before.keys() and all(vars(clf)[k] is v for k, v in before.items())
    assert np.isnan(proba[-1]).all() and labels[-1] is None and top[-1]["error"]
    assert (
        np.allclose(proba[:-1].sum(1), 1) and [r["predictions"][0]["label"] for r in top[:-1]] == labels[:-1]
    )
    assert features.shape == (5, clf.backbone_.num_features) and np.isnan(features[-1]).all()
    assert np.isfinite(features[:-1]).all()


def test_fitted_state_ends_in_underscore(fitted):
    _, clf = fitted
    params = set(clf.get_params())
    assert all(k in params or k.endswith("_") for k in vars(clf)), sorted(set(vars(clf)) - params)
    assert clf.strategy_ == "feature-extraction" and clf.metrics_["strategy"] == "feature-extraction"


def test_bundle_format_is_unchanged(fitted, tmp_path):
    from conftest import bundle_parts

    _, clf = fitted
    path = clf.save(tmp_path / "model.safetensors")
    meta, _, _ = bundle_parts(path)
    assert set(meta) == {
        "format",
        "format_version",
        "classes",
        "strategy",
        "backbone",
        "head",
        "settings",
        "split",
        "metrics",
        "versions",
        "created",
    }
    assert meta["settings"] == {"seed": 0, "split": [0.8, 0.1, 0.1], "top_k": 3}
    assert meta["head"]["name"] == "logistic" and meta["strategy"] == "feature-extraction"
    loaded = headstart.load(path, verbose=False)
    files = clf.test_["paths"]
    np.testing.assert_allclose(loaded.predict_proba(files), clf.predict_proba(files), atol=1e-5)
    assert clone(loaded).get_params() == loaded.get_params()


def test_fit_and_load_give_the_same_typed_fitted_model(fitted, tmp_path):
    """``fit`` stores the FittedModel its stages return; ``load`` builds the same value from
    the bundle; the classifier's fitted attributes are views of it; clone after fit is clone
    before it (fit never rewrites parameters)."""
    from headstart.estimator.fitted import FittedModel
    from headstart.evaluation.tasks import SingleLabel

    root, clf = fitted
    model = clf.fitted_
    assert isinstance(model, FittedModel) and isinstance(model.task, SingleLabel)
    assert clf.head_ is model.head and clf.backbone_ is model.backbone and clf.features_ is model.spec
    assert clf.metrics_ is model.metrics and clf.split_ is model.split
    assert model.reliability is not None and model.meta is None
    loaded = headstart.load(clf.save(tmp_path / "model.safetensors"), verbose=False).fitted_
    assert loaded.meta is not None and loaded.reliability is None
    for name in ("classes", "strategy", "split", "temperature", "reject_threshold"):
        assert getattr(loaded, name) == getattr(model, name), name
    assert (loaded.spec.name, loaded.spec.layers, loaded.spec.tta) == (
        model.spec.name,
        model.spec.layers,
        model.spec.tta,
    )
    assert loaded.task == model.task and loaded.head.params() == model.head.params()
    fresh = ImageClassifier(strategy="feature-extraction", verbose=False, report_map="none")
    assert clone(clf).get_params() == clone(fresh).get_params()


def test_finetune_params_are_json(tmp_path):
    clf = FineTuneClassifier(exclude=Path("x.txt"), cache_dir=tmp_path, split=(0.7, 0.2, 0.1))
    params = json.loads(json.dumps(clf._json_params()))
    assert params["exclude"] == str(Path("x.txt").resolve()) and params["split"] == [0.7, 0.2, 0.1]
    assert params["strategy"] == "finetune" and params["cache_dir"] == str(tmp_path)


@pytest.mark.cli
def test_cli_names_its_flags(colors_dir, tmp_path):
    for args, flag in (
        (["--epochs", "0"], "--epochs"),
        (["--strategy", "finetune", "--head", "mlp"], "--head"),
        (["--class-weight", "heavy"], "--class-weight"),
    ):
        proc = cli("train", colors_dir, "--out", tmp_path / "r", *args)
        assert proc.returncode == 2 and f"error: {flag}: " in proc.stderr and "Traceback" not in proc.stderr
    assert "minutes" in cli("train", "--help").stdout


@pytest.mark.slow
def test_one_way_to_resume_a_killed_finetuning_run(tmp_path):
    from conftest import make_class_folders

    data = make_class_folders(tmp_path / "photos", per_class=10)
    run = tmp_path / "run"

    def killed_after_first_epoch(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    clf = FineTuneClassifier(
        unfreeze="last:1", epochs=2, train_batch_size=8, loader_workers=0, precision="fp32", verbose=False
    )
    with pytest.raises(KeyboardInterrupt):
        clf.fit(data, out_dir=run, on_epoch_end=killed_after_first_epoch)
    assert not run.exists()  # a run is swapped into its folder whole, at the end
    saved = json.loads((resumable_folder(run) / "finetune.json").read_text())
    assert saved["data"] == str(data.resolve()) and saved["params"] == {
        **json.loads(json.dumps(clf._json_params())),
        "strategy": "finetune",
    }
    resumed = ImageClassifier.resume(run, verbose=False)
    ft = resumed.metrics_["finetune"]
    assert resumed.strategy_ == "finetune" and ft["epochs_run"] == 2 and ft["stopped_because"] == "completed"
    assert headstart.load(run).predict(resumed.test_["paths"]) == resumed.predict(resumed.test_["paths"])
