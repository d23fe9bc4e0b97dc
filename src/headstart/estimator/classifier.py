"""``ImageClassifier``: the scikit-learn-style front door to transfer learning on images.

    clf = ImageClassifier().fit("photos/", out_dir="runs/photos")   # the best model 3 minutes allow
    ImageClassifier(strategy="feature-extraction").fit("photos/")   # a linear probe only: seconds
    clf.predict(["new.jpg"])
    headstart.load("runs/photos/model.safetensors").predict_top_k(["new.jpg"], k=3)
    ImageClassifier(strategy="finetune", unfreeze="half", epochs=2).fit("photos/", out_dir="runs/ft")
    ImageClassifier.resume("runs/ft")      # a killed fine-tuning run, from its last complete epoch

``fit`` computes; a :class:`~headstart.runs.writer.RunWriter` writes the run folder.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from headstart.core.choices import (
    CLASS_WEIGHTS,
    ENGINES,
    FEATURE_LAYERS,
    FEATURE_PRECISIONS,
    HEADS,
    LABEL_SOURCES,
    REPORT_MAPS,
    STRATEGIES,
    TRAINING_PRECISIONS,
    TTA_CHOICES,
)
from headstart.core.errors import HeadstartError, ParameterError
from headstart.core.params import (
    AnyOf,
    Check,
    Constraint,
    InstanceOf,
    Interval,
    Optional,
    Options,
    Pattern,
    validate_params,
)
from headstart.data.augment import PRESETS
from headstart.data.discovery import (
    Dataset,
    Sample,
    check_out_dir,
    discover,
    expand_paths,
    require_data_path,
)
from headstart.estimator.auto import AutoContext, run_auto
from headstart.estimator.explain import (
    ExplainSource,
    Explanation,
    explain_images,
    nearest_training_images,
    write_error_gallery,
)
from headstart.estimator.finetune import FineTuneJob
from headstart.estimator.fitted import FittedModel, fitted_from_bundle, model_info, saved_parameters
from headstart.estimator.fitting import (
    PreparedData,
    Split,
    Stopwatch,
    Usable,
    check_data,
    discover_data,
    head_summary,
    now_utc,
    split_samples,
    usable_samples,
)
from headstart.estimator.iteration import corrected_data, kept_splits
from headstart.estimator.layers import check_feature_options, model_features_info
from headstart.estimator.multilabel import (
    MultiLabelSettings,
    evaluate_multilabel,
    fit_multilabel,
)
from headstart.estimator.reliability import Reliability, saved_reject_params
from headstart.estimator.scoring import evaluate_single_label, evaluation_samples
from headstart.estimator.stages import (
    FitContext,
    RunRecord,
    Stage,
    auto_stage,
    finetune_stage,
    finish,
    probe_stage,
)
from headstart.evaluation.calibration import apply_temperature
from headstart.evaluation.reject import BANK_ARRAY, reject_scores, score_kind
from headstart.features.cache import FeatureCache, default_cache_dir
from headstart.features.composite import (
    CompositeExtractor,
    FeatureSpec,
    build_extractor,
    create_feature_spec,
)
from headstart.features.engines import check_feature_precision, resolve_engine
from headstart.features.extractor import ExtractionResult, FeatureExtractor
from headstart.features.sharding import extract_sharded
from headstart.models.backbones import DEFAULT_BACKBONE, Backbone
from headstart.models.bundle import library_versions, load_bundle, save_bundle
from headstart.models.card import ModelCard
from headstart.models.heads import Head
from headstart.runs.multilabel import write_multilabel_run
from headstart.runs.recipe import read_recipe
from headstart.runs.writer import (
    Predictions,
    ReportSettings,
    RunWriter,
    TrainingRun,
    read_run_config,
)
from headstart.training.distributed import in_process_group, writer_args
from headstart.training.loop import CHECKPOINT_DIR, FineTuneSettings

EVALUATION_SPLITS = ("auto", "all", "test", "val", "train")
AUTO = "auto"
FEATURE_EXTRACTION = "feature-extraction"
FINETUNE = "finetune"
EpochCallback = Callable[[int, dict[str, float]], None]


def _is_fractions(value: Any) -> bool:
    parts = [float(v) for v in value]
    return len(parts) == 3 and all(p >= 0 for p in parts) and parts[0] > 0


def _is_exclude_list(value: Any) -> bool:
    return not isinstance(value, (str, bytes)) and all(isinstance(v, (str, Path)) for v in value)


def _is_weights_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(v is None or isinstance(v, (str, Path)) for v in value)


PATH = InstanceOf((str, Path), "a path")

# What each parameter may be; checked once, at the start of ``fit``.
CONSTRAINTS: dict[str, Constraint] = {
    "strategy": Options(*STRATEGIES),
    "backbone": InstanceOf((str,), "a timm model name"),
    "weights": Optional(
        AnyOf(PATH, Check(_is_weights_list, "a list of paths (None: default), one per member"))
    ),
    "head": Options(*HEADS),  # the public heads; internal ones are the library's to choose
    "head_params": Optional(InstanceOf((dict,), "a dict of the head's parameters")),
    "seed": Interval(int, 0),
    "split": Check(_is_fractions, "three fractions train, val, test like (0.8, 0.1, 0.1)"),
    "labels_from": Options(*LABEL_SOURCES),
    "top_k": Interval(int, 1),
    "engine": Options(*ENGINES),
    "feature_precision": Options(*FEATURE_PRECISIONS),
    "features": Options(*FEATURE_LAYERS),
    "tta": Options(*TTA_CHOICES),
    "batch_size": Interval(int, 1),
    "workers": Optional(Interval(int, 1)),
    "cache_dir": Optional(PATH),
    "verbose": InstanceOf((bool,), "True or False"),
    "exclude": Optional(AnyOf(PATH, Check(_is_exclude_list, "a list of paths"))),
    "check_data": InstanceOf((bool,), "True or False"),
    "report_map": Options(*REPORT_MAPS),
    "report_heatmaps": InstanceOf((bool,), "True or False"),
    "unfreeze": Pattern(r"head|half|all|last:\d+", "head, last:N, half or all"),
    "epochs": Interval(int, 1),
    "steps": Optional(Interval(int, 1)),
    "lr": Interval(float, 0, low_open=True),
    "train_batch_size": Interval(int, 1),
    "augment": Options(*PRESETS),
    "class_weight": Options(None, *CLASS_WEIGHTS),
    "patience": Interval(int, 1),
    "time_budget": Optional(Interval(float, 0, low_open=True)),
    "precision": Options(*TRAINING_PRECISIONS),
    "loader_workers": Optional(Interval(int, 0)),
    "multi_label": Optional(InstanceOf((bool,), "True, False or None (detect)")),
    "reject": AnyOf(Options("off", "auto"), Interval(float, 0, 1)),
    "target_accuracy": Interval(float, 0, 1, low_open=True),
    "target_coverage": Interval(float, 0, 1, low_open=True),
    "corrections": Optional(PATH),
    "split_from": Optional(PATH),
}


class ImageClassifier(BaseEstimator):
    """Pretrained backbone + cached bottleneck features + a small head; optionally fine-tuned.

    Parameters are stored as given (scikit-learn style: ``get_params``, ``set_params`` and
    ``sklearn.base.clone`` work), checked in ``fit`` and never changed by it; fitted state ends
    in an underscore, all of it read from one ``FittedModel`` (``fitted_``, see
    ``estimator.fitted``) that ``fit`` and ``load`` produce.

    Args:
        strategy: ``auto`` (the default: a search over probes, fine-tuning depths, backbones
            and TTA within ``time_budget``, judged on validation; see ``auto.py``; the
            parameters stay as given, the winner's are ``best_params_``, its record ``auto_``),
            ``feature-extraction`` (a head on cached features) or ``finetune`` (then the
            backbone and head train end to end on augmented images).
        backbone: any timm model name; the default works offline.
        weights: local weights file (safetensors or torch state dict) for ``backbone``.
        head: ``logistic``, ``mlp`` or ``knn`` (fine-tuning starts from ``logistic``).
        head_params: the head's own parameters (fine-tuning default: ``{"refit": False}``, so
            validation stays unseen by the probe).
        seed: fixes the split and the training.
        split: train, val, test fractions, for data without split folders.
        labels_from: ``auto``, ``folder``, ``filename`` or ``csv``.
        top_k: k of the top-k accuracy.
        engine: feature-extraction runtime: ``auto``, ``openvino``, ``onnxruntime`` or ``torch``.
        feature_precision: feature-extraction numerics: ``auto`` (the engine's native fp32 or
            bf16) or ``int8`` (the backbone quantised once, calibrated on up to 300 of the first
            images it extracts, features cached apart; openvino or onnxruntime). Saved with the
            model, so a loaded model extracts the same way.
        features: ``last`` (the backbone's pooled output) or ``multi`` (pooled activations of
            several block groups, concatenated and standardised; the head chooses among them).
        tta: test-time augmentation: ``none`` or ``flip`` (features of the image and its mirror,
            averaged); saved with the model, so predict does the same.
        batch_size: images per feature-extraction batch.
        workers: image-decoding threads (default: the usable cores).
        cache_dir: feature cache (default ``~/.cache/headstart`` or ``$HEADSTART_CACHE``).
        verbose: print progress and a summary to stderr.
        exclude: files to leave out: a text/CSV file of paths, a ``doctor.json``, or a list.
        check_data: quick data check; duplicate groups stay on one side of the split.
        report_map: the map in ``RUN_DIR/report.html``: ``tsne``, ``pca`` or ``none``.
        report_heatmaps: the report's misclassified gallery shows each error's class activation
            map (``explain``). Off by default: the network runs once more per error in torch,
            which costs a warm re-run several times its other work; the nearest training photos
            are shown either way.
        unfreeze: fine-tuning: ``head``, ``last:N`` (block groups), ``half`` or ``all``.
        epochs: fine-tuning: most epochs (early stopping may end sooner).
        steps: fine-tuning budgeted in optimiser steps instead of epochs (images seen = steps x
            ``train_batch_size``), with an evaluation, a checkpoint and an early-stopping count
            every half of them or every epoch, the sooner; None: ``epochs``.
        lr: fine-tuning: the head's learning rate; backbone layers get less.
        train_batch_size: fine-tuning batch (``batch_size`` stays the extraction batch).
        augment: fine-tuning augmentation preset (``default``, ``keras``, ``randaugment``,
            ``trivialaugment``, ``none``).
        class_weight: fine-tuning: None (or ``none``) or ``balanced``.
        patience: fine-tuning: epochs without a better val_loss before stopping.
        time_budget: fine-tuning and auto: SECONDS of wall time for the whole ``fit``; stops
            cleanly with the best model so far (auto without one: 180 s).
        precision: fine-tuning: ``auto`` (bf16 where the CPU has it), ``bf16`` or ``fp32``.
        loader_workers: fine-tuning: image-loading processes (default: up to 4).
        multi_label: several labels per image (a CSV ``path,labels`` with ``;`` between labels);
            None detects it (any row with more than one label).
        reject: ``off``, ``auto`` (a score threshold chosen on validation so that accepted images
            reach ``target_accuracy``) or a threshold in [0, 1]; below it predict answers unknown.
            The score is the calibrated top probability times the cosine similarity to the
            nearest training image (``evaluation.reject``); the model keeps a bank of its
            training features for it.
        target_accuracy: the accuracy wanted on accepted images with ``reject="auto"``.
        target_coverage: ``reject="auto"``: the least share of known validation images accepted;
            the threshold rises to turn down the rest even when the accuracy target needs none
            (1: the accuracy target alone, the rule before this parameter).
        corrections: a CSV ``path,action,label`` of relabels and exclusions, applied to the
            data as discovered (the files are untouched; see ``data.corrections``).
        split_from: an earlier run folder: every image it recorded keeps its split there (see
            :meth:`from_run`, which also takes its recipe).
    """

    # Fitted state (set by ``fit`` or ``load``, through ``_adopt``).
    fitted_: FittedModel
    backbone_: Backbone
    head_: Head
    classes_: list[str]
    strategy_: str
    split_: dict[str, Any]
    metrics_: dict[str, Any]

    def __init__(
        self,
        *,
        strategy: str = AUTO,
        backbone: str = DEFAULT_BACKBONE,
        weights: str | Path | None = None,
        head: str = "logistic",
        head_params: dict[str, Any] | None = None,
        seed: int = 0,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        labels_from: str = "auto",
        top_k: int = 3,
        engine: str = "auto",
        feature_precision: str = "auto",
        features: str = "last",
        tta: str = "none",
        batch_size: int = 8,
        workers: int | None = None,
        cache_dir: str | Path | None = None,
        verbose: bool = True,
        exclude: str | Path | Sequence[str] | None = None,
        check_data: bool = True,
        report_map: str = "tsne",
        report_heatmaps: bool = False,
        unfreeze: str = "last:2",
        epochs: int = 4,
        steps: int | None = None,
        lr: float = 1e-3,
        train_batch_size: int = 32,
        augment: str = "default",
        class_weight: str | None = None,
        patience: int = 3,
        time_budget: float | None = None,
        precision: str = "auto",
        loader_workers: int | None = None,
        multi_label: bool | None = None,
        reject: str | float = "off",
        target_accuracy: float = 0.95,
        target_coverage: float = 0.95,
        corrections: str | Path | None = None,
        split_from: str | Path | None = None,
    ) -> None:
        # scikit-learn's contract: store every parameter as given, under its own name; check in fit
        _store_parameters(self, locals())

    # ------------------------------------------------------------------ parameters

    def _check_params(self) -> None:
        """Every parameter against ``CONSTRAINTS``, then the combinations."""
        validate_params(self.get_params(), CONSTRAINTS)
        if self.strategy == FINETUNE and self.head != "logistic":
            raise ParameterError("head", "fine-tuning starts from the linear probe: use head='logistic'")
        check_feature_precision(self.feature_precision, resolve_engine(self.engine))
        check_feature_options(self.strategy == FINETUNE, self.backbone, self.features, self.tta)

    def _head_params(self) -> dict[str, Any]:
        if self.head_params is not None:
            return dict(self.head_params)
        # The probe is fitted on train only: validation must stay unseen to judge the epochs.
        return {"refit": False} if self.strategy == FINETUNE else {}

    def _finetune_settings(self) -> FineTuneSettings:
        return FineTuneSettings(
            unfreeze=self.unfreeze,
            epochs=self.epochs,
            steps=self.steps,
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

    def _json_params(self) -> dict[str, Any]:
        """``get_params`` as JSON (``finetune.json``); ``exclude`` made absolute for a resume
        from another working folder."""
        out: dict[str, Any] = {}
        for name, value in self.get_params().items():
            if isinstance(value, (str, Path)) and name in ("exclude", "corrections", "split_from"):
                value = str(Path(value).expanduser().resolve())
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple) or (name == "exclude" and isinstance(value, list)):
                value = [str(v) if isinstance(v, Path) else v for v in value]
            out[name] = value
        return out

    # ------------------------------------------------------------------ plumbing

    def _feature_spec(self) -> FeatureSpec:
        """The fitted features; a fine-tuned backbone's own last features."""
        spec: FeatureSpec | None = getattr(self, "features_", None)
        if spec is None or spec.members[0] is not self.backbone_:
            spec = self.features_ = FeatureSpec([self.backbone_])
        return spec

    def _extractor(self, backbone: Backbone | FeatureSpec) -> FeatureExtractor | CompositeExtractor:
        return build_extractor(
            backbone,
            cache_dir=self.cache_dir,
            engine=self.engine,
            batch_size=self.batch_size,
            workers=self.workers,
            verbose=self.verbose,
            precision=self.feature_precision,
        )

    def _extract(self, paths: Sequence[str | Path]) -> ExtractionResult:
        return self._extract_with(self._feature_spec(), paths)

    def _extract_with(self, spec: FeatureSpec, paths: Sequence[str | Path]) -> ExtractionResult:
        """``paths`` extracted with ``spec`` by this classifier's engine, cache and batches."""
        extractor = self._extractor(spec)
        files = [str(p) for p in paths]
        # one backbone's plain features are shared among torchrun's ranks; composites run whole
        return (
            extract_sharded(extractor, files)
            if isinstance(extractor, FeatureExtractor)
            else extractor.extract(files)
        )

    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise HeadstartError("this classifier is not fitted yet: call fit(DATA) or headstart.load(MODEL)")

    def _report_settings(self) -> ReportSettings:
        return ReportSettings(self.report_map, self.seed, Path(self.cache_dir or default_cache_dir()))

    # ------------------------------------------------------------------ training

    def fit(
        self,
        data: str | Path | Dataset,
        out_dir: str | Path | None = None,
        on_epoch_end: EpochCallback | None = None,
    ) -> ImageClassifier:
        """Discover images, extract (cached) features, split, fit the head (then fine-tune, with
        ``strategy="finetune"``), evaluate on the test split.

        Args:
            data: a folder of class sub-folders, split folders, a CSV of path,label, or a Dataset.
            out_dir: run folder for the model bundle, ``metrics.json``, the split, the skipped
                files, the confusion matrix, the report and a log (None: nothing is written).
            on_epoch_end: fine-tuning: called as ``on_epoch_end(epoch, history_row)`` after each
                epoch (raise KeyboardInterrupt in it to stop the run cleanly).
        """
        return self._fit(data, out_dir, resume=False, on_epoch_end=on_epoch_end)

    @classmethod
    def resume(
        cls, run_dir: str | Path, on_epoch_end: EpochCallback | None = None, **overrides: Any
    ) -> ImageClassifier:
        """Continue the fine-tuning run in ``run_dir`` from its last complete epoch.

        The data and parameters come from ``run_dir/finetune.json``; ``overrides`` (e.g.
        ``verbose=False``) replace saved parameters.
        """
        run_dir = Path(run_dir).expanduser()
        config = read_run_config(run_dir)
        names = set(cls._get_param_names())
        params = {k: v for k, v in config["params"].items() if k in names}
        params.update(strategy=FINETUNE, **overrides)
        if isinstance(params.get("split"), list):
            params["split"] = tuple(params["split"])
        return cls(**params)._fit(config["data"], run_dir, resume=True, on_epoch_end=on_epoch_end)

    @classmethod
    def from_run(cls, run_dir: str | Path, **overrides: Any) -> ImageClassifier:
        """A classifier with ``run_dir``'s recipe (auto's winner, resolved: strategy, backbone,
        features, head and its C, fine-tuning settings; no search) that keeps its split for
        every image still in the data; ``overrides`` replace any parameter."""
        recipe = read_recipe(run_dir)
        return cls(**{**recipe.params, "split_from": recipe.run_dir, **overrides})

    @in_process_group  # under torchrun: every rank fits, rank 0 writes (see training.distributed)
    def _fit(
        self,
        data: str | Path | Dataset,
        out_dir: str | Path | None,
        resume: bool,
        on_epoch_end: EpochCallback | None,
    ) -> ImageClassifier:
        self._check_params()
        clock, started = Stopwatch(), time.time()
        check_out_dir(out_dir, data)
        require_data_path(data)  # before the run folder is touched
        writer = RunWriter(*writer_args(out_dir, self.verbose), staged=True, resume=resume)
        with writer:  # the run's log lines, from every layer, while it runs
            return self._fit_in_run(writer, data, resume, on_epoch_end, clock, started)

    def _fit_in_run(
        self,
        writer: RunWriter,
        data: str | Path | Dataset,
        resume: bool,
        on_epoch_end: EpochCallback | None,
        clock: Stopwatch,
        started: float,
    ) -> ImageClassifier:
        if not resume:
            writer.remove_stale_files()
        if self.strategy == FINETUNE:
            self._start_finetune_run(data, writer, resume)
        prep = self._prepare_data(data, writer, clock)
        if prep.dataset.multi_label:
            return self._fit_multilabel(prep, writer, clock, resume, started, on_epoch_end)
        dataset, excluded, usable, result = prep.dataset, prep.excluded, prep.usable, prep.extraction
        checks = None
        if self.check_data:
            with clock("data_check"):
                checks = check_data(usable, writer)
        with clock("split"):
            recorded = kept_splits(self.split_from, dataset, usable.samples)
            split = split_samples(usable.samples, self.split, self.seed, checks, usable.hashes, recorded)
        ctx = FitContext(usable, split, writer, clock, self._extract_with, self.seed)
        stage = self._head_stage(ctx, prep, started, on_epoch_end)
        if self.strategy == FINETUNE:
            stage = finetune_stage(ctx, self._finetune_job(writer, resume, started, on_epoch_end), stage)
        record = RunRecord(dataset, excluded, result, checks, self.split, self.top_k)
        targets = (self.target_accuracy, self.target_coverage)
        fitted, proba = finish(ctx, stage, record, self.reject, targets)
        self._adopt(fitted)
        self.extraction_, self.dataset_, self.checks_ = result, dataset, checks
        evaluated = split.mask(split.evaluated_on)
        paths = [s.path for s, m in zip(stage.usable.samples, evaluated) if m]
        self.test_ = {"paths": paths, "y": stage.usable.y[evaluated], "proba": proba}
        scores = fitted.metrics[split.evaluated_on]
        writer(
            f"{split.evaluated_on} accuracy {scores['accuracy']:.4f} on {scores['n']} images (top-{scores['top_k']} "
            f"{scores['top_k_accuracy']:.4f}); head {self.head} {head_summary(stage.fit_info)}"
        )
        test = Predictions(paths, self.test_["y"], proba, stage.usable.features[evaluated])
        self._write_run(writer, dataset, excluded, stage.usable, split, checks, test, clock)
        return self

    def _adopt(self, fitted: FittedModel) -> None:
        """Store a fitted model: the one place the classifier's fitted attributes are written
        (by ``fit`` and ``load``); what a model does not have is removed, so a refit leaves
        nothing of the model before it."""
        self.fitted_ = fitted
        self.features_, self.backbone_, self.head_ = fitted.spec, fitted.backbone, fitted.head
        self.classes_, self.strategy_ = fitted.classes, fitted.strategy
        self.split_, self.metrics_ = fitted.split, fitted.metrics
        self.temperature_, self.reject_threshold_ = fitted.temperature, fitted.reject_threshold
        self.reject_bank_, self.multi_label_ = fitted.reject_bank, fitted.multi_label
        optional = {
            "reliability_": fitted.reliability,
            "thresholds_": fitted.thresholds,
            "probe_backbone_": fitted.probe_backbone,
            "finetune_": fitted.finetune,
            "history_": fitted.finetune["history"] if fitted.finetune is not None else None,
            "auto_": fitted.auto,
            "best_params_": fitted.best_params,
            "meta_": fitted.meta,
        }
        for name, value in optional.items():
            if value is None:
                self.__dict__.pop(name, None)
            else:
                setattr(self, name, value)

    def _write_run(
        self,
        writer: RunWriter,
        dataset: Dataset,
        excluded: list[Sample],
        usable: Usable,
        split: Split,
        checks: Any,
        test: Predictions,
        clock: Stopwatch,
    ) -> None:
        """The run folder of a finished fit: model first, then metrics, tables and the report."""
        run = TrainingRun(
            metrics=self.metrics_,
            dataset=dataset,
            split_rows=self.split_["files"],
            splits=split.names,
            skipped=usable.skipped,
            test=test,
            started=clock.started,
            checks=checks,
            excluded=excluded,
        )
        if writer.run_dir is not None:  # the report's gallery: heatmaps and neighbours of the errors
            with clock("explain_errors"):
                write_error_gallery(
                    self._explain_source(),
                    writer.run_dir,
                    test.paths,
                    test.y,
                    test.proba,
                    heatmaps=self.report_heatmaps,
                )
        writer.write_training_run(run, self.save, self._report_settings())

    def _head_stage(
        self, ctx: FitContext, prep: PreparedData, started: float, on_epoch_end: EpochCallback | None
    ) -> Stage:
        """The head on the cached features; with ``strategy="auto"``, the search (see
        ``auto.py``), whose winner brings its own head, features and fine-tuning outcome."""
        if self.strategy != AUTO:
            return probe_stage(ctx, prep.spec, self.head, self._head_params(), self.strategy)
        result = prep.extraction
        rate = result.new_images_per_s if result.n_extracted >= 50 else None
        context = self._auto_context(prep.spec, on_epoch_end)
        with ctx.clock("auto"):
            auto = run_auto(context, ctx.usable, ctx.split, ctx.log, started, rate)
        return auto_stage(auto)

    def _auto_context(self, spec: FeatureSpec, on_epoch_end: EpochCallback | None) -> AutoContext:
        """The user's parameters, read once: the search builds its candidates from them and
        never changes them (the winner's are ``best_params_``)."""
        return AutoContext(
            backbone=self.backbone,
            weights=self.weights,
            features=self.features,
            tta=self.tta,
            head=self.head,
            head_params=self.head_params,
            seed=self.seed,
            time_budget=self.time_budget,
            cache_root=FeatureCache(self.cache_dir).root,
            finetune=self._finetune_settings(),
            verbose=self.verbose,
            spec=spec,
            extract=self._extract_with,
            on_epoch_end=on_epoch_end,
        )

    def _start_finetune_run(self, data: str | Path | Dataset, writer: RunWriter, resume: bool) -> None:
        """A resume needs a checkpoint; a new run records its data and parameters first."""
        if (
            resume
            and writer.run_dir is not None
            and not (writer.run_dir / CHECKPOINT_DIR / "last.pt").is_file()
        ):
            raise ParameterError(
                "run_dir",
                f"no checkpoint to resume in {writer.run_dir} ({CHECKPOINT_DIR}/last.pt is missing: the run ended "
                "before its first epoch); start it again instead of resuming",
            )
        if not resume:
            root = data.root if isinstance(data, Dataset) else Path(data).expanduser().resolve()
            writer.write_run_config(root, self._json_params())

    def _fit_multilabel(
        self,
        prep: PreparedData,
        writer: RunWriter,
        clock: Stopwatch,
        resume: bool,
        started: float,
        on_epoch_end: EpochCallback | None,
    ) -> ImageClassifier:
        """The rest of ``fit`` for multi-label data (see ``estimator.multilabel``)."""
        job = self._finetune_job(writer, resume, started, on_epoch_end) if self.strategy == FINETUNE else None
        settings = MultiLabelSettings(
            self.head, self._head_params(), self.check_data, tuple(self.split), self.seed, self.unfreeze
        )
        fit = fit_multilabel(settings, self.strategy, prep, writer, clock, job)
        self._adopt(fit.fitted)
        self.extraction_, self.dataset_ = prep.extraction, prep.dataset
        self.checks_, self.test_ = fit.checks, fit.test
        write_multilabel_run(writer, fit.run, self.save)
        return self

    def _finetune_job(
        self, writer: RunWriter, resume: bool, started: float, on_epoch_end: EpochCallback | None
    ) -> FineTuneJob:
        deadline = started + self.time_budget if self.time_budget else None
        return FineTuneJob(
            self._finetune_settings(),
            self.unfreeze,
            writer.run_dir,
            writer,
            self.verbose,
            resume,
            deadline,
            on_epoch_end,
        )

    def _prepare_data(self, data: str | Path | Dataset, writer: RunWriter, clock: Stopwatch) -> PreparedData:
        """Discovery and exclusion, the backbone, the (cached) features of every image."""
        with clock("discover"):
            dataset, excluded = discover_data(data, self.labels_from, self.exclude, writer, self.multi_label)
            dataset, dropped = corrected_data(dataset, self.corrections, writer)
            excluded += dropped
        with clock("backbone"):
            root = FeatureCache(self.cache_dir).root
            spec = create_feature_spec(self.backbone, self.weights, self.features, self.tta, root)
        with clock("extract"):
            result = self._extract_with(spec, dataset.paths)
        clock.timings["extract_images_per_s"] = result.images_per_s
        clock.timings["extract_new_images_per_s"] = result.new_images_per_s
        writer(
            f"features: {result.n_extracted} extracted, {result.n_cached} from cache "
            f"({result.images_per_s:.0f} images/s, engine {result.engine})"
        )
        skipped_file = writer.path("skipped.csv") if writer.run_dir is not None else None
        usable = usable_samples(dataset, result, writer, skipped_file)
        return PreparedData(dataset, excluded, spec, result, usable)

    def _model_info(self, head_extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return model_info(self.classes_, self._feature_spec(), self.strategy_, self.head_, head_extra)

    # ------------------------------------------------------------------ inference

    def transform(self, paths: Sequence[str | Path]) -> np.ndarray:
        """The backbone's features of each image (cached), one row per path; NaN rows for files
        that cannot be read."""
        self._check_fitted()
        return np.asarray(self._extract(paths).features)

    def _proba_and_errors(self, paths: Sequence[str | Path]) -> tuple[np.ndarray, dict[int, str]]:
        proba, _scores, errors = self._proba_scores_errors(paths)
        return proba, errors

    def _proba_scores_errors(
        self, paths: Sequence[str | Path]
    ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """Calibrated probabilities, reject scores (``evaluation.reject.reject_scores``, with the
        model's neighbour bank when it has one) and the unreadable files, of each path."""
        self._check_fitted()
        result = self._extract(paths)
        proba = np.full((len(paths), len(self.classes_)), np.nan)
        scores = np.full(len(paths), np.nan)
        ok = result.ok
        if ok.any():
            proba[ok] = self._calibrated_proba(result.features[ok])
            scores[ok] = reject_scores(proba[ok], result.features[ok], self._reject_bank())
        return proba, scores, result.errors

    def _reject_bank(self) -> np.ndarray | None:
        """The neighbour bank in force: the model's, while its reject option is on."""
        return getattr(self, "reject_bank_", None) if self._active_reject_threshold() is not None else None

    def _calibrated_proba(self, features: np.ndarray) -> np.ndarray:
        """The head's probabilities after temperature scaling (T = 1 for a model saved without)."""
        return apply_temperature(self.head_.predict_proba(features), getattr(self, "temperature_", 1.0))

    def _active_reject_threshold(self) -> float | None:
        """The threshold in force: None with ``reject="off"``, a number as given, else the one
        chosen on validation (``reject="auto"``)."""
        if self.reject == "off":
            return None
        if isinstance(self.reject, (int, float)) and not isinstance(self.reject, bool):
            return float(self.reject)
        return getattr(self, "reject_threshold_", None)

    def predict_proba(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Calibrated class probabilities (temperature scaling fitted on validation), one row per
        path (NaN rows for files that cannot be read)."""
        return self._proba_and_errors(paths)[0]

    def predict(self, paths: Sequence[str | Path]) -> list[Any]:
        """The most probable class of each image (None for files that cannot be read); for a
        multi-label model, the list of labels above their thresholds.

        With the reject option on (``reject`` not ``"off"``), an image whose score (its top
        calibrated probability, times its similarity to the nearest training image for a model
        with a neighbour bank) is not above the threshold gets the string ``"unknown"`` instead;
        ``predict_top_k`` tells the two apart where a class is itself named ``unknown``.
        """
        proba, scores, _errors = self._proba_scores_errors(paths)
        return self.fitted_.task.labels(self.classes_, proba, scores, self._active_reject_threshold())

    def predict_top_k(self, paths: Sequence[str | Path], k: int = 3) -> list[dict[str, Any]]:
        """``[{"path", "predictions": [{"label", "probability"}...], "labels", "unknown"}]``, plus
        ``"score"`` with the reject option on (``evaluation.answers.answer``); folders are expanded.
        A file that cannot be read is ``{"path", "predictions": [], "error"}``."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ParameterError("k", f"must be a whole number of at least 1 (got {k!r})")
        files, missing = expand_paths(paths)
        proba, scores, errors = (
            self._proba_scores_errors(files)
            if files
            else (np.zeros((0, len(self.classes_))), np.zeros(0), {})
        )
        k, task, threshold = min(k, len(self.classes_)), self.fitted_.task, self._active_reject_threshold()
        out = [
            task.unreadable(path, errors[i])
            if i in errors
            else task.item(path, self.classes_, row, k, threshold, float(scores[i]))
            for i, (path, row) in enumerate(zip(files, proba))
        ]
        return out + [task.unreadable(p, r) for p, r in missing]

    def explain(self, paths: Sequence[str | Path], label: str | None = None) -> list[Explanation]:
        """Per image, the label explained (``label``, or the most probable class) and its class
        activation map: (H, W) float32 in [0, 1] at the image's own size (``features.cam``)."""
        self._check_fitted()
        return explain_images(self._explain_source(), paths, label)

    def neighbours(self, paths: Sequence[str | Path], k: int = 5) -> list[list[dict[str, Any]]]:
        """The ``k`` training photos most like each image (from the reject option's neighbour
        bank): ``[{"path", "label", "similarity"}]``, most similar first."""
        self._check_fitted()
        return nearest_training_images(self._explain_source(), paths, k)

    def _explain_source(self) -> ExplainSource:
        return ExplainSource(self.fitted_, self.predict_proba, self._extract, self.seed)

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self, data: str | Path | Dataset, out_dir: str | Path | None = None, split: str = "auto"
    ) -> dict[str, Any]:
        """Metrics on labelled images.

        On the data the model was trained on, ``split="auto"`` uses the saved test split (so
        training images never count); on any other data, every image.
        """
        self._check_fitted()
        if split not in EVALUATION_SPLITS:
            raise ParameterError("split", f"must be one of {', '.join(EVALUATION_SPLITS)} (got {split!r})")
        multi_label = self.fitted_.multi_label
        dataset = data if isinstance(data, Dataset) else discover(data, self.labels_from, multi_label or None)
        check_out_dir(out_dir, dataset)
        writer = RunWriter(out_dir, self.verbose)
        evaluated = evaluation_samples(getattr(self, "split_", None) or {}, dataset, split)
        if multi_label:
            return evaluate_multilabel(
                self.fitted_, self._model_info(), dataset, evaluated, self._extract, writer
            )
        return evaluate_single_label(
            self.fitted_,
            self._model_info(),
            getattr(self, "temperature_", 1.0),
            self._reliability(),
            dataset,
            evaluated,
            self._extract,
            writer,
            self.top_k,
            self._report_settings(),
        )

    def score(self, data: str | Path | Dataset) -> float:
        """Accuracy on ``data`` (scikit-learn's ``score``); mAP for a multi-label model."""
        return self.fitted_.task.headline(self.evaluate(data)["test"])

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Write the one-file bundle (safetensors; weights + metadata, no pickle)."""
        self._check_fitted()
        meta = {
            "classes": self.classes_,
            "strategy": self.strategy_,
            "backbone": self.backbone_.describe(),
            "head": {"name": self.head_.name, "params": self.head_.params(), **self._reliability_meta()},
            "settings": self._bundle_settings(),
            "split": getattr(self, "split_", None),
            "metrics": {
                k: v
                for k, v in getattr(self, "metrics_", {}).items()
                if k in ("test", "val", "evaluated_on", "per_class", "confusion_matrix")
            },
            "versions": library_versions(),
            "created": now_utc(),
            **self.fitted_.task.card(),
            **model_features_info(self._feature_spec()),
        }
        state = self._feature_spec().state_arrays()
        head_arrays = {k: np.asarray(v) for k, v in self.head_.arrays().items()}
        bank = self._reject_bank()
        if bank is not None:
            head_arrays[BANK_ARRAY] = bank
        return save_bundle(path, ModelCard.from_meta(meta), state, head_arrays)

    def _reliability(self) -> Reliability:
        """The fitted temperature and the reject threshold in force."""
        fitted = getattr(self, "reliability_", None) or Reliability(getattr(self, "temperature_", 1.0))
        threshold = self._active_reject_threshold()
        mode = "auto" if self.reject == "auto" else "fixed"
        reject = fitted.reject if threshold == fitted.reject_threshold else {"mode": mode}
        return Reliability(fitted.temperature, threshold, fitted.calibration, reject, self._reject_bank())

    def _reliability_meta(self) -> dict[str, Any]:
        """The head's ``calibration`` (temperature) and ``reject`` (mode, threshold, score kind)
        in the bundle: they say how the head's probabilities become answers."""
        meta: dict[str, Any] = {"calibration": {"temperature": getattr(self, "temperature_", 1.0)}}
        threshold = self._active_reject_threshold()
        if threshold is not None:
            meta["reject"] = {
                "mode": self.reject,
                "threshold": threshold,
                "score": score_kind(self._reject_bank()),
                "target_accuracy": self.target_accuracy,
                "target_coverage": self.target_coverage,
            }
        return meta

    def _bundle_settings(self) -> dict[str, Any]:
        """What a loaded model must reuse; ``feature_precision`` only where not the default, so a
        default model's file stays byte-for-byte the format older versions read."""
        settings: dict[str, Any] = {"seed": self.seed, "split": list(self.split), "top_k": self.top_k}
        if self.feature_precision != "auto":
            settings["feature_precision"] = self.feature_precision
        return settings

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> ImageClassifier:
        """A saved bundle (``model.safetensors`` or its run folder); ``overrides`` set parameters
        such as ``cache_dir``, ``engine`` or ``verbose``."""
        card, state, head_arrays = load_bundle(path)
        fitted = fitted_from_bundle(card, state, head_arrays, path)
        params = {**saved_parameters(card), **saved_reject_params(card)}
        params.update(backbone=fitted.spec.name, features=fitted.spec.layers, tta=fitted.spec.tta)
        clf = cls(**{**params, **overrides})
        clf._adopt(fitted)
        clf.card_ = card
        return clf


def _store_parameters(estimator: BaseEstimator, values: dict[str, Any]) -> None:
    """Set each ``__init__`` parameter of ``estimator`` from ``values`` (its ``locals()``),
    unchanged, so ``get_params`` reads back exactly what was passed."""
    for name in type(estimator)._get_param_names():
        setattr(estimator, name, values[name])


class FineTuneClassifier(ImageClassifier):
    """:class:`ImageClassifier` with ``strategy="finetune"`` by default (same parameters)."""

    def __init__(self, **params: Any) -> None:
        params.setdefault("strategy", FINETUNE)
        super().__init__(**params)


# scikit-learn reads the parameters from the signature: the parent's, with the other default.
FineTuneClassifier.__init__.__signature__ = inspect.signature(ImageClassifier.__init__).replace(  # type: ignore[attr-defined]
    parameters=[
        p.replace(default=FINETUNE) if p.name == "strategy" else p
        for p in inspect.signature(ImageClassifier.__init__).parameters.values()
    ]
)


def load(path: str | Path, **overrides: Any) -> ImageClassifier:
    """Load a saved bundle (a ``model.safetensors`` file or the run folder holding it)."""
    return ImageClassifier.load(path, **overrides)


__all__ = ["ImageClassifier", "FineTuneClassifier", "load", "expand_paths", "Sample"]
