"""Fine-tuning on tiny generated images, one or two short epochs: what trains, BatchNorm, resume, bundle."""

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_class_folders, tiny_probe

import headstart
from headstart.core.errors import HeadstartError
from headstart.training.callbacks import Callback, FillTime
from headstart.training.checkpoints import load_checkpoint, save_checkpoint
from headstart.training.loop import FineTuner
from headstart.training.network import block_groups, trainable_groups
from headstart.training.settings import FineTuneSettings

CLI = [sys.executable, "-m", "headstart"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """24 train / 6 val generated images, the default backbone and a probe head fitted on random features."""
    root = make_class_folders(tmp_path_factory.mktemp("ft") / "colors", per_class=10)
    backbone, head, items, classes = tiny_probe(root)
    train = [it for i, it in enumerate(items) if i % 5]
    val = [it for i, it in enumerate(items) if not i % 5]
    small = {**backbone.data_config, "input_size": (3, 96, 96)}  # any size works; small is fast
    return {
        "root": root,
        "backbone": backbone,
        "head": head,
        "train": train,
        "val": val,
        "n": len(classes),
        "config": small,
    }


def settings(**kw):
    base = dict(unfreeze="last:1", epochs=1, batch_size=8, workers=0, precision="fp32", seed=0)
    return FineTuneSettings(**{**base, **kw})


def test_unfreeze_specs_follow_timm_block_groups(tiny):
    groups = block_groups(tiny["backbone"].model)
    assert (
        len(groups) == 8
        and any("conv_stem" in n for n in groups[0])
        and any("conv_head" in n for n in groups[-1])
    )
    assert [trainable_groups(s, 8) for s in ("head", "last:1", "last:3", "half", "all")] == [0, 1, 3, 4, 8]
    for bad in ("last:0", "last:9", "middle", "last:x"):
        with pytest.raises(HeadstartError):
            trainable_groups(bad, 8)


@pytest.mark.slow
def test_frozen_parts_and_their_batchnorm_do_not_move(tiny):
    original = {k: v.clone() for k, v in tiny["backbone"].model.state_dict().items()}
    after_epoch = {}

    def keep_state(_epoch, _row):  # the weights after the epoch, whether or not it beat the probe
        after_epoch.update({k: v.clone() for k, v in tuner.network_.net.state_dict().items()})

    tuner = FineTuner(
        settings(unfreeze="last:1", lr=5e-3, freeze_bn_stats=False),
        verbose=False,
        on_epoch_end=keep_state,
    )
    result = tuner.fit(
        tiny["backbone"].model, tiny["config"], tiny["head"], tiny["train"], tiny["val"], tiny["n"]
    )
    tuned = after_epoch
    last = block_groups(tiny["backbone"].model)[-1]  # parameter names of blocks.6 + conv_head/bn2
    trainable_modules = {name.rsplit(".", 1)[0] for name in last}
    changed = {k for k in tuned if not torch.equal(tuned[k], original[k])}
    frozen_keys = {k for k in tuned if k.rsplit(".", 1)[0] not in trainable_modules}
    assert not changed & frozen_keys, sorted(changed & frozen_keys)[:5]
    assert {"bn1.running_mean", "blocks.5.0.bn1.running_var"} <= frozen_keys  # frozen BatchNorm stats
    assert set(last) <= changed  # every trainable parameter moved
    # with freeze_bn_stats=False the trainable part's BatchNorm statistics update
    assert {"bn2.running_mean", "blocks.6.0.bn1.running_var"} <= changed
    # the pretrained backbone itself (and so the feature cache's key) is untouched
    assert all(torch.equal(v, original[k]) for k, v in tiny["backbone"].model.state_dict().items())
    assert result.info["epochs_run"] == 1 and result.info["best_epoch"] == (
        0 if result.info["probe_kept"] else 1
    )
    assert result.info["start_val"]["val_loss"] > 0
    assert result.head_arrays["coef"].shape == (3, tiny["backbone"].num_features)


@pytest.mark.slow
def test_head_only_keeps_the_whole_backbone(tiny):
    original = tiny["backbone"].model.state_dict()
    seen = {}

    def keep_state(_epoch, _row):
        seen["net"] = {k: v.clone() for k, v in tuner.network_.net.state_dict().items()}
        seen["fc"] = tuner.network_.fc.weight.detach().clone().numpy()

    tuner = FineTuner(settings(unfreeze="head", lr=1e-2), verbose=False, on_epoch_end=keep_state)
    result = tuner.fit(
        tiny["backbone"].model, tiny["config"], tiny["head"], tiny["train"], tiny["val"], tiny["n"]
    )
    for state in (seen["net"], result.backbone_model.state_dict()):
        assert all(torch.equal(v, original[k]) for k, v in state.items())
    assert not np.allclose(seen["fc"], tiny["head"].coef)


class Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.slow
def test_resume_continues_from_the_saved_epoch(tiny, tmp_path):
    args = (tiny["backbone"].model, tiny["config"], tiny["head"], tiny["train"], tiny["val"], tiny["n"])
    full = FineTuner(settings(epochs=2), tmp_path / "full", verbose=False).fit(*args, fingerprint="f")

    def stop_after_first(epoch, _row):
        if epoch == 1:
            raise Interrupt

    run = tmp_path / "cut"
    with pytest.raises(Interrupt):
        FineTuner(settings(epochs=2), run, verbose=False, on_epoch_end=stop_after_first).fit(
            *args, fingerprint="f"
        )
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    with pytest.raises(HeadstartError, match="different data or settings"):
        FineTuner(settings(epochs=2), run, verbose=False).fit(*args, resume=True, fingerprint="other")
    resumed = FineTuner(settings(epochs=2), run, verbose=False).fit(*args, resume=True, fingerprint="f")
    assert resumed.info["resumed_from_epoch"] == 1 and resumed.info["epochs_run"] == 2
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    for a, b in zip(full.history, resumed.history):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3, abs=1e-4)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-4)
    sa, sb = full.backbone_model.state_dict(), resumed.backbone_model.state_dict()
    # by default no BatchNorm statistics move at all, trainable parts included
    original = tiny["backbone"].model.state_dict()
    assert all(torch.equal(sa[k], original[k]) for k in sa if "running" in k)
    assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-4) for k in sa)
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert list(rows[0]) == [
        "epoch",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "images_per_s",
        "seconds",
        "step",
    ]
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert [r["step"] for r in rows] == ["3", "6"]  # 24 images in batches of 8: 3 steps an epoch
    with pytest.raises(HeadstartError, match="no checkpoint"):
        FineTuner(settings(), tmp_path / "empty", verbose=False).fit(*args, resume=True)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})

    def dies_midway(obj, f, *a, **k):
        Path(f).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    assert load_checkpoint(path)["epoch"] == 1


