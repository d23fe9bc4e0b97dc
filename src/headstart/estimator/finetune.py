"""``FineTuneClassifier``: feature extraction first (the linear probe), then fine-tuning.

    clf = FineTuneClassifier(unfreeze="last:2", epochs=3).fit("photos/", out_dir="runs/ft")
    headstart.load("runs/ft").predict(["new.jpg"])    # the same bundle format, whole network inside

The probe is fitted on cached features exactly as :class:`ImageClassifier` does, then the
backbone and that head are trained end to end on augmented images (see ``training.py``). The run
folder gets, besides the usual files, ``history.csv``, ``checkpoints/`` and ``finetune.json``
(what ``headstart train --resume RUN_DIR`` needs to continue an interrupted run).
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.core.io import write_json
from headstart.data.discovery import Dataset
from headstart.estimator.classifier import ImageClassifier
from headstart.models.backbones import Backbone
from headstart.models.heads import LogisticHead, restore_head
from headstart.training.loop import FineTuner, FineTuneSettings, settings_fingerprint

STRATEGY = "finetune"
RUN_CONFIG = "finetune.json"


class FineTuneClassifier(ImageClassifier):
    """An :class:`ImageClassifier` whose backbone is fine-tuned after the linear probe.

    ``unfreeze`` is ``head``, ``last:N``, ``half`` or ``all`` (block groups of the backbone);
    ``time_budget`` is in seconds of wall time for the whole ``fit``; ``train_batch_size`` is the
    fine-tuning batch (``batch_size`` stays the feature-extraction batch).
    """

    def __init__(
        self,
        unfreeze: str = "last:2",
        epochs: int = 4,
        lr: float = 1e-3,
        train_batch_size: int = 32,
        augment: str = "default",
        class_weight: str | None = None,
        patience: int = 3,
        time_budget: float | None = None,
        precision: str = "auto",
        loader_workers: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.head_params is None:
            # The probe is fitted on train only: validation must stay unseen to judge the epochs.
            self.head_params = {"refit": False}
        self.unfreeze = unfreeze
        self.epochs = epochs
        self.lr = lr
        self.train_batch_size = train_batch_size
        self.augment = augment
        self.class_weight = class_weight
        self.patience = patience
        self.time_budget = time_budget
        self.precision = precision
        self.loader_workers = loader_workers
        self.on_epoch_end = None  # callable(epoch, row), e.g. to stop a run from a notebook

    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters (scikit-learn style); JSON-able for ``finetune.json``."""
        names = [
            n
            for cls in (FineTuneClassifier, ImageClassifier)
            for n in inspect.signature(cls.__init__).parameters
            if n not in ("self", "kwargs")
        ]
        out = {n: getattr(self, n) for n in names}
        out["split"] = list(out["split"])
        for key in ("weights", "cache_dir", "exclude"):
            if isinstance(out.get(key), (str, Path)):
                out[key] = str(Path(out[key]).expanduser().resolve()) if key == "exclude" else str(out[key])
        return out

    def settings(self) -> FineTuneSettings:
        return FineTuneSettings(
            unfreeze=self.unfreeze,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.train_batch_size,
            augment=self.augment,
            class_weight=self.class_weight,
            patience=self.patience,
            time_budget=self.time_budget,
            workers=self.loader_workers,
            precision=self.precision,
            seed=self.seed,
        )

    def _check_settings(self) -> None:
        """Settings errors before any work (--unfreeze N is checked against the backbone later)."""
        from headstart.data.augment import PRESETS

        if self.augment not in PRESETS:
            raise HeadstartError(f"unknown --augment '{self.augment}': choose one of {', '.join(PRESETS)}")
        if self.class_weight not in (None, "none", "balanced"):
            raise HeadstartError(f"unknown --class-weight '{self.class_weight}': use balanced or none")
        spec = str(self.unfreeze).lower()
        if not (spec in ("head", "half", "all") or (spec.startswith("last:") and spec[5:].isdigit())):
            raise HeadstartError(f"unknown --unfreeze '{self.unfreeze}': use head, last:N, half or all")
        if self.epochs < 1:
            raise HeadstartError("--epochs must be at least 1")

    def _strategy(self) -> str:
        return STRATEGY

    def fit(
        self, data: str | Path | Dataset, out_dir: str | Path | None = None, resume: bool = False
    ) -> FineTuneClassifier:
        """As :meth:`ImageClassifier.fit`, plus fine-tuning; ``resume`` continues ``out_dir``'s run."""
        if self.head != "logistic":
            raise HeadstartError("fine-tuning starts from the linear probe: use --head logistic")
        self._check_settings()
        if resume and (out_dir is None or not (Path(out_dir) / "checkpoints" / "last.pt").is_file()):
            raise HeadstartError(
                f"no checkpoint to resume in {out_dir} (checkpoints/last.pt is missing: the run ended before "
                "its first epoch); start it again without --resume"
            )
        self._fit_start = time.time()
        self._resume = resume
        if out_dir is not None and not resume:
            root = data.root if isinstance(data, Dataset) else Path(data).expanduser().resolve()
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            write_json(Path(out_dir) / RUN_CONFIG, {"data": str(root), "params": self.get_params()})
        super().fit(data, out_dir)
        return self

    def _second_stage(self, samples, features, split_arr, y, eval_split, run_dir, log, timings) -> np.ndarray:
        t = time.perf_counter()
        te = split_arr == eval_split
        probe_proba = self.head_.predict_proba(features[te])
        probe_accuracy = float((probe_proba.argmax(1) == y[te]).mean()) if te.any() else float("nan")
        log(f"linear probe: {eval_split} accuracy {probe_accuracy:.4f}; now fine-tuning")

        def items(name: str) -> list[tuple[str, int]]:
            return [(s.path, int(label)) for s, label, g in zip(samples, y, split_arr) if g == name]

        train, val = items("train"), items("val")
        settings = self.settings()
        fingerprint = settings_fingerprint(
            settings, train, {"backbone": self.backbone_.key, "val": len(val), "classes": self.classes_}
        )
        deadline = self._fit_start + self.time_budget if self.time_budget else None
        tuner = FineTuner(settings, run_dir, log, self.verbose, self.on_epoch_end)
        result = tuner.fit(
            self.backbone_.model,
            self.backbone_.data_config,
            self.head_,
            train,
            val,
            len(self.classes_),
            resume=self._resume,
            deadline=deadline,
            fingerprint=fingerprint,
        )
        timings["finetune"] = time.perf_counter() - t
        base = self.backbone_
        self.probe_backbone_ = base
        self.history_ = result.history
        self.finetune_ = {
            **result.info,
            "probe_accuracy": probe_accuracy,
            "evaluated_on": eval_split,
            "history": result.history,
        }
        if result.info.get("probe_kept"):
            # No epoch beat the probe, so the model is the feature-extraction one. The probe was
            # fitted on train only, to judge the epochs on unseen validation images; now it is
            # refitted on train + validation with its chosen C, as `--strategy
            # feature-extraction` does, so keeping the probe never gives a weaker model.
            tr, va = split_arr == "train", split_arr == "val"
            head = LogisticHead(cs=(self.head_.C,), refit=True)
            head.fit(features[tr], y[tr], features[va], y[va], len(self.classes_))
            self.head_ = head
            self.finetune_["probe_refit_on_train_val"] = True
            log(
                f"the model is the linear probe on the pretrained backbone, refitted on train + val (C={head.C})"
            )
            return head.predict_proba(features[te])
        # A new Backbone: its weights digest (and so its feature-cache key) is that of the tuned
        # weights, so its features never mix with the pretrained backbone's cached ones.
        self.backbone_ = Backbone(
            name=base.name,
            data_config=dict(base.data_config),
            weights_source=f"{base.weights_source}, fine-tuned ({self.unfreeze})",
            _model=result.backbone_model,
        )
        self.head_ = restore_head("logistic", result.head_arrays, self.head_.params())
        t = time.perf_counter()
        proba = tuner.predict_proba(items(eval_split), base.data_config)
        timings["finetune_evaluate"] = time.perf_counter() - t
        return proba

    def _metrics(self, *args: Any) -> dict[str, Any]:
        metrics = super()._metrics(*args)
        metrics["finetune"] = self.finetune_
        if self.finetune_.get("probe_refit_on_train_val"):
            metrics["head"]["fit"] = {**metrics["head"]["fit"], "refit_on_train_val": True}
        return metrics


def resume_run(run_dir: str | Path, verbose: bool = True, **overrides: Any) -> FineTuneClassifier:
    """Continue the fine-tuning run in ``run_dir`` from its last complete epoch."""
    run_dir = Path(run_dir).expanduser()
    config_path = run_dir / RUN_CONFIG
    if not config_path.is_file():
        raise HeadstartError(
            f"{run_dir} holds no fine-tuning run to resume ({RUN_CONFIG} is missing): "
            "give the --out folder of a 'headstart train --strategy finetune' run"
        )
    config = json.loads(config_path.read_text())
    params = {**config["params"], "verbose": verbose, **overrides}
    params["split"] = tuple(params["split"])
    return FineTuneClassifier(**params).fit(config["data"], out_dir=run_dir, resume=True)
