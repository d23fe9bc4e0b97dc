"""The fine-tuning loop's callbacks: hooks and their order, stopping, the built-in ones, and the
loop's functions without a run folder (tiny generated images, one or two short epochs)."""

import copy
import csv
import io
import logging

import numpy as np
import pytest
import torch
from conftest import make_class_folders, tiny_probe

from headstart.training.callbacks import (
    HISTORY_COLUMNS,
    Callback,
    CallbackList,
    EarlyStopping,
    FillTime,
    History,
    TimeBudget,
)
from headstart.training.loop import EpochData, FineTuner, Objective, evaluate, run_epochs
from headstart.training.settings import FineTuneSettings, Rounds
from headstart.training.state import TrainState


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """24 train / 6 val generated images, the default backbone and a probe head fitted on random features."""
    root = make_class_folders(tmp_path_factory.mktemp("cb") / "colors", per_class=10)
    backbone, head, items, classes = tiny_probe(root)
    return {
        "args": (
            backbone.model,
            {**backbone.data_config, "input_size": (3, 64, 64)},
            head,
            [it for i, it in enumerate(items) if i % 5],
            [it for i, it in enumerate(items) if not i % 5],
            len(classes),
        ),
    }


def settings(**kw):
    base = dict(unfreeze="last:1", epochs=1, batch_size=8, workers=0, precision="fp32", seed=0, threads=1)
    return FineTuneSettings(**{**base, **kw})


class Recorder(Callback):
    """Keeps (name, hook, epoch) for every hook it gets."""

    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def on_fit_start(self, state):
        self.calls.append((self.name, "fit_start", state.epoch))

    def on_epoch_start(self, state):
        self.calls.append((self.name, "epoch_start", state.epoch))

    def on_batch_end(self, state):
        self.calls.append((self.name, "batch_end", state.epoch))

    def on_epoch_end(self, state, row):
        assert row is state.history[-1] and row["epoch"] == state.epoch
        self.calls.append((self.name, "epoch_end", state.epoch))

    def on_fit_end(self, state):
        self.calls.append((self.name, "fit_end", state.epoch))

    def on_exception(self, state, error):
        self.calls.append((self.name, f"exception:{type(error).__name__}", state.epoch))


class StopAfter(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, state, row):
        if state.epoch == self.epoch:
            state.request_stop("enough", "stopped by StopAfter")


def test_a_callback_stops_the_run_with_its_reason(tiny, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="headstart"):
        result = FineTuner(
            settings(epochs=3, patience=5),
            tmp_path / "run",
            verbose=False,
            callbacks=[StopAfter(1)],
        ).fit(*tiny["args"])
    lines = caplog.messages
    assert result.info["stopped_because"] == "enough" and result.info["epochs_run"] == 1
    assert [r["epoch"] for r in result.history] == [1]
    epoch_line = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/3"))
    assert lines[epoch_line + 1] == "stopped by StopAfter"
    rows = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1"]  # the epoch that ended before the stop is kept


def test_hooks_fire_in_order_after_the_built_in_callbacks(tiny):
    calls = []
    FineTuner(
        settings(epochs=2, patience=5),
        verbose=False,
        on_epoch_end=lambda epoch, row: calls.append(("fn", "epoch_end", epoch)),
        callbacks=[Recorder("a", calls), Recorder("b", calls)],
    ).fit(*tiny["args"])
    per_epoch = lambda e: [  # noqa: E731
        ("a", "epoch_start", e),
        ("b", "epoch_start", e),
        *[(n, "batch_end", e) for _ in range(3) for n in "ab"],  # 24 images, batches of 8
        ("fn", "epoch_end", e),  # the user's function before the extra callbacks
        ("a", "epoch_end", e),
        ("b", "epoch_end", e),
    ]
    assert calls == [
        ("a", "fit_start", 0),
        ("b", "fit_start", 0),
        *per_epoch(1),
        *per_epoch(2),
        ("a", "fit_end", 2),
        ("b", "fit_end", 2),
    ]