@pytest.mark.slow
@pytest.mark.cli
def test_cli_finetune_bundle_predicts_like_the_trained_network(tmp_path):
    data = make_class_folders(tmp_path / "photos", per_class=10)
    run_dir = tmp_path / "run"
    clf = headstart.FineTuneClassifier(
        unfreeze="last:1", epochs=1, train_batch_size=8, loader_workers=1, precision="fp32", verbose=False
    ).fit(data, out_dir=run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["strategy"] == "finetune"
    ft = metrics["finetune"]
    assert ft["unfreeze"] == "last:1" and ft["epochs_run"] == 1 and ft["stopped_because"] == "completed"
    for f in (
        "model.safetensors",
        "history.csv",
        "split.csv",
        "skipped.csv",
        "test_predictions.csv",
        "confusion_matrix.png",
        "checkpoints/last.pt",
        "finetune.json",
    ):
        assert (run_dir / f).is_file(), f
    assert (run_dir / "checkpoints" / "best.pt").is_file()  # the best epoch, kept whatever the probe did
    assert ft["probe_kept"] == (ft["best_epoch"] == 0)
    # the tuned backbone has its own identity: its features never come from the pretrained cache
    # (unless no epoch beat the probe, when the model is the probe and its backbone unchanged)
    tuned = ft["best_epoch"] > 0
    assert (clf.backbone_.key != clf.probe_backbone_.key) == tuned
    assert (metrics["backbone"]["weights_id"] != clf.probe_backbone_.weights_id) == tuned
    # the bundle (loaded fresh, run by torch) gives the trained network's test probabilities
    rows = list(csv.DictReader(open(run_dir / "test_predictions.csv")))
    saved = [float(r["probability"]) for r in rows]
    loaded = headstart.load(run_dir, verbose=False)  # the engine fit scored with: the same numbers
    assert loaded.meta_["strategy"] == "finetune"
    proba = loaded.predict_proba([r["path"] for r in rows])
    assert [loaded.classes_[i] for i in proba.argmax(1)] == [r["predicted"] for r in rows]
    assert np.allclose(proba.max(1), saved, atol=2e-3)
    # run by torch in fp32: the same network, within what the default engine's bf16 moves
    in_torch = headstart.load(run_dir, engine="torch", verbose=False).predict_proba([r["path"] for r in rows])
    assert np.allclose(in_torch.max(1), saved, atol=0.05)
    # user errors: one line, exit 2, before any work
    for args, message in (
        (["--resume", tmp_path / "nothing"], "no fine-tuning run to resume"),
        ([data, "--strategy", "finetune", "--unfreeze", "middle", "--out", tmp_path / "x"], "--unfreeze"),
        ([data, "--strategy", "finetune", "--augment", "wild", "--out", tmp_path / "x"], "--augment"),
    ):
        proc = subprocess.run([*CLI, "train", *map(str, args)], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_time_budget_stops_cleanly_with_the_best_model(tiny, tmp_path):
    import time

    original = tiny["backbone"].model.state_dict()
    result = FineTuner(settings(epochs=3, class_weight="balanced"), tmp_path / "run", verbose=False).fit(
        tiny["backbone"].model,
        tiny["config"],
        tiny["head"],
        tiny["train"],
        tiny["val"],
        tiny["n"],
        deadline=time.time(),
    )
    assert result.info["stopped_because"] == "time_budget" and result.info["epochs_run"] == 0
    assert result.info["best_epoch"] == 0  # the probe, untouched
    assert all(torch.equal(v, original[k]) for k, v in result.backbone_model.state_dict().items())
    assert np.allclose(result.head_arrays["coef"], tiny["head"].coef)


def test_a_kept_probe_is_the_feature_extraction_model(tmp_path):
    """When no epoch beats the probe (here: the time budget is spent before the first), the model
    is exactly what --strategy feature-extraction gives: the probe refitted on train + val."""
    data = make_class_folders(tmp_path / "photos", per_class=10)
    tuned = headstart.FineTuneClassifier(
        epochs=1, time_budget=1e-6, train_batch_size=8, loader_workers=1, precision="fp32", verbose=False
    ).fit(data, out_dir=tmp_path / "ft")
    plain = headstart.ImageClassifier(strategy="feature-extraction", verbose=False).fit(
        data, out_dir=tmp_path / "fe"
    )
    ft = tuned.metrics_["finetune"]
    assert ft["probe_kept"] and ft["probe_refit_on_train_val"] and ft["epochs_run"] == 0
    assert tuned.metrics_["head"]["fit"]["refit_on_train_val"] is True
    assert tuned.backbone_.key == plain.backbone_.key
    np.testing.assert_allclose(tuned.head_.coef, plain.head_.coef, atol=1e-4)
    np.testing.assert_allclose(tuned.test_["proba"], plain.test_["proba"], atol=1e-4)
    loaded = headstart.load(tmp_path / "ft", verbose=False)
    paths = tuned.test_["paths"]
    np.testing.assert_allclose(loaded.predict_proba(paths), plain.predict_proba(paths), atol=1e-4)


def test_training_threads_leave_out_cores_other_programs_keep_busy(monkeypatch):
    """The sample of the CPU counters decides, not the load average (which still counts this
    run's own feature extraction)."""
    import headstart.core.system as system

    monkeypatch.setattr(system, "usable_cpus", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(system.os, "getloadavg", lambda: (4.0, 4.0, 4.0))  # stale: must be ignored
    monkeypatch.setattr(system.time, "sleep", lambda s: None)
    monkeypatch.setattr(system.time, "process_time", lambda: 0.0)
    for busy_seconds, expected in ((0, 4), (1.0, 3), (2.6, 1), (4.0, 1)):
        # 4 cores x 1 s pass in the window; ``busy_seconds`` of them by other programs
        samples = iter([(10.0, 50.0), (10.0 + busy_seconds, 54.0)])
        monkeypatch.setattr(system, "cpu_times", lambda s=samples: next(s))
        assert system.compute_threads() == expected, busy_seconds
    monkeypatch.setattr(system, "cpu_times", lambda: None)  # no counters: the load average
    assert system.compute_threads() == 1
    assert system.compute_threads(3) == 3  # an explicit count always wins


def test_cpu_counters_are_read_for_the_usable_cpus_only():
    from headstart.core.system import cpu_times, usable_core_count

    busy, total = cpu_times()
    assert 0 < busy < total and usable_core_count() >= 1


@pytest.mark.slow
def test_tensorboard_gets_every_epoch_where_installed(tiny, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    result = FineTuner(settings(epochs=2, patience=5), run, verbose=False).fit(
        tiny["backbone"].model, tiny["config"], tiny["head"], tiny["train"], tiny["val"], tiny["n"]
    )
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "val_loss", "val_accuracy", "lr"} <= tags, tags
    val_loss = [e.value for e in events.Scalars("val_loss")]
    assert [e.step for e in events.Scalars("val_loss")] == [1, 2]
    assert val_loss == pytest.approx([row["val_loss"] for row in result.history], rel=1e-5)


def test_a_run_re_planned_to_its_deadline_trains_more_rounds_and_resumes_them(tiny, tmp_path):
    """FillTime with time to spare stretches 4 rounds of 2 steps to 6 (its ceiling, 1.5x): the
    cosine is reshaped to end at step 12, not 8; a cut run resumes to the re-planned end."""
    args = (tiny["backbone"].model, tiny["config"], tiny["head"], tiny["train"], tiny["val"], tiny["n"])
    steps = settings(steps=8, eval_every=2, patience=9)
    fill = FillTime(time.time() + 3600, max_factor=1.5)
    full = FineTuner(steps, tmp_path / "full", verbose=False, callbacks=[fill]).fit(*args, fingerprint="s")
    assert [r["step"] for r in full.history] == [2, 4, 6, 8, 10, 12]
    assert fill.replans == [(1, 6, 12)] and full.info["steps_planned"] == 12
    assert full.history[3]["lr"] > 0.1 * steps.lr and full.history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)

    def stop_after_fourth(epoch, _row):
        if epoch == 4:
            raise Interrupt

    run = tmp_path / "cut"
    cut = FineTuner(
        steps,
        run,
        verbose=False,
        on_epoch_end=stop_after_fourth,
        callbacks=[FillTime(time.time() + 3600, max_factor=1.5)],
    )
    with pytest.raises(Interrupt):
        cut.fit(*args, fingerprint="s")
    resumed = FineTuner(steps, run, verbose=False).fit(*args, resume=True, fingerprint="s")
    assert [r["step"] for r in resumed.history] == [2, 4, 6, 8, 10, 12]
    assert resumed.history[-1]["lr"] == pytest.approx(full.history[-1]["lr"], abs=1e-9)
    assert resumed.history[-1]["loss"] == pytest.approx(full.history[-1]["loss"], rel=1e-3, abs=1e-4)


def test_a_last_round_cut_short_trains_its_steps_only(tiny, tmp_path):
    """Re-planned after round 1 to 3 rounds of 2 steps, the last cut to 1: 5 steps in all, the
    cosine ending at step 5, 5 batches' images seen."""

    class CutLast(Callback):
        def on_epoch_end(self, state, row):
            if state.epoch == 1:
                state.set_rounds(3, last_steps=1)

    args = (tiny["backbone"].model, tiny["config"], tiny["head"], tiny["train"], tiny["val"], tiny["n"])
    steps = settings(steps=8, eval_every=2, patience=9)
    result = FineTuner(steps, None, verbose=False, callbacks=[CutLast()]).fit(*args)
    assert [r["step"] for r in result.history] == [2, 4, 5]
    assert result.info["steps_run"] == 5 and result.info["images_seen"] == 5 * steps.batch_size
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-9) and result.history[1]["lr"] > 0


def test_a_run_budgeted_in_steps_evaluates_and_resumes_by_rounds(tiny, tmp_path):
    """7 steps with an evaluation every 2: 4 rounds (8 steps, rounded up to whole rounds), less
    than three epochs of 3 steps; cut after round 2 and resumed, it ends where the whole run does."""
    args = (tiny["backbone"].model, tiny["config"], tiny["head"], tiny["train"], tiny["val"], tiny["n"])
    steps = settings(steps=7, eval_every=2, patience=9)
    full = FineTuner(steps, tmp_path / "full", verbose=False).fit(*args, fingerprint="s")
    assert [r["step"] for r in full.history] == [2, 4, 6, 8]
    info = full.info
    assert info["budgeted_in"] == "steps" and info["steps_planned"] == 8 and info["steps_run"] == 8
    assert info["images_seen"] == 64 and info["rounds_run"] == 4

    def stop_after_second(epoch, _row):
        if epoch == 2:
            raise Interrupt

    run = tmp_path / "cut"
    with pytest.raises(Interrupt):
        FineTuner(steps, run, verbose=False, on_epoch_end=stop_after_second).fit(*args, fingerprint="s")
    resumed = FineTuner(steps, run, verbose=False).fit(*args, resume=True, fingerprint="s")
    assert resumed.info["resumed_from_epoch"] == 2
    for a, b in zip(full.history, resumed.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-4)
        assert a["lr"] == pytest.approx(b["lr"])
