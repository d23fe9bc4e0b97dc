"""``strategy="auto"``: the best model a time budget allows, judged on the validation split only.

    ImageClassifier(strategy="auto", time_budget=15 * 60).fit("photos/", out_dir="runs/auto")

Discovery, the data check and the split are done once, by ``ImageClassifier.fit``; every
candidate is a set of ``ImageClassifier`` parameters trained on the same train images and scored
on the same validation images. The test split is scored once, by ``fit``, after the winner is
chosen.

The search:

1. The cheap candidates first: the linear probe on the last layer's features (``probe``, which
   ``fit`` has extracted already; always) and on multi-layer features (``probe-multi``, when its
   estimate fits: on 50,000 photos an uncached extraction takes minutes).
2. The training throughput of each fine-tuning depth is measured on a few batches (seconds per
   training image, and per evaluated image), so a fine-tuning candidate's cost is estimated as
   ``epochs * (n_train * train_s + n_val * eval_s) + 2 * n_val * eval_s + setup``, the measured
   rates taken ``MEASURED_TO_EPOCH`` times slower (whole epochs have been); each real
   fine-tuning round then rescales every depth's rates by its own time over its estimate. A
   probe candidate's cost is its feature extraction timed on a sample of the images (cache hits
   included, see ``_probe_estimate``) plus the head's fit.
3. Then, again and again, the candidate with the highest expected gain per minute among those
   whose estimate fits the time left runs, until none fits. A fine-tuning candidate whose whole
   epochs do not fit trains the optimiser steps that do (``estimator.budget``).
   On large data (over ``MIN_LONG_IMAGES`` training images, and the cheapest depth's whole
   epochs do not fit the time left) the probe candidates that cost little (``CHEAP_SHARE`` of
   the time left) run first; then one long run takes the time left, if it sees
   ``MIN_LONG_IMAGES`` images, re-planned after each round to end by the deadline
   (``training.callbacks.FillTime``); where it would see more than
   ``TRIALS_FROM_IMAGES``, the depths are first tried as short trials (``TRIAL_SHARE`` of the
   time each, judged like every candidate) and the better one makes the long run
   (``_explore_large``).
4. While a probe candidate other than the plain probe is the best and time is left, the
   options it lacks (flip TTA, multi-layer features) are tried on top of it
   (``_compose_probes``).
5. Last, candidates combining the fine-tuned networks already trained (``_combine_finetuned``:
   the best with flip TTA, the mean of the best ``ENSEMBLE_MAX``, with and without flip), which
   cost a mirrored validation pass per network and more at prediction.

Expected gain (validation accuracy points) = ``prior * error left``, the error left being
``1 - best validation accuracy so far`` (at least half an image of the validation split: a
perfect score on few images is no proof): the prior is the fraction of the remaining error a
candidate kind is expected to remove (``PRIORS``; fine-tuning deeper removes more and costs
more). Signals scale the priors:

- multi-layer features beating the last layer's by ``UNLIKE_IMAGENET_MARGIN`` or more hints that
  the data is unlike ImageNet: fine-tuning priors x1.5, other backbones and TTA x0.7;
- a fine-tuning candidate that does not beat the best so far halves the other fine-tuning priors;
- a fine-tuning candidate cut to fewer epochs than ``epochs`` keeps ``epochs_run / epochs`` of
  its prior.

Candidates are judged on at most ``budget.VAL_CAP`` validation images (the same ones for all).
The time the search may use is the budget less what the winner will need afterwards: its
refit, the test evaluation (for a fine-tuned winner, its network on every evaluated image), the
report's map and the run folder (``_set_reserves``). When it stops with time left it says why.

The winner has the highest validation accuracy (``Search.rank``), ties going to a tuned network
that runs at the probe's cost (no evidence either way, and fine-tuning is the better bet), else
to the candidate tried first (the cheaper and simpler one: a costlier candidate must get more
validation images right to win; a lower log-loss at equal accuracy is within the noise of a few
hundred validation images, and preferring it let multi-layer features beat the plain probe on
flowers validation and then lose on test). A winner that costs more to run than the probe
(another or a second backbone, TTA, several networks) must also beat the probe beyond noise on
the same validation images, else the next candidate down is considered (``_choose``,
``estimator.paired``). Probe winners are refitted on train + validation as
``feature-extraction`` does; fine-tuning winners are the tuned network.

A candidate whose parameters cannot run in this build (an unknown backbone, features that do
not differ from the last layer's) is ``skipped: unavailable: ...``. Interrupted (Ctrl-C, or the
budget during a fine-tuning candidate), the search keeps the best candidate so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.core.probability import log_loss, softmax
from headstart.estimator.budget import (
    STEP_ROUNDS,
    Rates,
    extraction_estimate,
    fewest_steps_seconds,
    finetune_plan,
    judged_subset,
    steps_fraction,
)
from headstart.estimator.finetune import FineTuneOutcome, _items, _tuned_backbone, _tuned_head
from headstart.estimator.fitting import Log, Split, Usable, fit_head
from headstart.estimator.layers import choose_layers
from headstart.estimator.paired import prefer_cheaper
from headstart.evaluation.metrics import classification_metrics
from headstart.features.composite import FeatureSpec, create_feature_spec
from headstart.features.extractor import ExtractionResult
from headstart.features.store import FeatureStore
from headstart.models.backbones import Backbone
from headstart.models.heads import Head, averaged_linear_head
from headstart.training.callbacks import FillTime
from headstart.training.loop import FineTuner, FineTuneResult, FineTuneSettings
from headstart.training.throughput import MEASURE_BATCH_SIZE, measure_training

DEFAULT_TIME_BUDGET_S = 180.0  # strategy="auto" without a time_budget: the README's whole quick-start line
# (pip install, train, evaluate, predict) must stay under 5 minutes on 2 cores; install and the
# other commands took 94 s of it
FINAL_RESERVE_S = 15.0  # kept back for the run folder, the report and the bundle (see _set_reserves)
UNLIKE_IMAGENET_MARGIN = 0.01
SECOND_BACKBONE = "tf_efficientnet_lite2"
FINETUNE_DEPTHS = ("last:2", "last:3", "half")
PRIORS = {
    "probe-multi": 0.10,
    "probe-tta": 0.05,
    "probe-backbone": 0.15,
    "probe-ensemble": 0.20,
    "finetune:last:2": 0.25,
    "finetune:last:3": 0.30,
    "finetune:half": 0.35,
}
# Extraction cost of a probe candidate relative to the first extraction (per image).
EXTRACTION_COST = {"probe-multi": 1.0, "probe-tta": 2.0, "probe-backbone": 2.5, "probe-ensemble": 2.5}
DEFAULT_EXTRACTION_RATE = 60.0  # images/s assumed when the first extraction came from the cache
MEASURE_BATCHES = 5  # training batches run per depth; the median of those after the first counts
LARGE_SHARE = 1.0  # large data: the cheapest depth's whole epochs need more than this share of the time left
# (1: they do not fit at all; flowers in 15 minutes is not large: three depths train whole epochs)
TRIAL_SHARE = 0.12  # large data: each depth's trial gets this share of the time left
TRIALS_FROM_IMAGES = 40_000  # large data: trials first only when the long run would see more than this
TRIAL_DEPTHS = ("last:2", "last:3")  # large data: the depths tried (half costs too much per step)
# Large data: the long run must see this many images. Fewer did not beat the probe: 5,248 images
# of last:2 on 50,000 32-px flower crops (val 0.771 against 0.783), one epoch of flowers (2,939).
MIN_LONG_IMAGES = 10_000
# Large data: probe candidates estimated at most this share of the time left run before the long
# run (another backbone and the ensemble from the cache: 20-30 s of 15 minutes on 50,000 photos)
CHEAP_SHARE = 0.05
PROBE_SAMPLE = 64  # images a probe candidate's extraction is timed on (after 8 that start the engine)
MAP_S_PER_POINT = 0.012  # the report's t-SNE map, per test image mapped (5,000 took 55 s on 2 busy cores)
COMPILE_S = 20.0  # a tuned winner's feature path compiled for the test split
ENSEMBLE_MAX = 3  # fine-tuned networks averaged at most (each one more network at prediction)
# Whole epochs have run 1.5-2x slower than the measured batches here (the loader falling behind,
# fewer free cores by then): the first estimates assume 1.5x, until a real epoch calibrates them.
MEASURED_TO_EPOCH = 1.5


class Unavailable(Exception):
    """A candidate whose parameters this build cannot run."""


@dataclass(frozen=True)
class CandidateParams:
    """The ``ImageClassifier`` parameters a candidate sets (None: the user's own), and for a
    combined candidate the fine-tuning candidates it is made of.

    The field order is the order ``metrics.json`` lists them in (``record``)."""

    members: tuple[str, ...] | None = None
    features: str | None = None
    tta: str | None = None
    backbone: str | None = None
    unfreeze: str | None = None
    epochs: int | None = None
    steps: int | None = None  # fine-tuning budgeted in optimiser steps (then ``epochs`` is None)

    def record(self) -> dict[str, Any]:
        """The parameters set, as ``metrics.json`` and the log list them."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


Extract = Callable[[FeatureSpec, Sequence[str]], ExtractionResult]


@dataclass(frozen=True)
class AutoContext:
    """What the search reads of the classifier being fitted: the user's parameters (the base of
    every candidate, never changed), the fitted base features and how to extract others.

    Args:
        spec: the base probe's features (``usable.features`` are these).
        extract: extracts ``paths`` with ``spec`` as the classifier does (its engine, cache,
            batch size, precision).
        finetune: the user's fine-tuning settings; a candidate replaces its depth, epochs and seed.
    """

    backbone: str
    weights: str | Path | Sequence[str | Path | None] | None
    features: str
    tta: str
    head: str
    head_params: dict[str, Any] | None
    seed: int
    time_budget: float | None
    cache_root: Path
    finetune: FineTuneSettings
    verbose: bool
    spec: FeatureSpec
    extract: Extract
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None


@dataclass
class Fitted:
    """What a candidate trained (kept for the winner only)."""

    backbone: Backbone
    head: Head
    features: np.ndarray | FeatureStore | None = (
        None  # probe candidates: the head's columns of every usable sample
    )
    spec: FeatureSpec | None = None  # probe candidates: backbones, layers (and those chosen), TTA
    layer_info: dict[str, Any] = field(default_factory=dict)
    tuner: FineTuner | None = None
    result: FineTuneResult | None = None


@dataclass
class Candidate:
    """One set of ``ImageClassifier`` parameters tried on the shared split."""

    name: str
    kind: str  # "probe", "finetune" or "finetune-combined"
    params: CandidateParams
    prior: float = 0.0
    allotted_s: float | None = None  # a trial's share of the time (None: the time left)
    rounds: int = STEP_ROUNDS  # evaluations when budgeted in steps
    eval_every: int | None = None  # steps between them, as planned (set by _estimate)
    fills_time: bool = False  # budgeted in steps: re-planned after each round to end with its time
    status: str = "pending"
    estimate_s: float | None = None
    expected_gain: float | None = None
    val_accuracy: float | None = None
    val_log_loss: float | None = None
    seconds: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    fitted: Fitted | None = None
    val_proba: np.ndarray | None = field(default=None, repr=False)  # on the judged validation images
    all_val_proba: np.ndarray | None = field(default=None, repr=False)  # probes: on every one

    def record(self) -> dict[str, Any]:
        """The candidate as ``metrics.json``'s ``auto.candidates`` lists it."""
        return {
            "name": self.name,
            "kind": self.kind,
            "params": self.params.record(),
            "status": self.status,
            "val_accuracy": self.val_accuracy,
            "val_log_loss": self.val_log_loss,
            "seconds": None if self.seconds is None else round(self.seconds, 2),
            "estimate_s": None if self.estimate_s is None else round(self.estimate_s, 1),
            "expected_gain": None if self.expected_gain is None else round(self.expected_gain, 5),
            "prior": self.prior,
            **self.detail,
        }


@dataclass
class Search:
    """The shared inputs of every candidate, the clock and what has been tried."""

    ctx: AutoContext
    usable: Usable
    split: Split
    log: Log
    ends: float  # time.time() at which the budget ends (fit's start + the budget)
    val_rows: np.ndarray  # the validation images every candidate is judged on (budget.VAL_CAP at most)
    reserve_s: dict[str, float] = field(default_factory=lambda: {"probe": FINAL_RESERVE_S})
    candidates: list[Candidate] = field(default_factory=list)
    throughput: dict[str, dict[str, float]] = field(default_factory=dict)
    extraction_rate: float = DEFAULT_EXTRACTION_RATE
    stopped: str | None = None  # "interrupted" when Ctrl-C ended the search
    measure_seconds: float = 0.0
    calibration: float = MEASURED_TO_EPOCH  # real fine-tuning epochs / measured batches, so far
    flip_val: dict[str, np.ndarray] = field(default_factory=dict)  # fine-tuned: mirrored val proba
    specs: dict[str, FeatureSpec] = field(default_factory=dict)  # probe candidates' (built to estimate)
    stop_reason: str = ""

    def left(self, finetuned: bool = False) -> float:
        """Seconds the search may still use: the budget less what its winner needs after it (a
        fine-tuned winner needs more: ``finetuned``, or once a tuned network is a candidate)."""
        tuned = finetuned or any(c.kind != "probe" for c in self.eligible())
        reserve = self.reserve_s.get("finetune", 0.0) if tuned else 0.0
        return self.ends - max(reserve, self.reserve_s["probe"]) - time.time()

    @property
    def deadline(self) -> float:
        """The ``time.time()`` a fine-tuning candidate must stop by."""
        return time.time() + self.left(finetuned=True)

    @property
    def n_val(self) -> int:
        return int(self.val_rows.sum())

    def eligible(self) -> list[Candidate]:
        """Scored candidates with a model of their own (a fine-tuning that kept the probe has none)."""
        return [c for c in self.candidates if c.val_accuracy is not None and not c.detail.get("probe_kept")]

    def best(self) -> Candidate:
        return min(self.eligible(), key=self.rank)

    def rank(self, c: Candidate) -> tuple[float, int, int]:
        """Sort key, best first: validation accuracy; on a tie, a tuned network that runs at the
        probe's cost, then the candidate tried first (a later, costlier one must get more
        validation images right, not just tie).

        Why the tuned network wins a tie with the probe: a tie is no evidence either way, and
        without evidence fine-tuning is the better bet (Kornblith et al. 2019, "Do Better
        ImageNet Models Transfer Better?": fine-tuning beat logistic regression on the features
        on nearly all of 12 data sets); it costs nothing more to run, and its training is spent.
        """
        tuned_free = c.kind != "probe" and self.at_probe_cost(c)
        return (-(c.val_accuracy or 0.0), 0 if tuned_free else 1, self.candidates.index(c))

    def at_probe_cost(self, c: Candidate) -> bool:
        """Whether ``c`` costs what the probe does on every prediction (``_run_cost``)."""
        return _run_cost(self, c) == _run_cost(self, self.candidates[0])

    def items(self, name: str) -> list[tuple[str, int]]:
        """The (path, label) pairs of a split; for ``val`` the judged subset."""
        if name != "val":
            return _items(self.usable, self.split, name)
        return [(s.path, int(y)) for s, y, v in zip(self.usable.samples, self.usable.y, self.val_rows) if v]

    def named(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)


@dataclass(frozen=True)
class AutoResult:
    """The winner as ``fit`` uses it: head (+ its fit info), the usable samples with the
    winner's features, the fine-tuning outcome (None for a probe winner), the strategy it
    amounts to, ``metrics.json``'s ``auto`` section, the winner's features (``spec``; its first
    member is the model's backbone), the pretrained backbone a tuned winner started from, and
    the winner's parameters (scikit-learn's ``best_params_``: the user's stay as given)."""

    head: Head
    fit_info: dict[str, Any]
    usable: Usable
    outcome: FineTuneOutcome | None
    strategy: str
    record: dict[str, Any]
    spec: FeatureSpec
    probe_backbone: Backbone | None
    best_params: dict[str, Any]


def run_auto(
    ctx: AutoContext,
    usable: Usable,
    split: Split,
    log: Log,
    started: float,
    extraction_rate: float | None = None,
) -> AutoResult:
    """The search (see the module docstring) from the base features and the shared split.

    Args:
        ctx: the user's parameters and the fitted base features (``usable.features``).
        started: ``time.time()`` at the start of ``fit`` (the budget counts from there).
        extraction_rate: images/s of the first extraction where it extracted enough images to
            tell (None: ``DEFAULT_EXTRACTION_RATE``).
    """
    budget = float(ctx.time_budget or DEFAULT_TIME_BUDGET_S)
    val = split.mask("val")
    search = Search(ctx, usable, split, log, started + budget, judged_subset(val, usable.y, ctx.seed))
    search.extraction_rate = extraction_rate or DEFAULT_EXTRACTION_RATE
    judged = f"{search.n_val} val images" + (
        f" (a stratified subset of the {int(val.sum())})" if search.n_val < val.sum() else ""
    )
    log(f"auto: searching for {budget / 60:.1f} min; candidates judged on {judged}")
    base = Candidate(
        "probe", "probe", CandidateParams(features=ctx.features, tta=ctx.tta, backbone=ctx.backbone)
    )
    search.candidates.append(base)
    run_candidate(search, base, required=True)
    try:
        _explore(search)
        if not search.stopped:
            _combine_finetuned(search)
    except KeyboardInterrupt:
        search.stopped = "interrupted"
        log("auto: interrupted; the best candidate so far is the model")
    for c in search.candidates:
        if c.status == "pending":
            c.status = "skipped: interrupted" if search.stopped else _budget_reason(search, c)
    if search.stop_reason:
        log(f"auto: the search ends: {search.stop_reason}")
    return finish(search)


def _explore(search: Search) -> None:
    """The other cheap candidate, the throughput measure, then the rest: on large data the
    depths' trials and the long run first (``_explore_large``), then by gain per minute."""
    multi = Candidate("probe-multi", "probe", CandidateParams(features="multi"), PRIORS["probe-multi"])
    search.candidates.append(multi)
    _estimate(search, multi)
    if multi.estimate_s is not None and multi.estimate_s <= search.left():
        run_candidate(search, multi)
    search.candidates += _planned(search)
    _measure_throughput(search)
    _set_reserves(search)
    _apply_signals(search, multi)
    if _is_large(search):
        _cheap_probes(search)
        _explore_large(search)
    if not search.stopped:
        _by_gain(search)
    while not search.stopped and _compose_probes(search):
        _by_gain(search)


def _effective(search: Search, params: CandidateParams) -> tuple[str, str, str]:
    """A probe candidate's backbone, features and TTA, the user's where it sets none."""
    ctx = search.ctx
    return (params.backbone or ctx.backbone, params.features or ctx.features, params.tta or ctx.tta)


def _compose_probes(search: Search) -> bool:
    """When a probe candidate is the best and time is left, the options it lacks (flip TTA,
    multi-layer features) added to it as new candidates (on 50,000 photos the ensemble of two
    backbones won, and its flip TTA was the next thing to try); whether any was added."""
    best = search.best()
    if best.kind != "probe" or best is search.candidates[0]:
        return False
    tried = {_effective(search, c.params) for c in search.candidates if c.kind == "probe"}
    added = False
    options = (
        ("flip", replace(best.params, tta="flip"), PRIORS["probe-tta"]),
        ("multi", replace(best.params, features="multi"), PRIORS["probe-multi"]),
    )
    for value, params, prior in options:
        if _effective(search, params) in tried:
            continue
        search.candidates.append(Candidate(f"{best.name} {value}", "probe", params, prior))
        added = True
    return added


def _by_gain(search: Search) -> None:
    """Again and again the pending candidate of highest expected gain per minute that fits."""
    while not search.stopped:
        pending = [c for c in search.candidates if c.status == "pending"]
        for c in pending:
            _estimate(search, c)
        fitting = [c for c in pending if c.estimate_s is not None and c.estimate_s <= _time_for(search, c)]
        if not fitting:
            search.stop_reason = _stop_reason(search, pending)
            return
        chosen = max(fitting, key=lambda c: (c.expected_gain or 0.0) / max(c.estimate_s or 1.0, 1.0))
        before = search.best()
        run_candidate(search, chosen)
        if chosen.kind == "finetune" and search.best() is before:
            for c in search.candidates:
                if c.kind == "finetune" and c.status == "pending":
                    c.prior /= 2


def _time_for(search: Search, c: Candidate) -> float:
    """The seconds ``c`` may take: its allotment at most (a trial's), and a fine-tuning candidate
    leaves the reserve a tuned winner needs."""
    left = search.left(finetuned=c.kind != "probe")
    return left if c.allotted_s is None else min(left, c.allotted_s)


def _stop_reason(search: Search, pending: list[Candidate]) -> str:
    """Why the search ends now, in one line (logged, and ``auto.stop_reason`` in metrics.json)."""
    left = max(search.left(), 0.0)
    if not pending:
        return f"every candidate was tried ({left:.0f} s of the search's time left)"
    priced = [c for c in pending if c.estimate_s is not None]
    if not priced:
        return f"no pending candidate can be estimated ({left:.0f} s left)"
    nearest = min(priced, key=lambda c: (c.estimate_s or 0.0) - _time_for(search, c))
    return (
        f"no pending candidate fits the time left (the nearest, {nearest.name}, needs ~{nearest.estimate_s:.0f} s, "
        f"{max(_time_for(search, nearest), 0):.0f} s left for it)"
    )


def _is_large(search: Search) -> bool:
    """Whether the data is large: more training images than ``MIN_LONG_IMAGES`` (an epoch is
    more than a long run's floor), and one depth's whole epochs need more than ``LARGE_SHARE``
    of the time left. Smaller data cut short by the budget stays with the gain loop, whose
    candidate trains the steps that fit (flowers in 3 minutes: about one epoch)."""
    rates = [Rates(**r) for d, r in search.throughput.items() if d in TRIAL_DEPTHS]
    n_train = int(search.split.mask("train").sum())
    if not rates or n_train <= MIN_LONG_IMAGES:
        return False
    epochs = int(search.ctx.finetune.epochs)
    whole = min(epochs * (n_train * r.train_s + search.n_val * r.eval_s) for r in rates)
    return whole > LARGE_SHARE * search.left(finetuned=True)


def _explore_large(search: Search) -> None:
    """Large data: one long fine-tuning run with the time left, if it sees ``MIN_LONG_IMAGES``
    (else none: the time goes to the other candidates). Where it would see more than
    ``TRIALS_FROM_IMAGES``, each of ``TRIAL_DEPTHS`` first trains a short trial (``TRIAL_SHARE``
    of the time left) and the better depth makes the long run; otherwise the cheaper depth does,
    with all the time (a trial of a few thousand images tells the depths apart no better than
    noise, and its time is the long run's)."""
    trials = [search.named(f"finetune:{d}") for d in TRIAL_DEPTHS if f"finetune:{d}" in _names(search)]
    if not trials or trials[0].params.unfreeze not in search.throughput:
        return
    images = _long_images(search, trials[0].params.unfreeze or "")
    if images < MIN_LONG_IMAGES:
        search.log(
            f"auto: large data: a long fine-tuning run would see {images} images in the time left, fewer "
            f"than {MIN_LONG_IMAGES} (shorter runs did not beat the probe): no fine-tuning"
        )
        for c in search.candidates:
            if c.kind == "finetune" and c.status == "pending":
                c.status = (
                    f"skipped: large data: {images} images in the time left, fewer than {MIN_LONG_IMAGES}"
                )
        return
    depth = _trial_winner(search, trials) if images > TRIALS_FROM_IMAGES else trials[0].params.unfreeze
    if depth is None or search.stopped:
        return
    # four rounds, re-planned after each to end by the deadline (a round it cuts is dropped)
    long = Candidate(
        f"finetune:{depth} long", "finetune", CandidateParams(unfreeze=depth), rounds=4, fills_time=True
    )
    long.allotted_s = _long_seconds(search)
    search.candidates.append(long)
    _estimate(search, long)
    if long.estimate_s is None or long.estimate_s > _time_for(search, long):
        return
    run_candidate(search, long)
    for c in search.candidates:
        if c.kind == "finetune" and c.status == "pending":
            c.status = "skipped: large data: the long run took the time"


def _long_seconds(search: Search) -> float:
    """The long run's time as first planned: 95% of the time left (its rounds are then
    re-planned to end by the search's deadline: ``_fill_time``). Nothing is kept for its flip
    TTA (on the large set it added 1.2 validation points to one long run and 0.2 to another):
    the time trains more steps, and the combined candidates run if time is left."""
    return 0.95 * search.left(finetuned=True)


def _cheap_probes(search: Search) -> None:
    """Large data: the pending probe candidates that cost at most ``CHEAP_SHARE`` of the time
    left, by expected gain per second, before the long run takes the rest."""
    while not search.stopped:
        pending = [c for c in search.candidates if c.kind == "probe" and c.status == "pending"]
        for c in pending:
            _estimate(search, c)
        limit = CHEAP_SHARE * search.left()
        cheap = [c for c in pending if c.estimate_s is not None and c.estimate_s <= limit]
        if not cheap:
            return
        run_candidate(
            search, max(cheap, key=lambda c: (c.expected_gain or 0.0) / max(c.estimate_s or 1.0, 1.0))
        )


def _long_images(search: Search, depth: str) -> int:
    """Images a long run of ``depth`` would see with the time left (0 when none fits)."""
    planned = Candidate("long (planned)", "finetune", CandidateParams(unfreeze=depth), rounds=4)
    planned.allotted_s = _long_seconds(search)
    _estimate(search, planned)  # priced only: never added to the candidates
    if planned.params.steps is None:  # whole epochs fit, or nothing does
        return 0 if planned.params.epochs is None or planned.expected_gain == 0.0 else 10**9
    return planned.params.steps * search.ctx.finetune.batch_size


def _trial_winner(search: Search, trials: list[Candidate]) -> str | None:
    """The depth whose trial scored best (ties: the cheaper, tried first), or the cheaper depth
    when no trial fits its ``TRIAL_SHARE`` of the time left."""
    left = search.left(finetuned=True)
    for trial in trials:
        trial.allotted_s = TRIAL_SHARE * left
        _estimate(search, trial)
        if trial.estimate_s is not None and trial.estimate_s <= _time_for(search, trial):
            run_candidate(search, trial)
        else:
            trial.allotted_s = None  # not a trial after all: the gain loop may price it again
        if search.stopped:
            return None
    done = [t for t in trials if t.val_accuracy is not None]
    best = max(done, key=lambda t: (t.val_accuracy, -trials.index(t))) if done else trials[0]
    return best.params.unfreeze


def _names(search: Search) -> set[str]:
    return {c.name for c in search.candidates}


def _planned(search: Search) -> list[Candidate]:
    """Fine-tuning depths, a second backbone, the ensemble and TTA, as parameter sets."""
    ctx = search.ctx
    out = [
        Candidate(
            f"finetune:{d}",
            "finetune",
            CandidateParams(unfreeze=d, epochs=ctx.finetune.epochs),
            PRIORS[f"finetune:{d}"],
        )
        for d in FINETUNE_DEPTHS
    ]
    if ctx.backbone != SECOND_BACKBONE:
        out.append(
            Candidate(
                "probe-backbone", "probe", CandidateParams(backbone=SECOND_BACKBONE), PRIORS["probe-backbone"]
            )
        )
        out.append(
            Candidate(
                "probe-ensemble",
                "probe",
                CandidateParams(backbone=f"{ctx.backbone}+{SECOND_BACKBONE}"),
                PRIORS["probe-ensemble"],
            )
        )
    out.append(Candidate("probe-tta", "probe", CandidateParams(tta="flip"), PRIORS["probe-tta"]))
    return out


def _apply_signals(search: Search, multi: Candidate) -> None:
    """Multi-layer features beating the last layer's hint at data unlike ImageNet (see docstring)."""
    base = search.candidates[0]
    if multi.val_accuracy is None or base.val_accuracy is None:
        return
    if multi.val_accuracy - base.val_accuracy < UNLIKE_IMAGENET_MARGIN:
        return
    search.log("auto: multi-layer features beat the last layer's: the data looks unlike ImageNet")
    for c in search.candidates:
        if c.status == "pending":
            c.prior *= 1.5 if c.kind == "finetune" else 0.7


def _budget_reason(search: Search, c: Candidate) -> str:
    if c.estimate_s is None:
        return "skipped: budget (no estimate)"
    # the time it may take: a fine-tuning candidate's leaves what a tuned winner needs after it
    return f"skipped: budget (needs ~{c.estimate_s:.0f} s, {max(_time_for(search, c), 0):.0f} s left)"


# ---------------------------------------------------------------------- estimates


def _estimate(search: Search, c: Candidate) -> None:
    """``c.estimate_s`` and ``c.expected_gain`` from the measured rates and the error left."""
    error_left = max(1.0 - (search.best().val_accuracy or 0.0), 0.5 / max(search.n_val, 1))
    if c.kind == "probe":
        if c.estimate_s is None:  # the sample is timed once
            c.estimate_s = _probe_estimate(search, c)
        c.expected_gain = c.prior * error_left
        return
    assert c.params.unfreeze is not None
    rates = search.throughput.get(c.params.unfreeze)
    if rates is None:
        c.estimate_s = None
        return
    n_train = int(search.split.mask("train").sum())
    epochs = int(search.ctx.finetune.epochs)
    allotted = c.allotted_s if c.allotted_s is not None else search.left(finetuned=True)
    plan = finetune_plan(
        Rates(**rates), n_train, search.n_val, search.ctx.finetune.batch_size, epochs, allotted, c.rounds
    )
    if plan is None:  # not even the fewest steps fit: priced at those, so it is skipped
        batch = search.ctx.finetune.batch_size
        c.estimate_s = fewest_steps_seconds(Rates(**rates), n_train, search.n_val, batch)
        c.expected_gain = 0.0
        return
    c.params = replace(c.params, epochs=plan.epochs, steps=plan.steps)
    c.eval_every, c.estimate_s = plan.eval_every, plan.seconds
    c.expected_gain = c.prior * error_left * steps_fraction(plan, n_train, epochs)


def _probe_estimate(search: Search, c: Candidate) -> float | None:
    """A probe candidate's seconds: its extraction timed on ``PROBE_SAMPLE`` of the images (after
    8 that load and compile the engine), at the sample's mix of cache hits and new images, plus
    its head's fit (the base probe's, twice for the layer choice of multi-layer features); None
    when its parameters cannot run here."""
    base = search.candidates[0]
    try:
        spec = _candidate_spec(search, c)
    except Exception as e:  # noqa: BLE001 - a candidate that cannot run is skipped, never the search
        c.status = f"skipped: unavailable: {str(e)[:200]}"
        return None
    paths = [s.path for s in search.usable.samples]
    # a fresh sample each run: a seeded one would be cached by the first run's estimate and
    # time as cache hits in every later run (the sample decides an estimate, never a model)
    rng = np.random.default_rng()
    sample = [paths[i] for i in rng.choice(len(paths), min(len(paths), PROBE_SAMPLE + 8), replace=False)]
    t0 = time.perf_counter()
    search.ctx.extract(spec, sample[:8])
    started = time.perf_counter()
    search.ctx.extract(spec, sample[8:])
    timed = time.perf_counter() - started
    head_s = (base.seconds or 1.0) * (2.0 if c.params.features == "multi" else 1.0)
    seconds = extraction_estimate(len(paths), timed, len(sample) - 8, started - t0) + head_s
    c.detail["estimate_from"] = (
        f"{len(sample) - 8} images timed ({timed:.1f} s) after {started - t0:.1f} s of start"
    )
    return seconds


def _candidate_spec(search: Search, c: Candidate) -> FeatureSpec:
    """The candidate's features (built once): the user's weights file only for the user's backbone."""
    if c.name not in search.specs:
        ctx = search.ctx
        backbone = c.params.backbone or ctx.backbone
        weights = ctx.weights if backbone == ctx.backbone else None
        features, tta = c.params.features or ctx.features, c.params.tta or ctx.tta
        search.specs[c.name] = create_feature_spec(backbone, weights, features, tta, ctx.cache_root)
    return search.specs[c.name]


def _set_reserves(search: Search) -> None:
    """What the winner needs after the search (``search.reserve_s``): the report's map of the
    evaluated split and the run folder for any winner; a probe's head refitted on train + val
    (the base probe's fit again); a tuned network's predictions on the evaluated split and on the
    validation images the search did not judge on (its calibration takes all of them)."""
    from headstart.reporting.run_report import MAX_MAP_POINTS

    n_eval = int(search.split.mask(search.split.evaluated_on).sum())
    n_val_rest = int(search.split.mask("val").sum()) - search.n_val
    mapped = min(n_eval, MAX_MAP_POINTS)
    common = FINAL_RESERVE_S + MAP_S_PER_POINT * mapped
    search.reserve_s["probe"] = common + (search.candidates[0].seconds or 0.0)
    # the measured forward pass, without the allowance for whole epochs (the test split runs
    # through the compiled feature path, as fast or faster), and that path's compile
    rates = [r["eval_s"] / MEASURED_TO_EPOCH for r in search.throughput.values()]
    if rates:
        search.reserve_s["finetune"] = common + COMPILE_S + (n_eval + n_val_rest) * max(rates)
    search.log(
        "auto: kept back for after the search: "
        + ", ".join(f"{k} winner {v:.0f} s" for k, v in search.reserve_s.items())
    )


def _measure_throughput(search: Search) -> None:
    """Seconds per training image of each fine-tuning depth (a few real batches: augmentation,
    forward, backward, step) and per evaluated image; stored in ``search.throughput``."""
    if search.left() <= 0:
        return
    base = search.candidates[0]
    assert base.fitted is not None
    t0 = time.time()
    search.log("auto: measuring fine-tuning throughput on a few batches")
    items = search.items("train")[: MEASURE_BATCHES * MEASURE_BATCH_SIZE]
    for depth in FINETUNE_DEPTHS:
        try:
            rates = measure_training(
                base.fitted.backbone, base.fitted.head, items, depth, search.ctx.finetune
            )
            search.throughput[depth] = {k: v * MEASURED_TO_EPOCH for k, v in rates.items()}
        except HeadstartError as e:  # a backbone without block groups cannot unfreeze by depth
            search.log(f"auto: fine-tuning {depth} unavailable: {e}")
    line = ", ".join(
        f"{d} {1 / r['train_s']:.1f} img/s train, {1 / r['eval_s']:.0f} img/s eval"
        for d, r in search.throughput.items()
    )
    search.measure_seconds = time.time() - t0
    search.log(
        f"auto: fine-tuning throughput measured in {search.measure_seconds:.0f} s: {line} (per epoch, with the x{MEASURED_TO_EPOCH} allowance)"
    )


# ---------------------------------------------------------------------- running candidates


def run_candidate(search: Search, c: Candidate, required: bool = False) -> None:
    """Train ``c``, score it on validation, keep its model only while it is the best."""
    t0 = time.perf_counter()
    search.log(
        f"auto: trying {c.name} {c.params.record()}"
        + (f" (estimate {c.estimate_s:.0f} s)" if c.estimate_s else "")
    )
    try:
        c.fitted, proba = RUNNERS[c.kind](search, c)
    except KeyboardInterrupt:
        c.status, c.seconds = "stopped: interrupted", time.perf_counter() - t0
        if required:
            raise
        search.stopped = "interrupted"
        search.log(f"auto: {c.name} interrupted after {c.seconds:.0f} s")
        return
    except Exception as e:  # noqa: BLE001 - a candidate that cannot run is skipped, never the search
        if required:
            raise
        c.status, c.seconds = f"skipped: unavailable: {str(e)[:200]}", time.perf_counter() - t0
        search.log(f"auto: {c.name} {c.status}")
        return
    c.seconds, c.val_proba = time.perf_counter() - t0, proba
    scores = candidate_scores(search.usable.y[search.val_rows], proba, search.usable.classes)
    c.val_accuracy, c.val_log_loss = scores["accuracy"], scores["log_loss"]
    c.status = c.status if c.status.startswith("stopped") else "done"
    if c.detail.get("probe_kept"):
        c.status += " (no epoch beat the probe: no model of its own, not eligible)"
    search.log(
        f"auto: {c.name}: val accuracy {c.val_accuracy:.4f}, log-loss {c.val_log_loss:.4f} in {c.seconds:.0f} s"
    )
    best = search.best()
    for other in search.candidates:
        # probe models stay in memory only while best (or the probe fine-tuning starts from);
        # fine-tuned networks stay: the combined candidates average them
        # (a probe on one other backbone stays too: a tuned network may be averaged with it)
        if (
            other.kind == "probe"
            and other not in (best, search.candidates[0])
            and not _partner(search, other)
        ):
            other.fitted = None


def candidate_scores(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Validation accuracy and log-loss of a candidate (the only scores the search compares)."""
    metrics = classification_metrics(y, proba, classes, 1)
    return {"accuracy": float(metrics["accuracy"]), "log_loss": log_loss(proba, y)}


def _candidate_features(search: Search, c: Candidate) -> tuple[FeatureSpec, np.ndarray | FeatureStore]:
    """The candidate's feature spec and the features of every usable sample: the base
    candidate's are those ``fit`` extracted; the others are extracted (cached) now, with the
    user's weights file only for the user's backbone."""
    ctx, usable = search.ctx, search.usable
    if c is search.candidates[0]:
        return ctx.spec, usable.features
    spec = _candidate_spec(search, c)
    result = ctx.extract(spec, [s.path for s in usable.samples])
    if not result.ok.all():
        raise Unavailable(f"{int((~result.ok).sum())} image(s) unreadable with these parameters")
    if result.features.shape == usable.features.shape and np.allclose(result.features, usable.features):
        raise Unavailable(f"{c.params.record()} gave the same features as the base probe's")
    return spec, result.features


def _run_probe(search: Search, c: Candidate) -> tuple[Fitted, np.ndarray]:
    """A head on the candidate's features (fitted on train only; validation judges it);
    multi-layer features first keep the layer groups that predict validation best."""
    ctx, split = search.ctx, search.split
    spec, features = _candidate_features(search, c)
    usable, layer_info = choose_layers(spec, replace(search.usable, features=features), split, search.log)
    head_params = {**(ctx.head_params or {}), "refit": False} if ctx.head == "logistic" else ctx.head_params
    head, info = fit_head(ctx.head, head_params or {}, ctx.seed, usable, split)
    c.detail["head"] = {k: v for k, v in info.items() if k in ("C", "k", "best_epoch")}
    if spec.selected is not None:
        c.detail["layer_groups"] = list(spec.selected)
    fitted = Fitted(spec.members[0], head, usable.features, spec, layer_info)
    c.all_val_proba = head.predict_proba(usable.features[split.mask("val")])  # free: features known
    return fitted, c.all_val_proba[search.val_rows[split.mask("val")]]


def _run_finetune(search: Search, c: Candidate) -> tuple[Fitted, np.ndarray]:
    """Fine-tune from the last-layer probe (fitted on train only); the tuned network's
    probabilities on validation (the tuner keeps its best epoch, or the probe).

    The k-th fine-tuning candidate trains with seed ``seed + k`` (its own batches and
    augmentations): networks tuned from one start on the same batches make the same mistakes,
    and the combined candidates average them.
    """
    ctx, base = search.ctx, search.candidates[0]
    c.detail["seed"] = ctx.seed + sum(
        1 for o in search.candidates if o.kind == "finetune" and "seed" in o.detail and o is not c
    )
    assert base.fitted is not None and base.fitted.spec is not None
    if ctx.head != "logistic":
        raise Unavailable("fine-tuning starts from the linear probe: head='logistic'")
    if not base.fitted.spec.is_plain:
        raise Unavailable("fine-tuning starts from one backbone's last features: features='last', tta='none'")
    assert c.params.unfreeze is not None and (c.params.epochs or c.params.steps)
    # the candidate's depth, length and seed; the wall-time budget is the search's deadline
    settings = replace(
        ctx.finetune,
        unfreeze=c.params.unfreeze,
        epochs=int(c.params.epochs or 1),
        steps=c.params.steps,
        eval_every=c.eval_every,
        time_budget=None,
        seed=c.detail["seed"],
    )
    backbone = base.fitted.backbone
    fill = _fill_time(search, c)
    tuner = FineTuner(settings, None, ctx.verbose, ctx.on_epoch_end, callbacks=fill)
    result = tuner.fit(
        backbone.model,
        backbone.data_config,
        base.fitted.head,
        search.items("train"),
        search.items("val"),
        len(search.usable.classes),
        deadline=search.deadline,
        start_val=_probe_start(search, settings.label_smoothing),
    )
    info = result.info
    _record_run(c, info, fill[0].replans if fill else [])
    if result.history:
        round_images = info.get("images_seen") and info["images_seen"] / max(info["epochs_run"], 1)
        seconds = float(np.mean([r["seconds"] for r in result.history]))
        _calibrate(search, settings.unfreeze, seconds, round_images or None)
    proba = result.val_proba  # the best round's evaluation: the same network on the same images
    if proba is None:
        proba = tuner.predict_proba(search.items("val"), backbone.data_config)
    return Fitted(backbone, base.fitted.head, tuner=tuner, result=result), proba


def _record_run(c: Candidate, info: dict[str, Any], replans: list[tuple[int, int, int]]) -> None:
    """What a fine-tuning candidate's run did, in its record (``metrics.json``)."""
    c.detail.update(
        epochs_run=info["epochs_run"], best_epoch=info["best_epoch"], probe_kept=info["probe_kept"]
    )
    if c.params.steps is not None:
        c.detail.update(steps_run=info.get("steps_run"), images_seen=info.get("images_seen"))
    if replans:  # the steps it was re-planned to are its parameters now
        c.detail.update(steps_first_planned=c.params.steps, replanned=[list(r) for r in replans])
        c.params = replace(c.params, steps=info["steps_planned"])
    if info["stopped_because"] == "time_budget":
        c.status = "stopped by budget"


def _fill_time(search: Search, c: Candidate) -> list[FillTime]:
    """The long run's re-planning to end by the search's deadline (see ``FillTime``); none for
    the others, whose length is their share of a plan that other candidates follow."""
    if not (c.fills_time and c.allotted_s and c.params.steps):
        return []
    return [FillTime(search.deadline)]


def _probe_start(search: Search, label_smoothing: float) -> dict[str, float] | None:
    """The probe's validation loss (label-smoothed, as the rounds' are) and accuracy on the judged
    images, from its probabilities: what a fine-tuning run must beat, without evaluating it again."""
    base = search.candidates[0]
    if base.val_proba is None or base.val_accuracy is None:
        return None
    y = search.usable.y[search.val_rows]
    logp = np.log(np.clip(base.val_proba, 1e-12, 1.0))
    k = logp.shape[1]
    loss = -(1 - label_smoothing) * logp[np.arange(len(y)), y] - label_smoothing / k * logp.sum(axis=1)
    return {"val_loss": float(loss.mean()), "val_accuracy": float(base.val_accuracy)}


def _combine_finetuned(search: Search) -> None:
    """Candidates made of the fine-tuned networks the search trained: the best one with flip TTA,
    and the mean of the best ``ENSEMBLE_MAX`` (logits averaged), without and with flip TTA.

    They train nothing: validation costs one mirrored pass per network (plain passes are kept
    from the candidates), so they come last, when the budget allows no more training. Their price
    is at prediction: ``inference_cost`` (networks x views) times one network's.
    """
    tuned = [c for c in search.eligible() if c.kind == "finetune"]
    tuned = sorted(tuned, key=lambda c: -c.val_accuracy)[:ENSEMBLE_MAX]  # type: ignore[operator]
    plans = [(tuned[:1], "flip")] if tuned else []
    if len(tuned) > 1:
        plans += [(tuned, "none"), (tuned, "flip")]
    partners = [c for c in search.eligible() if _partner(search, c) and c.fitted is not None]
    if tuned and partners:  # the best tuned network and the probe on another backbone
        plans.append(([tuned[0], max(partners, key=lambda c: c.val_accuracy or 0.0)], "none"))
    for members, tta in plans:
        names = [m.name for m in members]
        name = (
            f"ensemble:{'+'.join(n.removeprefix('finetune:') for n in names)}" if len(names) > 1 else names[0]
        )
        c = Candidate(
            name + (" tta" if tta == "flip" else ""),
            "finetune-combined",
            CandidateParams(members=tuple(names), tta=tta),
        )
        c.detail["inference_cost"] = len(members) * (2 if tta == "flip" else 1)
        c.estimate_s = _combined_seconds(search, members, tta)
        search.candidates.append(c)
        if c.estimate_s > search.left():
            continue  # pending: reported as skipped for the budget
        run_candidate(search, c)


def _combined_seconds(search: Search, members: list[Candidate], tta: str) -> float:
    """A combined candidate's mirrored validation passes not yet made, and its extra networks
    and views on the evaluated split at the end."""
    n_val = search.n_val
    n_eval = int(search.split.mask(search.split.evaluated_on).sum())
    seconds = 0.0
    for i, m in enumerate(members):
        if m.kind == "probe":  # its features of every image are known (cached)
            continue
        eval_s = search.throughput.get(m.params.unfreeze or "", {}).get("eval_s", 0.05)
        if tta == "flip" and m.name not in search.flip_val:
            seconds += 2 * n_val * eval_s
        views = 2 if tta == "flip" else 1
        seconds += (views - (1 if i == 0 else 0)) * n_eval * eval_s
    return seconds


def _partner(search: Search, c: Candidate) -> bool:
    """Whether ``c`` is a probe on one other backbone (last-layer features, no TTA): a tuned
    network of the first backbone averaged with it sees the images through two networks, as the
    two-backbone probe does, one of them tuned to the data."""
    if c.kind != "probe":
        return False
    backbone, features, tta = _effective(search, c.params)
    return "+" not in backbone and backbone != search.ctx.backbone and features == "last" and tta == "none"


def _run_combined(search: Search, c: Candidate) -> tuple[None, np.ndarray]:
    """A combined candidate's validation probabilities (its members' networks, kept in memory)."""
    members = [search.named(n) for n in c.params.members or ()]
    probas = []
    for m in members:
        if c.params.tta == "none":
            probas.append(m.val_proba)
            continue
        if m.name not in search.flip_val:
            assert m.fitted is not None and m.fitted.tuner is not None
            config = m.fitted.backbone.data_config
            search.flip_val[m.name] = m.fitted.tuner.predict_proba(search.items("val"), config, "flip")
        probas.append(search.flip_val[m.name])
    return None, mean_logit_proba(probas)


def mean_logit_proba(probas: list[Any]) -> np.ndarray:
    """Softmax of the networks' mean logits, from their probabilities (log-probabilities are the
    logits less a per-row constant, which the softmax ignores): what ``averaged_linear_head``
    computes from the members' features."""
    if len(probas) == 1:
        return np.asarray(probas[0])
    logits = np.mean([np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-30, 1.0)) for p in probas], axis=0)
    return softmax(logits)


