"""Fine-tuning: the second strategy of transfer learning, on a CPU, resumable.

:class:`FineTuner` drives the run: it builds the network (see ``network.py``), then calls
:func:`train_one_epoch` and :func:`evaluate` once per epoch, and leaves everything around them
(early stopping, checkpoints, history.csv, TensorBoard, the time budget, the user's function) to
callbacks (see ``callbacks.py``).

Each epoch's shuffling, augmentation and dropout are seeded from (seed, epoch), and a checkpoint
(model, optimiser, schedule, history) is written atomically after every epoch, so a resumed run
continues a killed one exactly where its last complete epoch ended.

Under ``torchrun`` each process trains its share of every global batch and DDP averages the
gradients (see ``distributed.py``); one process is the same loop with a world size of 1.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

import numpy as np

from headstart.core.choices import class_weight_value
from headstart.core.progress import ConsoleProgress, NullProgress, ProgressSink, _fmt_eta
from headstart.core.system import compute_threads
from headstart.data.images import DataConfig
from headstart.data.loaders import eval_loader, loader_workers, train_loader
from headstart.training.callbacks import (
    Callback,
    CallbackList,
    Checkpointing,
    EarlyStopping,
    EpochEndFunction,
    History,
    TensorBoard,
    TimeBudget,
)
from headstart.training.checkpoints import (
    CHECKPOINT_DIR,
    apply_checkpoint,
    read_checkpoints,
    remove_leftovers,
    settings_fingerprint,
)
from headstart.training.distributed import (
    Distributed,
    SyncStop,
    broadcast_checkpoint,
    current,
    shard_train_loader,
)
from headstart.training.network import (
    FreezeInfo,
    contiguous_state,
    freeze,
    head_arrays,
    make_network,
    param_groups,
    set_train_mode,
)
from headstart.training.prefix import build_prefix, network_stages
from headstart.training.settings import FineTuneSettings, Rounds, plan_rounds, resolve_precision
from headstart.training.state import MIN_DELTA, Best, TrainState, warmup_cosine

if TYPE_CHECKING:
    from torch import Tensor
    from torch.nn import Module
    from torch.utils.data import DataLoader

    from headstart.data.loaders import EpochSampler
    from headstart.models.backbones import TimmModel
    from headstart.models.heads import Head
    from headstart.training.distributed import DistributedEpochSampler
    from headstart.training.network import Network

    Loader = DataLoader[tuple[Tensor, Tensor]]
    EpochOrder = EpochSampler | DistributedEpochSampler
    LossFn = Callable[[Tensor, Tensor], Tensor]  # a torch loss, or training.multilabel's MultiHotLoss

# settings_fingerprint is part of this module's interface: the estimator imports it from here.
__all__ = [
    "EpochData",
    "FineTuneResult",
    "FineTuneSettings",
    "FineTuner",
    "Objective",
    "evaluate",
    "run_epochs",
    "settings_fingerprint",
    "train_one_epoch",
]

HISTORY_FILE = "history.csv"
logger = logging.getLogger(__name__)
TENSORBOARD_DIR = "tensorboard"


class PrefixInfo(TypedDict):
    """How the frozen leading stages ran: ``mode`` and how many of the ``stages`` were frozen."""

    mode: str
    frozen_stages: int
    stages: int | None


@dataclass
class FineTuneResult:
    """The fine-tuned backbone, the head's arrays (see ``network.head_arrays``), one history row
    per complete epoch, and what the run did (``info``: epochs_run, best_epoch, probe_kept,
    stopped_because...)."""

    backbone_model: TimmModel
    head_arrays: dict[str, np.ndarray]
    history: list[dict[str, float]]
    info: dict[str, Any] = field(default_factory=dict)
    # the best round's validation probabilities, as its evaluation computed them (None: the probe
    # was kept, no round ran, or DDP, where each rank evaluates its share)
    val_proba: np.ndarray | None = None


@dataclass
class Objective:
    """The training loss: cross-entropy (class-weighted, label-smoothed) plus the probe's L2
    penalty ``l2 * ||W||^2`` on the head's weights."""

    loss_fn: LossFn
    l2: float = 0.0

    def __call__(self, network: Network, logits: Tensor, labels: Tensor) -> Tensor:
        loss = self.loss_fn(logits, labels)
        if self.l2:
            loss = loss + self.l2 * network.fc.weight.square().sum()
        return loss