def test_an_interrupt_reaches_every_callback_then_propagates(tiny, caplog):
    class Interrupt(KeyboardInterrupt):
        pass

    class InterruptAtStart(Callback):
        def on_epoch_start(self, state):
            raise Interrupt

    calls = []
    tuner = FineTuner(
        settings(),
        verbose=False,
        callbacks=[InterruptAtStart(), Recorder("a", calls)],
    )
    with caplog.at_level(logging.INFO, logger="headstart"), pytest.raises(Interrupt):
        tuner.fit(*tiny["args"])
    assert calls == [("a", "fit_start", 0), ("a", "exception:Interrupt", 1)]
    assert caplog.messages[-1] == "interrupted during epoch 1: 0 epoch(s) saved"


def scripted(losses, patience, epochs):
    """EarlyStopping fed a val_loss sequence: the epoch it stops after (None: never)."""
    state = TrainState(settings=FineTuneSettings(epochs=epochs))
    stopping = EarlyStopping(patience)
    stopping.on_fit_start(state)
    for epoch, loss in enumerate(losses, 1):
        state.epoch = epoch
        stopping.on_epoch_end(state, {"val_loss": loss})
        if state.stop:
            assert state.stop == "early_stopping" and "2 epoch(s)" in state.stop_message
            return epoch
    return None


def test_early_stopping_counts_epochs_without_improvement():
    assert scripted([1.0, 0.9, 0.95, 0.91, 0.5], patience=2, epochs=5) == 4
    assert scripted([1.0, 0.9, 0.8, 0.7, 0.6], patience=2, epochs=5) is None
    assert scripted([1.0, 1.0, 0.99995], patience=2, epochs=5) == 3  # below min_delta: no improvement
    assert scripted([1.0, 0.9, 0.8, 0.85, 0.86], patience=2, epochs=5) is None  # never after the last epoch
    # a resumed run goes on from the checkpoint's best and count
    state = TrainState(settings=FineTuneSettings(epochs=9), waited=1)
    state.best["val_loss"], state.epoch = 0.5, 4
    stopping = EarlyStopping(2)
    stopping.on_fit_start(state)
    stopping.on_epoch_end(state, {"val_loss": 0.6})
    assert state.waited == 2 and state.stop == "early_stopping"


def test_time_budget_drops_an_interrupted_epoch():
    now = [100.0]
    state = TrainState(settings=FineTuneSettings(), trained_s=30.0, epoch=2)
    budget = TimeBudget(deadline=150.0, clock=lambda: now[0])
    budget.on_fit_start(state)  # a resumed run's 30 s count: 120 is the end
    budget.on_epoch_start(state)
    budget.on_batch_end(state)
    assert state.stop is None
    now[0] = 120.0
    budget.on_batch_end(state)
    assert state.stop == "time_budget" and "epoch 2" in state.stop_message
    TimeBudget(None).on_batch_end(state := TrainState(settings=FineTuneSettings()))
    assert state.stop is None


def test_fill_time_re_plans_the_rounds_to_end_by_its_deadline():
    """4 rounds of 10 steps planned; a round takes 10 s (8 s of training): with 55 s left after
    round 1 the run grows to 6 rounds, with 12 s left after round 2 it shrinks to 3; the warm-up
    stays, the cosine ends at the new last step; after the last round nothing changes."""
    now = [0.0]
    layer = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    settings = FineTuneSettings(steps=40, eval_every=10, batch_size=32)
    state = TrainState(
        settings, optimizer=optimizer, scheduler=scheduler, rounds=Rounds(4, 10, 320), warmup_steps=4
    )
    fill = FillTime(until=65.0, clock=lambda: now[0])
    fill.on_fit_start(state)
    for epoch, clock, rounds in ((1, 10.0, 6), (2, 53.0, 3), (3, 64.0, 3)):
        state.epoch, now[0] = epoch, clock
        state.history.append({"epoch": epoch, "seconds": 10.0, "images_per_s": 40.0})
        fill.on_epoch_end(state, state.history[-1])
        assert state.epochs == rounds
    assert fill.replans == [(1, 6, 60), (2, 3, 30)]
    schedule = scheduler.lr_lambdas[0]
    assert (
        schedule(0) == pytest.approx(0.25)
        and schedule(29) < 0.01
        and schedule(30) == pytest.approx(0.0, abs=1e-12)
    )
    assert schedule(17) == pytest.approx(0.5)  # half-way through the cosine's 26 steps

    epochs = TrainState(FineTuneSettings(epochs=4), rounds=Rounds(4, 3, None))
    FillTime(until=1e9).on_epoch_end(epochs, {"epoch": 1, "seconds": 1.0, "images_per_s": 1.0})
    assert epochs.epochs == 4