def _calibrate(search: Search, depth: str, epoch_s: float, round_images: float | None = None) -> None:
    """Scale every depth's measured rates by how far a real round (an epoch, or
    ``round_images`` images) was from its estimate: a few batches miss what a whole epoch meets
    (the loader falling behind, other programs)."""
    rates = search.throughput.get(depth)
    if not rates:
        return
    n_train = round_images or int(search.split.mask("train").sum())
    predicted = n_train * rates["train_s"] + search.n_val * rates["eval_s"]
    factor = epoch_s / predicted if predicted > 0 else 1.0
    for r in search.throughput.values():
        r["train_s"], r["eval_s"] = r["train_s"] * factor, r["eval_s"] * factor
    search.calibration *= factor
    search.log(
        f"auto: a {depth} round took {epoch_s:.0f} s, estimated {predicted:.0f} s: estimates x{factor:.2f}"
    )


# ---------------------------------------------------------------------- the winner


def finish(search: Search) -> AutoResult:
    """The winner becomes the model: its head refitted (probe) or its tuned network kept
    (fine-tuning), its parameters the result's ``best_params`` (the user's are never changed);
    the winner is chosen by ``_choose``; the test split is evaluated afterwards."""
    split = search.split
    winner, paired = _choose(search)
    reason = _why(search, winner) + _paired_note(paired)
    for c in search.candidates:
        search.log(f"auto: {_summary_line(c)}")
    search.log(f"auto: the winner is {winner.name} {winner.params.record()}: {reason}")
    record = {
        "time_budget_s": float(search.ctx.time_budget or DEFAULT_TIME_BUDGET_S),
        "search_seconds": round(sum(c.seconds or 0.0 for c in search.candidates), 2),
        "stopped": search.stopped,
        "judged_on": "val",
        "n_val": search.n_val,
        "n_val_all": int(split.mask("val").sum()),
        "stop_reason": search.stop_reason,
        "reserve_s": {k: round(v, 1) for k, v in search.reserve_s.items()},
        "throughput": search.throughput,
        "throughput_measure_seconds": round(search.measure_seconds, 2),
        "throughput_calibration": round(search.calibration, 3),
        "extraction_images_per_s": search.extraction_rate,
        "candidates": [c.record() for c in search.candidates],
        "winner": winner.name,
        "winner_params": winner.params.record(),
        "why": reason,
        "paired": paired,
    }
    members = [search.named(n) for n in winner.params.members or (winner.name,)]
    if winner.kind == "probe":
        assert winner.fitted is not None
        return _probe_winner(search, winner.fitted, record, winner.params.record())
    best_params = {k: v for k, v in winner.params.record().items() if k not in ("members", "epochs")}
    first = members[0].params
    best_params.update(unfreeze=first.unfreeze, epochs=first.epochs, steps=first.steps)
    best_params = {k: v for k, v in best_params.items() if v is not None}
    return _finetune_winner(search, winner, members, record, best_params)