def correct_count(loss_fn: LossFn, logits: Tensor, labels: Tensor) -> float:
    """Images ``logits`` get right: the top-1 class, unless the loss defines its own ``correct``
    (a multi-label loss: see ``training.multilabel``)."""
    own = getattr(loss_fn, "correct", None)
    return float(own(logits, labels)) if own is not None else int((logits.argmax(1) == labels).sum())


def output_proba(loss_fn: LossFn, logits: Tensor) -> np.ndarray:
    """Probabilities of ``logits``: softmax, unless the loss defines its own ``proba`` (sigmoid)."""
    import torch

    own = getattr(loss_fn, "proba", None)
    return (own(logits) if own is not None else torch.softmax(logits, 1)).numpy()


@dataclass
class EpochData:
    """The loaders of a fit: training (and its sampler, set to each epoch) and validation, and
    the job they are this process's share of (``dist``)."""

    train: Loader
    sampler: EpochOrder
    val: Loader
    dist: Distributed = field(default_factory=Distributed)


def evaluate_shared(
    network: Network, data: EpochData, loss_fn: LossFn, precision: str
) -> tuple[float, float, np.ndarray | None]:
    """Validation loss and accuracy over every rank's share of the validation images, and the
    probabilities of every image (None under DDP, where each rank holds its share only)."""
    loss, accuracy, proba = evaluate(network, data.val, loss_fn, precision)
    loss, accuracy = data.dist.average([loss, accuracy], len(proba))
    return loss, accuracy, None if data.dist.active else proba