def test_fill_time_cuts_the_last_round_to_the_part_that_fits():
    """69 s of room after round 1 at 10 s (70 s less the tenth of a round kept): 6 whole rounds,
    then 7 s for 8 of a round's 10 steps (8 s of training for 10) and its 2-s evaluation."""
    state = TrainState(FineTuneSettings(steps=40, eval_every=10), rounds=Rounds(4, 10, 320), epoch=1)
    state.history.append({"epoch": 1, "seconds": 10.0, "images_per_s": 40.0})
    fill = FillTime(until=80.0, clock=lambda: 10.0)
    fill.on_fit_start(state)
    fill.on_epoch_end(state, state.history[-1])
    assert state.rounds == Rounds(8, 10, 320, last_steps=8) and state.rounds.total_steps == 78
    assert [state.rounds.steps_in(k) for k in (7, 8)] == [10, 8] and state.rounds.steps_by(8) == 78


def test_history_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import headstart.core.io as core_io

    path = tmp_path / "history.csv"
    row = dict.fromkeys(HISTORY_COLUMNS, 1.0)
    history = History(path)
    state = TrainState(settings=FineTuneSettings(), history=[row])
    history.on_epoch_end(state, row)
    before = path.read_text()
    assert list(csv.DictReader(io.StringIO(before))) == [{c: "1.0" for c in HISTORY_COLUMNS}]

    class DiesMidway:
        def __init__(self, f):
            self.f = f

        def writerow(self, row):
            self.f.write("epoch,lo")

        def writerows(self, rows):
            raise KeyboardInterrupt

    monkeypatch.setattr(core_io.csv, "writer", DiesMidway)
    state.history.append({**row, "epoch": 2.0})
    with pytest.raises(KeyboardInterrupt):
        history.on_epoch_end(state, row)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]  # no temporary file left


def test_without_a_run_folder_nothing_is_written(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = FineTuner(settings(), None, verbose=False).fit(*tiny["args"])
    assert result.info["epochs_run"] == 1 and result.info["stopped_because"] == "completed"
    assert list(tmp_path.iterdir()) == []


def test_the_loop_runs_from_its_parts(tiny):
    """The loop's functions need no FineTuner and no run folder: a network, loaders and a state."""
    from headstart.data.loaders import eval_loader, train_loader
    from headstart.training.network import contiguous_state, freeze, make_network, param_groups

    model, config, head, train, val, _ = tiny["args"]
    s = settings(epochs=2, patience=1)
    model = copy.deepcopy(model)  # the fixture's backbone stays pretrained
    freeze(model, "head")
    network = make_network(model, config, head)
    loader, sampler = train_loader(train, "none", config, 8, 0, seed=0)
    data = EpochData(loader, sampler, eval_loader(val, config, 8, 0))
    optimizer = torch.optim.SGD(param_groups(network, [], s), lr=s.lr)
    state = TrainState(s, network, optimizer, torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0))
    state.best["state"] = contiguous_state(network)
    loss_fn = torch.nn.CrossEntropyLoss()
    before = evaluate(network, data.val, loss_fn)
    stopped = run_epochs(state, data, Objective(loss_fn), loss_fn, CallbackList([EarlyStopping(s.patience)]))
    assert stopped in ("completed", "early_stopping") and 1 <= len(state.history) <= 2
    assert before[2].shape == (len(val), 3) and np.allclose(before[2].sum(1), 1, atol=1e-5)