def _choose(search: Search) -> tuple[Candidate, dict[str, Any]]:
    """The most accurate candidate on validation whose cost is justified (``paired``): one that
    runs at the probe's cost, or a costlier one better than the probe beyond noise; and the
    paired test's record (the chosen one's, with the costlier ones passed over)."""
    probe = search.candidates[0]
    top = search.best()
    others = [c for c in search.eligible() if c is not top]
    ranked = [top, *sorted(others, key=search.rank)]
    passed_over: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None
    for c in ranked:
        chosen, paired = _paired(search, c, probe)
        first = first or paired
        if chosen is c and c is not probe:
            return c, {**paired, "passed_over": passed_over} if passed_over else paired
        if chosen is c:  # the probe: the record is the test of the top one passed over, if any
            break
        passed_over.append({"name": c.name, "val_accuracy": c.val_accuracy, "p_value": paired["p_value"]})
    record = first or {"test": "none", "why": "no candidate scored"}
    return probe, {**record, "passed_over": passed_over} if passed_over else record


def _paired(search: Search, c: Candidate, probe: Candidate) -> tuple[Candidate, dict[str, Any]]:
    """``prefer_cheaper`` of ``c`` against the probe: on every validation image when both are
    probes (their features are known), else on the judged ones."""
    same = search.at_probe_cost(c)
    if c.all_val_proba is not None and probe.all_val_proba is not None:
        y_all = search.usable.y[search.split.mask("val")]
        return prefer_cheaper(c, probe, y_all, c.all_val_proba, probe.all_val_proba, same)
    return prefer_cheaper(c, probe, search.usable.y[search.val_rows], same_cost=same)


