"""The training sampler's rounds: whole epochs as before, or fractions of one for training budgeted in steps."""

import numpy as np

from headstart.data.loaders import EpochSampler
from headstart.training.settings import FineTuneSettings, plan_rounds


def rounds(sampler: EpochSampler, count: int) -> list[tuple[int, int]]:
    out = []
    for k in range(1, count + 1):
        sampler.epoch = k
        out += list(sampler)
    return out


def test_a_whole_epoch_round_is_the_seeded_pass_it_always_was():
    sampler = EpochSampler(10, seed=3, shuffle=True)
    sampler.epoch = 2
    rng = np.random.default_rng([3, 2])
    order, seeds = rng.permutation(10), rng.integers(0, 2**31 - 1, 10)
    assert list(sampler) == [(int(i), int(s)) for i, s in zip(order, seeds)]


def test_rounds_of_a_fraction_of_an_epoch_walk_the_same_stream_of_passes():
    whole = rounds(EpochSampler(10, seed=3, shuffle=True), 3)
    for per_round in (4, 7, 10, 25):
        sampler = EpochSampler(10, seed=3, shuffle=True, per_round=per_round)
        stream = rounds(sampler, -(-30 // per_round))
        assert len(sampler) == per_round and stream[:30] == whole
    assert sorted(i for i, _ in whole[:10]) == list(range(10))  # each pass shows every image once


def test_plan_rounds_in_epochs_and_in_steps():
    epochs = plan_rounds(FineTuneSettings(epochs=3, batch_size=32), 100)
    assert (epochs.count, epochs.steps_each, epochs.images, epochs.total_steps) == (3, 4, None, 12)
    # 1,000 steps on 50,000 images: half the steps a round (an epoch is 1,563 steps)
    steps = plan_rounds(FineTuneSettings(steps=1000, batch_size=32), 50_000)
    assert (steps.count, steps.steps_each, steps.images) == (2, 500, 16000)
    # on 100 images an epoch (4 steps) is shorter than half of 50 steps: a round an epoch's steps
    small = plan_rounds(FineTuneSettings(steps=50, batch_size=32), 100)
    assert (small.count, small.steps_each, small.total_steps) == (13, 4, 52)
    assert plan_rounds(FineTuneSettings(steps=10, eval_every=3, batch_size=8), 100).count == 4