def autocast(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager[object]:
    """bf16 autocast (on the CPU, or ``device_type``) for ``bf16``; nothing for ``fp32``."""
    import torch

    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate(
    network: Network, loader: Loader, loss_fn: LossFn, precision: str = "fp32", tta: str = "none"
) -> tuple[float, float, np.ndarray]:
    """Mean loss, accuracy and the probabilities (softmax, or the loss's own ``proba``) of every
    image (in order) of ``loader``, in eval mode;
    images labelled -100 (unreadable) count in neither mean. NaN means when none is labelled.

    ``tta="flip"`` averages the logits of each image and its mirror: the network ends in a linear
    head, so this equals the head on the averaged features, as the feature path's TTA computes it.
    """
    import torch

    network.eval()
    losses, correct, n, outputs = 0.0, 0.0, 0, []
    device = next(network.parameters()).device  # the CPU, or a rank's GPU
    with torch.inference_mode(), autocast(precision, device.type):
        for pixels, labels in loader:
            pixels, labels = pixels.to(device), labels.to(device)
            logits = network(pixels).float()
            if tta == "flip":
                logits = (logits + network(torch.flip(pixels, dims=[-1])).float()) / 2
            outputs.append(output_proba(loss_fn, logits.cpu()))
            ok = labels >= 0
            if ok.any():
                losses += float(loss_fn(logits[ok], labels[ok])) * int(ok.sum())
                correct += correct_count(loss_fn, logits[ok], labels[ok])
                n += int(ok.sum())
    proba = np.concatenate(outputs) if outputs else np.zeros((0, 0))
    return (losses / n if n else float("nan")), (correct / n if n else float("nan")), proba


def train_one_epoch(
    state: TrainState,
    loader: Loader,
    objective: Objective,
    callbacks: Callback | None = None,
    progress: ProgressSink | None = None,
) -> tuple[float, float] | None:
    """One pass over ``loader``: an optimiser step per batch (images labelled -100 are left out)
    and a schedule step per batch; ``callbacks.on_batch_end`` after each.

    Returns:
        The epoch's mean training loss and accuracy, or None when a callback stopped the run
        during the epoch (which is then incomplete).
    """

    callbacks = callbacks or Callback()
    progress = progress or NullProgress()
    network = state.network
    set_train_mode(network, state.settings.freeze_bn_stats)
    loss_sum, correct, seen = 0.0, 0.0, 0
    device = next(network.parameters()).device  # the CPU, or a rank's GPU
    rounds = state.rounds
    cut = rounds.steps_in(state.epoch) if rounds is not None and rounds.last_steps else None
    for batch, (pixels, labels) in enumerate(loader, 1):
        pixels, labels = pixels.to(device), labels.to(device)
        step = train_step(state, objective, pixels, labels)
        if step is not None:
            loss_sum += step[0] * step[2]
            correct += step[1]
            seen += step[2]
        state.scheduler.step()
        progress.advance(len(labels))
        callbacks.on_batch_end(state)
        if state.stop:
            return None
        if cut is not None and batch >= cut:  # a last round cut short by a re-plan
            break
    return loss_sum / max(seen, 1), correct / max(seen, 1)


def train_step(
    state: TrainState, objective: Objective, pixels: Any, labels: Any
) -> tuple[float, float, int] | None:
    """One optimiser step on a batch already on the network's device (images labelled -100
    left out): the batch's mean loss, its images right and its images counted; None when no
    image of the batch has a label. The training loop's step and the one ``strategy="auto"``
    times (``training.throughput``)."""
    import torch

    network, optimizer, grad_clip = state.network, state.optimizer, state.settings.grad_clip
    ok = labels >= 0
    with autocast(state.precision, pixels.device.type):
        logits = (state.forward or network)(pixels).float()
    if not ok.any():
        return None
    loss = objective(network, logits[ok], labels[ok])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    k = int(ok.sum())
    return float(loss.detach()), correct_count(objective.loss_fn, logits.detach()[ok], labels[ok]), k


def run_epoch(
    state: TrainState,
    data: EpochData,
    objective: Objective,
    val_loss_fn: LossFn,
    callbacks: Callback,
    verbose: bool,
) -> dict[str, float] | None:
    """Train ``state.epoch`` (seeded from the seed and the epoch), then evaluate it: its history
    row, or None when a callback stopped the run during it."""
    import torch

    t0 = time.perf_counter()
    data.sampler.epoch = state.epoch
    torch.manual_seed(state.settings.seed * 1_000_003 + state.epoch)  # dropout / drop-path of this epoch
    progress = ConsoleProgress() if verbose else NullProgress()
    rounds = state.rounds
    share = len(data.sampler)  # this process's images of the round
    if rounds and rounds.images:  # in steps: the last round may be cut short
        n_images = rounds.steps_in(state.epoch) * state.settings.batch_size
        share = min(share, rounds.steps_in(state.epoch) * int(data.train.batch_size or 1))
    else:
        n_images = len(cast("Sized", data.train.dataset))
    word = "round" if state.in_steps else "epoch"
    progress.start(f"{word} {state.epoch}/{state.epochs}", share)
    trained = train_one_epoch(state, data.train, objective, callbacks, progress)
    progress.finish()
    if trained is None:
        return None
    train_s = time.perf_counter() - t0
    loss, accuracy = data.dist.average(trained, 1.0)  # every rank trains on as many images
    val_loss, val_acc, state.val_proba = evaluate_shared(state.network, data, val_loss_fn, state.precision)
    seconds = time.perf_counter() - t0
    return {
        "epoch": state.epoch,
        "loss": loss,
        "accuracy": accuracy,
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "lr": state.optimizer.param_groups[0]["lr"],
        "images_per_s": n_images / train_s if train_s > 0 else 0.0,
        "seconds": seconds,
        "step": rounds.steps_by(state.epoch) if rounds else float("nan"),
    }


def record_epoch(state: TrainState, row: dict[str, float]) -> None:
    """Add a complete epoch to the state: its row, its time, and whether it is the new best
    (val_loss lower by more than ``MIN_DELTA``; then its weights are kept)."""
    state.history.append(row)
    state.trained_s += row["seconds"]
    state.improved = row["val_loss"] < state.best["val_loss"] - MIN_DELTA
    if state.improved:
        state.best = {
            "val_loss": row["val_loss"],
            "val_accuracy": row["val_accuracy"],
            "epoch": state.epoch,
            "state": contiguous_state(state.network),
        }
        state.best_val_proba = state.val_proba


def epoch_line(state: TrainState, row: dict[str, float]) -> str:
    """The log line of a complete epoch, with the time left for the others."""
    eta = (state.epochs - state.epoch) * float(np.mean([r["seconds"] for r in state.history]))
    where = f"epoch {state.epoch}/{state.epochs}"
    if state.in_steps and state.rounds is not None:
        where = f"round {state.epoch}/{state.epochs} (step {int(row['step'])}/{state.rounds.total_steps})"
    return (
        f"{where}: loss {row['loss']:.4f} accuracy {row['accuracy']:.4f} "
        f"val_loss {row['val_loss']:.4f} val_accuracy {row['val_accuracy']:.4f} lr {row['lr']:.2e} "
        f"{row['images_per_s']:.1f} img/s {row['seconds']:.0f}s{' *best' if state.improved else ''}"
        f"{f', ETA {_fmt_eta(eta)}' if state.epoch < state.epochs else ''}"
    )


def run_epochs(
    state: TrainState,
    data: EpochData,
    objective: Objective,
    val_loss_fn: LossFn,
    callbacks: Callback,
    verbose: bool = False,
) -> str:
    """Epochs ``state.start_epoch`` to ``state.epochs`` until a callback stops the run; returns
    why it ended (``completed`` or the stop's reason)."""
    callbacks.on_fit_start(state)
    try:
        epoch = state.start_epoch
        while epoch <= state.epochs:  # a callback may re-plan the rounds (``TrainState.set_rounds``)
            state.epoch = epoch
            epoch += 1
            callbacks.on_epoch_start(state)
            if state.stop:
                break
            row = run_epoch(state, data, objective, val_loss_fn, callbacks, verbose)
            if row is None:
                break
            record_epoch(state, row)
            logger.info(epoch_line(state, row))
            callbacks.on_epoch_end(state, row)
            if state.stop:
                break
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt):
            done = state.history[-1]["epoch"] if state.history else 0
            where = f" in {state.run_dir}" if state.run_dir and done else ""
            logger.info(f"interrupted during epoch {done + 1}: {done} epoch(s) saved{where}")
        callbacks.on_exception(state, error)
        raise
    if state.stop_message:
        logger.info(state.stop_message)
    callbacks.on_fit_end(state)
    return state.stop or "completed"


