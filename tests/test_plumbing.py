"""One source per choice and default, log lines through ``logging``, probabilities written once."""

from __future__ import annotations

import inspect
import logging
import typing

import numpy as np
import pytest

from headstart.cli.app import DEFAULTS, train
from headstart.core import choices
from headstart.core.errors import ParameterError
from headstart.core.logs import log_run
from headstart.core.probability import binary_log_loss, log_loss, softmax
from headstart.estimator.classifier import ImageClassifier
from headstart.models.heads import Head
from headstart.runs.writer import RunWriter
from headstart.training.distributed import RankZeroFilter
from headstart.training.settings import FineTuneSettings

# --- choices and defaults


def test_every_choice_tuple_is_its_literal():
    for literal, values in [
        (choices.Strategy, choices.STRATEGIES),
        (choices.HeadName, choices.HEADS),
        (choices.Engine, choices.ENGINES),
        (choices.FeatureLayers, choices.FEATURE_LAYERS),
        (choices.TestTimeAugmentation, choices.TTA_CHOICES),
        (choices.FeaturePrecision, choices.FEATURE_PRECISIONS),
        (choices.TrainingPrecision, choices.TRAINING_PRECISIONS),
    ]:
        assert typing.get_args(literal) == values


@pytest.mark.parametrize("internal", ["logistic-sgd", "multilabel-logistic"])
def test_internal_heads_are_registered_but_not_accepted_from_users(internal):
    assert internal in Head.registry  # the library uses it...
    with pytest.raises(ParameterError, match="head"):  # ...a user may not ask for it
        ImageClassifier(head=internal, strategy="feature-extraction")._check_params()


def test_the_cli_takes_its_defaults_from_the_estimator_signature():
    flags = inspect.signature(train).parameters
    estimator = inspect.signature(ImageClassifier).parameters
    for name in ("backbone", "head", "unfreeze", "epochs", "lr", "top_k", "strategy", "engine", "tta"):
        assert flags[name].default == estimator[name].default == DEFAULTS[name], name
    assert flags["split"].default == ",".join(str(f) for f in estimator["split"].default)


def test_class_weight_is_normalised_once_in_the_settings():
    assert FineTuneSettings(class_weight="none").class_weight is None
    assert FineTuneSettings(class_weight=None).class_weight is None
    assert FineTuneSettings(class_weight="balanced").class_weight == "balanced"
    with pytest.raises(ParameterError, match="class_weight"):
        FineTuneSettings(class_weight="heavy")


def test_a_bad_serve_setting_is_a_parameter_error_and_a_value_error():
    from headstart.serve import check_serve_settings

    with pytest.raises(ParameterError, match="precision") as caught:
        check_serve_settings(16, 20, "bf16")
    assert isinstance(caught.value, ValueError)


# --- logging


def test_a_run_logs_every_layers_lines_to_its_file_and_console_while_open(tmp_path, capsys):
    deeper = logging.getLogger("headstart.training.loop")
    with RunWriter(tmp_path, verbose=True) as writer:
        writer("from the writer")
        deeper.info("from the training loop")
    deeper.info("after the run")  # the handlers left with the run
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["from the writer", "from the training loop"]
    assert capsys.readouterr().err.splitlines() == ["from the writer", "from the training loop"]


def test_quiet_runs_keep_the_file_and_print_nothing(tmp_path, capsys):
    with log_run(tmp_path, verbose=False):
        logging.getLogger("headstart.export.exporter").info("kept")
    assert (tmp_path / "log.txt").read_text().endswith(" kept\n")
    assert capsys.readouterr().err == ""


def test_a_warning_traceback_goes_to_the_file_only(tmp_path, capsys):
    logger = logging.getLogger("headstart.runs.writer")
    with log_run(tmp_path, verbose=True):
        try:
            raise RuntimeError("no fonts today")
        except RuntimeError:
            logger.info("warning: the plot could not be written", exc_info=True)
    assert "Traceback" in (tmp_path / "log.txt").read_text()
    assert capsys.readouterr().err == "warning: the plot could not be written\n"


def test_only_rank_zero_logs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    logger = logging.getLogger("headstart.training.loop")
    with log_run(tmp_path, verbose=True, filters=[RankZeroFilter()]):
        logger.info("from rank 1")
    monkeypatch.setenv("RANK", "0")
    with log_run(tmp_path, verbose=True, filters=[RankZeroFilter()]):
        logger.info("from rank 0")
    assert capsys.readouterr().err == "from rank 0\n"
    assert "from rank 1" not in (tmp_path / "log.txt").read_text()


# --- probabilities


def test_softmax_and_log_losses_agree_with_scikit_learn():
    from sklearn.metrics import log_loss as sk_log_loss

    rng = np.random.default_rng(0)
    proba = softmax(rng.normal(size=(20, 4)) * 3)
    y = rng.integers(0, 4, 20)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert log_loss(proba, y) == pytest.approx(sk_log_loss(y, proba, labels=range(4)))
    targets = rng.integers(0, 2, (20, 4))
    p = 1 / (1 + np.exp(-rng.normal(size=(20, 4))))
    assert binary_log_loss(targets, p) == pytest.approx(sk_log_loss(targets.ravel(), p.ravel()))
