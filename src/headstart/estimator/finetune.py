"""Fine-tuning: the second stage of ``ImageClassifier(strategy="finetune").fit``.

    clf = ImageClassifier(strategy="finetune", unfreeze="last:2", epochs=3).fit("photos/", out_dir="runs/ft")
    headstart.load("runs/ft").predict(["new.jpg"])    # the same bundle format, whole network inside

The linear probe is fitted on cached features exactly as feature extraction does (on train only:
validation must stay unseen to judge the epochs), then the backbone and that head are trained
end to end on augmented images (``headstart.training``). ``FineTuneClassifier`` is
``ImageClassifier`` with ``strategy="finetune"`` by default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.estimator.fitting import Log, Split, Stopwatch, Usable
from headstart.models.backbones import Backbone
from headstart.models.heads import Head, LogisticHead, restore_head
from headstart.training.loop import FineTuner, FineTuneResult, FineTuneSettings, settings_fingerprint


@dataclass
class FineTuneJob:
    """One fine-tuning run: its settings and where it writes (``run_dir``: history, checkpoints)."""

    settings: FineTuneSettings
    unfreeze: str
    run_dir: Path | None
    log: Log
    verbose: bool
    resume: bool = False
    deadline: float | None = None  # time.time() at which training stops with the best model
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None


@dataclass
class FineTuneOutcome:
    backbone: Backbone
    head: Head
    # of the evaluated split, by the final model; a tuned network's are computed once, through
    # its saved feature path, by ``scored_as_predicted``
    proba: np.ndarray | None
    info: dict[str, Any]  # metrics.json's ``finetune`` section
    # validation probabilities of a model that did not learn from them (temperature, reject)
    val_proba: np.ndarray | None = None


def finetune(
    job: FineTuneJob, backbone: Backbone, probe: Head, usable: Usable, split: Split, clock: Stopwatch
) -> FineTuneOutcome:
    """Train backbone + probe end to end; the better of the tuned network and the probe is the model."""
    evaluated = split.mask(split.evaluated_on)
    probe_proba = probe.predict_proba(usable.features[evaluated])
    y_eval = usable.y[evaluated]
    probe_accuracy = float((probe_proba.argmax(1) == y_eval).mean()) if evaluated.any() else float("nan")
    job.log(f"linear probe: {split.evaluated_on} accuracy {probe_accuracy:.4f}; now fine-tuning")
    train, val = _items(usable, split, "train"), _items(usable, split, "val")
    fingerprint = settings_fingerprint(
        job.settings, train, {"backbone": backbone.key, "val": len(val), "classes": usable.classes}
    )
    tuner = FineTuner(job.settings, job.run_dir, job.verbose, job.on_epoch_end)
    with clock("finetune"):
        result = tuner.fit(
            backbone.model,
            backbone.data_config,
            probe,
            train,
            val,
            len(usable.classes),
            resume=job.resume,
            deadline=job.deadline,
            fingerprint=fingerprint,
        )
    info = {
        **result.info,
        "probe_accuracy": probe_accuracy,
        "evaluated_on": split.evaluated_on,
        "history": result.history,
    }
    if result.info.get("probe_kept"):
        return _keep_probe(probe, usable, split, info, job.log, backbone)
    return FineTuneOutcome(
        _tuned_backbone(backbone, result, job.unfreeze), _tuned_head(probe, result), None, info
    )


def scored_as_predicted(
    outcome: FineTuneOutcome, extract: Callable[[list[str]], Any], usable: Usable, split: Split
) -> FineTuneOutcome:
    """``outcome`` with its validation and evaluated-split probabilities computed by ``extract``
    (the saved model's feature path: the engine ``predict``, ``evaluate`` and the export use)
    and its head.

    The training loop's own pass (torch, bf16 autocast) differs from the inference engine in the
    last bits, enough to move a borderline image (on flowers, the quick start's test accuracy
    read 0.9452 in ``train`` and 0.9425 in ``evaluate``); so the test figure, the temperature and
    the reject threshold are those of what the saved model answers; the loop's pass is not
    computed at all."""
    evaluated, val = split.mask(split.evaluated_on), split.mask("val")
    wanted = evaluated | val
    paths = [s.path for s, keep in zip(usable.samples, wanted) if keep]
    result = extract(paths)
    if result.errors:
        i, reason = next(iter(result.errors.items()))
        raise HeadstartError(
            f"{paths[i]} could not be read again after training ({reason}): run the fit again"
        )
    proba = np.zeros((len(usable.samples), len(usable.classes)))
    proba[wanted] = outcome.head.predict_proba(np.asarray(result.features))
    return replace(outcome, proba=proba[evaluated], val_proba=proba[val])


def _items(usable: Usable, split: Split, name: str) -> list[tuple[str, int]]:
    return [(s.path, int(label)) for s, label, g in zip(usable.samples, usable.y, split.names) if g == name]


def _keep_probe(
    probe: Head, usable: Usable, split: Split, info: dict[str, Any], log: Log, backbone: Backbone
) -> FineTuneOutcome:
    """No epoch beat the probe, so the model is the feature-extraction one: the probe (fitted on
    train only, to judge the epochs on unseen validation images) refitted on train + val with its
    chosen C, as the feature-extraction strategy does, so keeping it never gives a weaker model."""
    tr, va = split.mask("train"), split.mask("val")
    x, y = usable.features, usable.y
    head = LogisticHead(cs=(probe.C,), refit=True)  # type: ignore[attr-defined]
    head.fit(x[tr], y[tr], x[va], y[va], len(usable.classes))
    info["probe_refit_on_train_val"] = True
    log(f"the model is the linear probe on the pretrained backbone, refitted on train + val (C={head.C})")
    evaluated = head.predict_proba(x[split.mask(split.evaluated_on)])
    return FineTuneOutcome(backbone, head, evaluated, info, probe.predict_proba(x[va]))


def _tuned_backbone(base: Backbone, result: FineTuneResult, unfreeze: str) -> Backbone:
    """A new Backbone: its weights digest (and so its feature-cache key) is that of the tuned
    weights, so its features never mix with the pretrained backbone's cached ones."""
    return Backbone(
        name=base.name,
        data_config=base.data_config.copy(),
        weights_source=f"{base.weights_source}, fine-tuned ({unfreeze})",
        _model=result.backbone_model,
    )


def _tuned_head(probe: Head, result: FineTuneResult) -> Head:
    return restore_head("logistic", result.head_arrays, probe.params())