def _run_cost(search: Search, c: Candidate) -> tuple[tuple[str, ...], int]:
    """What ``c`` costs on every prediction: its backbones, and the networks times the views it
    runs per image (a fine-tuned network runs its backbone once, as the probe does)."""
    backbone, _, tta = _effective(search, c.params)
    backbones = tuple(backbone.split("+"))
    networks = len(c.params.members) if c.params.members else len(backbones)
    return backbones, networks * (2 if tta == "flip" else 1)


def _summary_line(c: Candidate) -> str:
    """One candidate of the log's closing table: name, parameters, score, time, status, estimate."""
    scored = (
        f"val {c.val_accuracy:.4f} (log-loss {c.val_log_loss:.4f})" if c.val_accuracy is not None else "-"
    )
    took = f"{c.seconds:.0f} s" if c.seconds is not None else "-"
    estimate = f", estimate {c.estimate_s:.0f} s" if c.estimate_s is not None else ""
    return f"{c.name:<16} {scored:<32} {took:>6}  {c.status}{estimate}  {c.params.record()}"


def _why(search: Search, winner: Candidate) -> str:
    others = [c for c in search.eligible() if c is not winner]
    if not others:
        return "the only candidate that finished"
    runner = min(others, key=search.rank)
    if (runner.val_accuracy or 0.0) > (winner.val_accuracy or 0.0):
        return (
            f"validation accuracy {winner.val_accuracy:.4f}; {runner.name} scored {runner.val_accuracy:.4f} "
            "but costs more to run"
        )
    tie = ""
    if runner.val_accuracy == winner.val_accuracy:
        tuned_first = search.rank(winner)[1] < search.rank(runner)[1]
        tie = "; a tie goes to " + (
            "the tuned network, which runs at the probe's cost"
            if tuned_first
            else "the candidate tried first"
        )
    return (
        f"highest validation accuracy {winner.val_accuracy:.4f} (next: {runner.name} {runner.val_accuracy:.4f}"
        + tie
        + ")"
    )


