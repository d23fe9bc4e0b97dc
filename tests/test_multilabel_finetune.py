"""Fine-tuning a multi-label model: a sigmoid head trained with binary cross-entropy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_multilabel import make_colour_csv

import headstart
from headstart.training.multilabel import MultiHotLoss


def test_multi_hot_loss_is_bce_summed_over_classes():
    targets = np.array([[1, 0, 1], [0, 1, 0]], dtype=np.float32)
    loss = MultiHotLoss(targets)
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 3.0, -2.0]])
    labels = torch.tensor([1, 0])
    expected = (
        torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.from_numpy(targets[[1, 0]]), reduction="sum"
        )
        / 2
    )
    assert float(loss(logits, labels)) == pytest.approx(float(expected), rel=1e-6)
    assert loss.correct(logits, labels) == pytest.approx(
        0 + 1 / 3
    )  # per image: share of classes right at 0.5
    assert torch.allclose(loss.proba(logits), torch.sigmoid(logits))


@pytest.mark.slow
def test_bce_fine_tune_runs_one_epoch(tmp_path):
    data = make_colour_csv(tmp_path / "data", n=48)
    clf = headstart.ImageClassifier(
        strategy="finetune",
        unfreeze="last:1",
        epochs=1,
        train_batch_size=8,
        loader_workers=0,
        engine="onnxruntime",
        check_data=False,
        verbose=False,
    )
    clf.fit(data, out_dir=tmp_path / "ft")
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["multi_label"] is True and metrics["strategy"] == "finetune"
    assert metrics["finetune"]["epochs_run"] == 1
    assert 0 <= metrics["test"]["mAP"] <= 1
    history = (tmp_path / "ft" / "history.csv").read_text().splitlines()
    assert len(history) == 2
    loaded = headstart.load(tmp_path / "ft", engine="onnxruntime", verbose=False)
    assert loaded.multi_label_ and len(loaded.thresholds_) == 4
    proba = loaded.predict_proba([str(next((tmp_path / "data" / "img").glob("*.png")))])
    assert proba.shape == (1, 4) and ((proba >= 0) & (proba <= 1)).all()
