"""How ``strategy="auto"`` sizes its candidates to the time it has: pure arithmetic on measured
rates, so the rules read (and test) without a network.

Fine-tuning is budgeted in optimiser steps, not whole epochs (``FineTuneSettings.steps``): a
candidate that cannot train its whole epochs in the time it is given trains as many steps as
fit, in rounds that each end with an evaluation, so on 50,000 photos a candidate may see a
tenth of an epoch and still be judged, and the winner trains with the time left.

Validation is capped (``VAL_CAP`` images, a seeded stratified subset): every fine-tuning
candidate is judged on the same images and evaluates them after every round (the probe's score
on them is known, and the best round's evaluation is the candidate's score: no other pass).
Why 1,000: on 2 CPU cores an evaluation of 1,000 images takes 8-25 s, so a short trial can
afford two; a 95% interval on an accuracy near 80% is about +-2.5 points, and the paired test
the search ends with (the same images under two models) sees much less: a 3-point gain on 1,000
images (60 images fixed, 30 broken) has p = 0.001. Probe candidates, whose features are known,
are also compared on every validation image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headstart.training.settings import FineTuneSettings, plan_rounds

VAL_CAP = 1000
SETUP_S = 5.0  # a fine-tuning candidate's network copy and loader start
# a fine-tuning candidate sees at least this many images (or one epoch, if fewer), or does not run
MIN_STEP_IMAGES = 2000
STEP_ROUNDS = 2  # evaluations of a candidate budgeted in steps (half its steps apart)


@dataclass(frozen=True)
class Rates:
    """Seconds per image of a fine-tuning depth: training (augmentation, forward, backward,
    step) and evaluation (forward only)."""

    train_s: float
    eval_s: float


@dataclass(frozen=True)
class FinetunePlan:
    """A fine-tuning candidate's length: ``epochs`` whole epochs (``steps`` None), or ``steps``
    optimiser steps; its estimated seconds and the images it sees."""

    epochs: int | None
    steps: int | None
    seconds: float
    images_seen: int
    eval_every: int | None = None  # steps between evaluations (with ``steps``)


def finetune_plan(
    rates: Rates,
    n_train: int,
    n_val: int,
    batch_size: int,
    epochs: int,
    allotted_s: float,
    rounds: int = STEP_ROUNDS,
) -> FinetunePlan | None:
    """The longest run that fits ``allotted_s``: the ``epochs`` wanted if they fit, else the
    steps that fit, evaluated ``rounds`` times; None when fewer than ``MIN_STEP_IMAGES`` images'
    worth of steps fit."""
    evaluation = n_val * rates.eval_s
    fixed = SETUP_S  # the probe's score is known; the best round's evaluation is the candidate's
    whole = fixed + epochs * (n_train * rates.train_s + evaluation)
    if whole <= allotted_s:
        return FinetunePlan(epochs, None, whole, epochs * n_train)
    step_s = batch_size * rates.train_s
    steps = int((allotted_s - fixed - rounds * evaluation) // step_s) if step_s > 0 else 0
    per_epoch = max(1, -(-n_train // batch_size))
    each = min(per_epoch, max(1, steps // rounds))
    steps = (steps // each) * each  # whole rounds: plan_rounds would round a part up, past the time
    if steps * batch_size < least_images(n_train):
        return None
    cut = plan_rounds(FineTuneSettings(steps=steps, eval_every=each, batch_size=batch_size), n_train)
    seconds = fixed + cut.total_steps * step_s + cut.count * evaluation
    return FinetunePlan(None, steps, seconds, cut.total_steps * batch_size, each)


def least_images(n_train: int) -> int:
    """The fewest images a fine-tuning candidate sees: ``MIN_STEP_IMAGES``, or one epoch if fewer."""
    return min(MIN_STEP_IMAGES, n_train)


def fewest_steps_seconds(rates: Rates, n_train: int, n_val: int, batch_size: int) -> float:
    """Seconds of the shortest fine-tuning candidate that runs: ``least_images`` images' worth of
    steps and its evaluations (what a skipped candidate's status says it needs)."""
    steps = -(-least_images(n_train) // batch_size)
    evaluation = n_val * rates.eval_s
    return SETUP_S + STEP_ROUNDS * evaluation + steps * batch_size * rates.train_s


def judged_subset(val: np.ndarray, y: np.ndarray, seed: int, cap: int = VAL_CAP) -> np.ndarray:
    """The validation images the search judges on: all of ``val`` (a mask) up to ``cap``, else a
    seeded subset of ``cap`` with each class in proportion (at least one image of each)."""
    rows = np.flatnonzero(val)
    if len(rows) <= cap:
        return val.copy()
    rng = np.random.default_rng([seed, 7])
    chosen: list[np.ndarray] = []
    for label in np.unique(y[rows]):
        of_class = rows[y[rows] == label]
        take = max(1, int(round(cap * len(of_class) / len(rows))))
        chosen.append(rng.choice(of_class, min(take, len(of_class)), replace=False))
    out = np.zeros_like(val)
    out[np.concatenate(chosen)] = True
    return out


def steps_fraction(plan: FinetunePlan, n_train: int, epochs: int) -> float:
    """The share of the wanted ``epochs`` a plan trains (1 for whole epochs)."""
    if plan.steps is None:
        return 1.0
    return min(1.0, plan.images_seen / max(1, epochs * n_train))


def extraction_estimate(n_images: int, sample_seconds: float, sample_images: int, start_s: float) -> float:
    """Seconds to extract ``n_images`` at a sample's pace (cache hits and new images in the
    sample's mix) plus the engine's start (model load and compile, paid once)."""
    per_image = sample_seconds / max(sample_images, 1)
    return start_s + n_images * per_image