def _paired_note(paired: dict[str, Any]) -> str:
    """The paired test in the winner's line: how sure, and whether it kept the probe."""
    if "p_value" not in paired:
        return ""
    if paired["beyond_noise"]:
        verdict = "beyond noise"
    elif paired.get("same_cost"):
        verdict = "not beyond noise, but it runs at the probe's cost: kept"
    else:
        verdict = "not beyond noise: the cheaper probe is kept"
    return (
        f"; against {paired['against']} on the same {paired['n_val']} validation images {paired['best']} "
        f"fixes {paired['best_fixes']}, breaks {paired['best_breaks']} (exact McNemar p = {paired['p_value']:.3g}, "
        f"{verdict})"
    )


def _probe_winner(search: Search, fitted: Fitted, record: dict[str, Any], best: dict[str, Any]) -> AutoResult:
    """The winning features' head refitted as ``feature-extraction`` fits it (C chosen on
    validation, then train + validation)."""
    ctx = search.ctx
    assert fitted.features is not None and fitted.spec is not None
    usable = replace(search.usable, features=fitted.features)
    head, info = fit_head(ctx.head, dict(ctx.head_params or {}), ctx.seed, usable, search.split)
    info.update(fitted.layer_info)
    return AutoResult(head, info, usable, None, "feature-extraction", record, fitted.spec, None, best)