def _length(state: TrainState, n_train: int) -> str:
    """How long the run is, as its first log line says it."""
    rounds = state.rounds
    if not state.in_steps or rounds is None:
        return f"{state.settings.epochs} epoch(s)"
    images = rounds.total_steps * state.settings.batch_size
    return (
        f"{rounds.total_steps} steps ({rounds.count} rounds of {rounds.steps_each}, {images:,} images seen, "
        f"{images / max(n_train, 1):.2f} epoch(s))"
    )


def _steps_info(state: TrainState, rounds_run: int) -> dict[str, Any]:
    """A run's length in steps: planned, run and images seen (rounds are epochs unless in steps)."""
    rounds = state.rounds
    if rounds is None:
        return {}
    return {
        "budgeted_in": "steps" if state.in_steps else "epochs",
        "steps_planned": rounds.total_steps,
        "steps_run": rounds.steps_by(rounds_run),
        "rounds_run": rounds_run,
        # epochs: epochs_run x images
        "images_seen": rounds.steps_by(rounds_run) * state.settings.batch_size if rounds.images else None,
    }


def class_weights(
    train: Sequence[tuple[str, int]], n_classes: int, class_weight: str | None
) -> Tensor | None:
    """Loss weights per class: None, or for ``balanced`` n / (n_classes * count) (0 if absent)."""
    import torch

    if class_weight_value(class_weight) is None:
        return None
    counts = np.bincount([y for _, y in train], minlength=n_classes).astype(np.float64)
    weight = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weight, dtype=torch.float32)