def _finetune_winner(
    search: Search, winner: Candidate, members: list[Candidate], record: dict[str, Any], best: dict[str, Any]
) -> AutoResult:
    """The tuned network, or several averaged (one head on their concatenated features) and/or
    with flip TTA; ``fit`` scores it on the evaluated split through its saved feature path."""
    split, base = search.split, search.candidates[0]
    tta = winner.params.tta or "none"
    fitted = [m.fitted for m in members]
    assert all(f is not None for f in fitted) and fitted[0] is not None and fitted[0].result is not None
    # a tuned member's network and head; a probe member's (another backbone) pretrained ones
    tuned = [
        _tuned_backbone(f.backbone, f.result, m.params.unfreeze) if f.result is not None else f.backbone  # type: ignore[union-attr, arg-type]
        for f, m in zip(fitted, members)
    ]
    heads = [_tuned_head(f.head, f.result) if f.result is not None else f.head for f in fitted]  # type: ignore[union-attr]
    first = fitted[0]
    assert first is not None and first.result is not None
    info = {
        **first.result.info,
        "probe_accuracy": None,
        "evaluated_on": split.evaluated_on,
        "history": first.result.history,
    }
    if winner.kind == "finetune-combined":
        info.update(combined={"members": list(winner.params.members or ()), "tta": tta}, **winner.detail)
    head = heads[0] if len(heads) == 1 else averaged_linear_head(heads)
    outcome = FineTuneOutcome(tuned[0], head, None, info, _all_val_proba(search, winner, members))
    # one tuned network's own last features; several (or with TTA) averaged by one head
    spec = FeatureSpec(tuned, "last", tta) if len(tuned) > 1 or tta != "none" else FeatureSpec([tuned[0]])
    fit_info = dict(base.detail.get("head", {}))
    return AutoResult(head, fit_info, search.usable, outcome, "finetune", record, spec, first.backbone, best)