class FineTuner:
    """Trains backbone + head end to end on augmented images, with early stopping and resume.

    Args:
        settings: what decides the run.
        run_dir: where checkpoints, history.csv and TensorBoard events go; None writes nothing.
        verbose: show a progress line per epoch.
        on_epoch_end: ``fn(epoch, row)`` after each complete epoch (after its checkpoint).
        callbacks: more :class:`Callback` objects, called after the built-in ones.
    """

    def __init__(
        self,
        settings: FineTuneSettings,
        run_dir: Path | None = None,
        verbose: bool = True,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
        callbacks: Iterable[Callback] = (),
    ) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.verbose = verbose
        self.on_epoch_end = on_epoch_end
        self.callbacks = list(callbacks)

    def fit(
        self,
        backbone_model: TimmModel,
        data_config: DataConfig,
        head: Head,
        train: Sequence[tuple[str, int]],
        val: Sequence[tuple[str, int]],
        n_classes: int,
        resume: bool = False,
        deadline: float | None = None,
        fingerprint: str = "",
        start_val: dict[str, float] | None = None,
    ) -> FineTuneResult:
        """Fine-tune a copy of ``backbone_model`` (the original, and so the feature cache, stay intact).

        Args:
            resume: continue the run in ``run_dir`` from its last checkpoint.
            deadline: a ``time.time()`` at which to stop (counting a resumed run's earlier epochs).
            fingerprint: what a checkpoint must match to be resumed (see ``settings_fingerprint``).
            start_val: the probe's ``val_loss`` and ``val_accuracy`` on ``val`` when the caller
                knows them (``strategy="auto"`` does): the evaluation before the first round is
                then not run.
        """
        import torch

        s = self.settings
        torch.manual_seed(s.seed)
        self.dist = dist = current()
        self.precision = resolve_precision(s.precision, dist.device)
        self.threads = compute_threads(s.threads) if s.threads else dist.share(compute_threads())
        torch.set_num_threads(self.threads)
        model = copy.deepcopy(backbone_model)
        freeze_info = freeze(model, s.unfreeze)
        network = make_network(model, data_config, head).to(dist.device, memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack this overload
        self.frozen_prefix = self._use_prefix(network, model, data_config, dist)
        self.network_ = network
        self.workers = (
            loader_workers(s.workers)
            if s.workers is not None
            else dist.share(loader_workers(None, accelerator=dist.device != "cpu"))
        )
        rounds = plan_rounds(s, len(train))
        loader, whole = train_loader(
            train, s.augment, data_config, s.batch_size, self.workers, s.seed, rounds.images
        )
        loader, sampler = shard_train_loader(loader, whole, dist, s.batch_size)
        val_loader = eval_loader(dist.shard(val), data_config, s.batch_size, self.workers)
        data = EpochData(loader, sampler, val_loader, dist)
        objective, val_loss_fn = self._losses(head, train, n_classes)
        state = self._state(network, freeze_info, rounds, fingerprint)
        probe_state = state.best["state"]
        state.start_val = start_val
        self._start(state, freeze_info, resume, data, val_loss_fn)
        state.forward = dist.wrap(network)
        callbacks, verbose = self._callback_list(deadline), self.verbose and dist.is_main
        stopped = run_epochs(state, data, objective, val_loss_fn, callbacks, verbose)
        return self._result(state, probe_state, freeze_info, stopped, resume)

    def _use_prefix(
        self, network: Network, model: Module, data_config: DataConfig, dist: Distributed
    ) -> PrefixInfo:
        """Run the frozen leading stages as inference (see ``prefix.py``); what was done.

        Rules: frozen weights are the pretrained ones in every checkpoint of the run, so a prefix
        compiled before a resume's weights are restored computes what they would; the compiled
        prefix is a CPU engine, so a GPU rank runs the whole network in torch; a rank's batch is
        its share of the global batch.
        """
        s = self.settings
        _, height, width = data_config["input_size"]
        mode = s.frozen_prefix if str(dist.device).startswith("cpu") else "off"
        batch = dist.per_rank_batch(s.batch_size)
        runner, rest, how = build_prefix(model, mode, self.precision, batch, (height, width), self.threads)
        network.use_prefix(runner, rest)
        stages = network_stages(model)
        n_frozen = len(stages) - len(rest) if runner is not None and stages else 0
        return PrefixInfo(mode=how, frozen_stages=n_frozen, stages=len(stages) if stages else None)

    def predict_proba(
        self, items: Sequence[tuple[str, int]], data_config: DataConfig, tta: str = "none"
    ) -> np.ndarray:
        """Probabilities of the fine-tuned network (eval transform; ``tta="flip"``: the image's
        and its mirror's logits averaged), one row per item."""
        s, dist = self.settings, getattr(self, "dist", Distributed())
        loader = eval_loader(dist.shard(items), data_config, s.batch_size, loader_workers(s.workers))
        return dist.unshard(
            evaluate(self.network_, loader, self.output_loss(), self.precision, tta)[2], len(items)
        )

    def output_loss(self) -> LossFn:
        """The loss ``predict_proba`` evaluates with (it decides softmax or sigmoid outputs)."""
        import torch

        return torch.nn.CrossEntropyLoss()

    def _losses(
        self, head: Head, train: Sequence[tuple[str, int]], n_classes: int
    ) -> tuple[Objective, LossFn]:
        """The training objective and the validation loss.

        val_loss is the training objective on validation images (as Keras reports it), with the
        same label smoothing: a smoothed model must be judged by what it optimises, or it could
        never beat the (unsmoothed) probe it starts from.
        """
        import torch

        s = self.settings
        weight = class_weights(train, n_classes, s.class_weight)
        train_loss_fn = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=s.label_smoothing)
        val_loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=s.label_smoothing)
        c = getattr(head, "C", None)
        l2 = 0.5 / (float(c) * len(train)) if (s.keep_probe_l2 and c) else 0.0
        return Objective(train_loss_fn, l2), val_loss_fn

    def _state(
        self, network: Network, freeze_info: FreezeInfo, rounds: Rounds, fingerprint: str
    ) -> TrainState:
        """A fresh state: AdamW over the trainable groups, a warm-up + cosine schedule per step
        over all the run's steps, and the probe's weights as the best model so far."""
        import torch

        s = self.settings
        optimizer = torch.optim.AdamW(
            param_groups(network, freeze_info["groups"], s), weight_decay=s.weight_decay
        )
        total_steps = rounds.total_steps
        warmup = max(1, int(round(s.warmup * total_steps)))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total_steps))
        state = TrainState(
            warmup_steps=warmup,
            settings=s,
            network=network,
            optimizer=optimizer,
            scheduler=scheduler,
            precision=self.precision,
            run_dir=self.run_dir,
            fingerprint=fingerprint,
            rounds=rounds,
        )
        state.best["state"] = contiguous_state(network)
        return state

    def _start(
        self,
        state: TrainState,
        freeze_info: FreezeInfo,
        resume: bool,
        data: EpochData,
        val_loss_fn: LossFn,
    ) -> None:
        """Resume if asked, log what trains, and evaluate the probe before a first epoch."""
        s = self.settings
        ckpt_dir = self.run_dir / CHECKPOINT_DIR if self.run_dir is not None else None
        if resume:
            saved = broadcast_checkpoint(data.dist, lambda: read_checkpoints(state, ckpt_dir))
            apply_checkpoint(state, saved)
            logger.info(f"resuming from epoch {state.epoch} of {s.epochs} (checkpoint {saved['path']})")
        remove_leftovers(ckpt_dir)
        if data.dist.active:
            logger.info(
                f"distributed: world size {data.dist.world_size}, backend {data.dist.backend}, batch "
                f"{data.train.batch_size} per process ({s.batch_size} in all); only rank 0 writes files"
            )
        n_train = len(cast("Sized", data.train.dataset))
        logger.info(
            f"fine-tuning ({s.unfreeze}: {freeze_info['n_trainable_groups']} of {freeze_info['n_groups']} block "
            f"groups, {freeze_info['trainable_params']:,} of {freeze_info['total_params']:,} backbone parameters "
            f"trainable) for {_length(state, n_train)} on {n_train} images, {data.dist.device}, {self.precision}, "
            f"{self.workers} loader worker(s), {self.threads} torch thread(s), batch {s.batch_size}, "
            f"lr {s.lr:g}, augment {s.augment}, frozen prefix: {self._prefix_line()}"
        )
        if state.start_epoch == 1 and state.start_val is None:
            # The probe is the model to beat. Its val_loss is not comparable with the epochs' (it
            # was fitted without label smoothing), so epochs compete on val_loss among themselves
            # and the best one must then match the probe's val accuracy (see _result).
            val_loss, val_acc, _ = evaluate_shared(state.network, data, val_loss_fn, self.precision)
            state.start_val = {"val_loss": val_loss, "val_accuracy": val_acc}
            logger.info(f"start (linear probe): val_loss {val_loss:.4f} val_accuracy {val_acc:.4f}")

    def _prefix_line(self) -> str:
        p = self.frozen_prefix
        if p["frozen_stages"]:
            return f"{p['frozen_stages']} of {p['stages']} stages run as inference ({p['mode']})"
        return p["mode"]

    def _callback_list(self, deadline: float | None) -> CallbackList:
        """The built-in callbacks (files only with a run folder), the user's function, then ``callbacks``.

        EarlyStopping comes before Checkpointing, whose last.pt holds its count.
        """
        callbacks: list[Callback] = [EarlyStopping(self.settings.patience), TimeBudget(deadline)]
        if self.run_dir is not None:
            if TensorBoard.available():
                callbacks.append(TensorBoard(self.run_dir / TENSORBOARD_DIR))
            callbacks += [Checkpointing(self.run_dir / CHECKPOINT_DIR), History(self.run_dir / HISTORY_FILE)]
        if self.on_epoch_end is not None:
            callbacks.append(EpochEndFunction(self.on_epoch_end))
        return CallbackList(
            [*callbacks, *self.callbacks, *([SyncStop(self.dist)] if self.dist.active else [])]
        )

    def _result(
        self,
        state: TrainState,
        probe_state: dict[str, Tensor] | None,
        freeze_info: FreezeInfo,
        stopped: str,
        resume: bool,
    ) -> FineTuneResult:
        """The best model (or the probe, when the best epoch is below its val accuracy) and the run's info."""
        import torch

        best, start = state.best, state.start_val or {}
        kept_probe = bool(best["epoch"]) and best["val_accuracy"] < start.get("val_accuracy", 0.0)
        if kept_probe:
            logger.info(
                f"the best epoch ({best['epoch']}, val_accuracy {best['val_accuracy']:.4f}) is below the linear "
                f"probe's val_accuracy {start['val_accuracy']:.4f}: the model is the probe on the pretrained backbone"
            )
            best = Best(**{**best, "epoch": 0, "state": probe_state})
        network = state.network.cpu()  # the bundle, and the test predictions, are the CPU's
        assert best["state"] is not None, "the probe's weights are the best before any epoch"
        network.load_state_dict(best["state"])
        network.eval()
        self.precision = resolve_precision(self.settings.precision)
        self.network_ = network
        self.precision_ = self.precision
        model = network.net.to(memory_format=torch.contiguous_format)
        model.eval()
        info = self._info(state, best, freeze_info, kept_probe, stopped, resume)
        if not best["epoch"] and not kept_probe:
            logger.info("no epoch ran: the model is the linear probe on the pretrained backbone")
        val_proba = state.best_val_proba if best["epoch"] else None
        return FineTuneResult(model, head_arrays(network), state.history, info, val_proba)

    def _info(
        self,
        state: TrainState,
        best: Best,
        freeze_info: FreezeInfo,
        kept_probe: bool,
        stopped: str,
        resume: bool,
    ) -> dict[str, Any]:
        """What the run did, as the estimator saves it (finetune.json, metrics.json)."""
        s, history = self.settings, state.history
        return {
            "unfreeze": s.unfreeze,
            "settings": asdict(s),
            "precision": self.precision,
            "loader_workers": self.workers,
            "torch_threads": self.threads,
            "frozen_prefix": self.frozen_prefix,
            "distributed": self.dist.describe(),
            "trainable_groups": freeze_info["n_trainable_groups"],
            "block_groups": freeze_info["n_groups"],
            "trainable_backbone_params": freeze_info["trainable_params"],
            "total_backbone_params": freeze_info["total_params"],
            "epochs_requested": s.epochs,
            "epochs_run": len(history),
            **_steps_info(state, len(history)),
            "best_epoch": best["epoch"],
            "best_val_loss": best["val_loss"],
            "probe_kept": kept_probe or not history,
            "stopped_because": stopped,
            "resumed_from_epoch": state.start_epoch - 1 if resume else None,
            "start_val": state.start_val,
            "train_seconds": state.trained_s,
            "images_per_s": float(np.mean([r["images_per_s"] for r in history])) if history else 0.0,
        }