def _all_val_proba(search: Search, winner: Candidate, members: list[Candidate]) -> np.ndarray | None:
    """A tuned winner's probabilities on every validation image (calibration takes them all):
    those it was judged on, and its networks' on the others (the search judged on a subset)."""
    val = search.split.mask("val")
    if winner.val_proba is None or search.n_val == int(val.sum()):
        return winner.val_proba
    rest = val & ~search.val_rows
    items = [(s.path, int(y)) for s, y, r in zip(search.usable.samples, search.usable.y, rest) if r]
    tta = winner.params.tta or "none"
    probas = []
    judged_in_val = search.val_rows[val]
    for m in members:
        if m.kind == "probe" and m.all_val_proba is not None:  # its features of every image are known
            probas.append(m.all_val_proba[~judged_in_val])
            continue
        assert m.fitted is not None and m.fitted.tuner is not None
        probas.append(m.fitted.tuner.predict_proba(items, m.fitted.backbone.data_config, tta))
    out = np.zeros((int(val.sum()), winner.val_proba.shape[1]))
    out[judged_in_val], out[~judged_in_val] = winner.val_proba, mean_logit_proba(probas)
    search.log(f"auto: the winner's network on the {len(items)} validation images it was not judged on")
    return out


RUNNERS: dict[str, Callable[[Search, Candidate], tuple[Any, np.ndarray]]] = {
    "probe": _run_probe,
    "finetune": _run_finetune,
    "finetune-combined": _run_combined,
}


__all__ = [
    "AutoContext",
    "AutoResult",
    "Candidate",
    "CandidateParams",
    "DEFAULT_TIME_BUDGET_S",
    "PRIORS",
    "run_auto",
    "candidate_scores",
]
