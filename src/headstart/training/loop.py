"""Fine-tuning: the second strategy of transfer learning, on a CPU, resumable.

The network is the backbone plus the linear probe fitted on cached features (so training starts
from a good head, never from random). Which backbone parts train is chosen by ``unfreeze``,
counted in the backbone's own block groups from timm (stem, stages, head conv):

- ``head``: nothing of the backbone (its features, augmented images, the head trains);
- ``last:N``: the last N groups; ``half``: the later half; ``all``: everything.

Frozen parts stay in eval mode (BatchNorm running statistics never move) and need no gradient,
so autograd stores nothing for them and a partial fine-tune costs little more than inference.
Each epoch's shuffling, augmentation and dropout are seeded from (seed, epoch), and a
checkpoint (model, optimiser, schedule, history) is written atomically after every epoch, so
``--resume`` continues a killed run exactly where its last complete epoch ended.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import BadImageError, HeadstartError
from headstart.core.progress import ConsoleProgress, NullProgress, _fmt_eta
from headstart.core.system import compute_threads, usable_core_count

CHECKPOINT_DIR = "checkpoints"
HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s", "seconds"]


@dataclass
class FineTuneSettings:
    """Everything that decides a fine-tuning run (saved with the run, checked on resume)."""

    unfreeze: str = "last:2"
    epochs: int = 4
    lr: float = 1e-3  # the head's; backbone groups get less (see ``backbone_lr_scale``)
    backbone_lr_scale: float = 0.1  # the top trainable group's lr relative to the head
    layer_decay: float = 0.6  # each earlier group: times this
    batch_size: int = 32
    augment: str = "default"
    class_weight: str | None = None  # None or "balanced"
    patience: int = 3
    time_budget: float | None = None  # seconds of wall time for the whole fit
    label_smoothing: float = 0.1
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of all steps
    grad_clip: float = 1.0
    # BatchNorm statistics: frozen everywhere by default (Keras' advice for fine-tuning: small
    # batches of augmented images make poor statistics); False updates them in trainable parts.
    freeze_bn_stats: bool = True
    # Keep the probe's own L2 penalty (scikit-learn's 1/(2 C n) ||W||^2) on the head, so training
    # optimises the objective the probe was chosen with. (On flowers it did not stop val_loss rising.)
    keep_probe_l2: bool = True
    workers: int | None = None
    precision: str = "auto"  # auto (bf16 where the CPU has it), bf16 or fp32
    threads: int | None = None  # torch threads; None: the cores not already busy (see compute_threads)
    seed: int = 0


# --------------------------------------------------------------------------- which parts train


def block_groups(model: Any) -> list[list[str]]:
    """Parameter names of the backbone's block groups, first to last (timm's coarse grouping)."""
    from timm.models._manipulate import group_parameters

    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        raise HeadstartError(
            f"{type(model).__name__} has no block structure in timm: use --unfreeze head or all"
        )
    grouped = group_parameters(model, matcher(coarse=True))
    return [list(names) for _, names in sorted(grouped.items())]


def trainable_groups(spec: str, n_groups: int) -> int:
    """How many of the last groups train for ``head``, ``last:N``, ``half`` or ``all``."""
    spec = spec.strip().lower()
    if spec == "head":
        return 0
    if spec == "all":
        return n_groups
    if spec == "half":
        return n_groups // 2
    if spec.startswith("last:"):
        try:
            n = int(spec[5:])
        except ValueError:
            n = -1
        if 1 <= n <= n_groups:
            return n
        raise HeadstartError(f"--unfreeze {spec}: N must be between 1 and {n_groups} for this backbone")
    raise HeadstartError(f"unknown --unfreeze '{spec}': use head, last:N, half or all")


def freeze(model: Any, spec: str) -> dict[str, Any]:
    """Set ``requires_grad`` per ``spec``; return the groups that train (last first) and counts."""
    groups = block_groups(model)
    n = trainable_groups(spec, len(groups))
    train_names = groups[len(groups) - n :][::-1] if n else []
    wanted = {name for g in train_names for name in g}
    for name, p in model.named_parameters():
        p.requires_grad_(name in wanted)
    return {
        "groups": train_names,
        "n_groups": len(groups),
        "n_trainable_groups": n,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
    }


def set_train_mode(model: Any, freeze_bn_stats: bool = False) -> None:
    """Train mode only where something trains: frozen modules (and their BatchNorm) stay in eval;
    with ``freeze_bn_stats`` every BatchNorm does (its affine weights still train)."""
    import torch

    model.train()
    for module in model.modules():
        if freeze_bn_stats and isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
            continue
        own = list(module.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            module.eval()
        elif not own and not any(p.requires_grad for p in module.parameters()):
            module.eval()


# --------------------------------------------------------------------------- the network


def make_network(backbone_model: Any, data_config: dict[str, Any], head: Any) -> Any:
    """uint8 NCHW pixels -> normalise -> backbone -> standardise -> linear (the probe's weights)."""
    import torch

    class Network(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = backbone_model
            mean = torch.tensor(data_config["mean"], dtype=torch.float32) * 255.0
            std = torch.tensor(data_config["std"], dtype=torch.float32) * 255.0
            self.register_buffer("pixel_mean", mean.view(1, 3, 1, 1))
            self.register_buffer("pixel_std", std.view(1, 3, 1, 1))
            self.register_buffer("feature_mean", torch.as_tensor(np.asarray(head.mean, dtype=np.float32)))
            # A feature that barely varied in the probe's data must not blow up once the backbone
            # moves: its scale gets a floor (a tenth of the median feature's).
            scale = np.asarray(head.scale, dtype=np.float32)
            scale = np.maximum(scale, 0.1 * float(np.median(scale)))
            self.register_buffer("feature_scale", torch.as_tensor(scale))
            coef = np.asarray(head.coef, dtype=np.float32)
            self.fc = torch.nn.Linear(coef.shape[1], coef.shape[0])
            with torch.no_grad():
                self.fc.weight.copy_(torch.from_numpy(coef))
                self.fc.bias.copy_(torch.from_numpy(np.asarray(head.intercept, dtype=np.float32)))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = (pixels.float() - self.pixel_mean) / self.pixel_std
            x = x.contiguous(memory_format=torch.channels_last)
            features = self.net(x).float()
            return self.fc((features - self.feature_mean) / self.feature_scale)

    return Network()


def resolve_precision(precision: str) -> str:
    """bf16 autocast where the CPU has native bf16 (decided at run time), else fp32."""
    import torch

    if precision == "fp32":
        return "fp32"
    native = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if precision == "bf16" and not native:
        raise HeadstartError("--precision bf16: this CPU has no native bf16; use auto or fp32")
    return "bf16" if native else "fp32"


# --------------------------------------------------------------------------- data


class ImageSet:
    """(path, label) pairs -> (uint8 CHW tensor, label); an unreadable file gets label -100 (ignored).

    Indices come from :class:`EpochSampler` as (index, seed): each image's augmentation is drawn
    from its own seed, so it is the same whatever the worker count or an interruption.
    """

    def __init__(self, items: Sequence[tuple[str, int]], transform: Any, min_side: int, shape: tuple) -> None:
        self.items = list(items)
        self.transform = transform
        self.min_side = min_side
        self.shape = shape

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[Any, int]:
        import torch

        from headstart.data.images import decode_image, read_bytes

        index, seed = key if isinstance(key, tuple) else (key, 0)
        path, label = self.items[index]
        try:
            img = decode_image(read_bytes(path), self.min_side)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.transform(img), label
        except BadImageError:
            return torch.zeros(self.shape, dtype=torch.uint8), -100


class EpochSampler:
    """A seeded permutation per epoch, yielding (index, per-image seed)."""

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        seeds = rng.integers(0, 2**31 - 1, self.n)
        return iter([(int(i), int(s)) for i, s in zip(order, seeds)])


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def make_loader(dataset: ImageSet, sampler: EpochSampler, batch_size: int, workers: int) -> Any:
    import torch

    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temp file, then rename: a kill while writing never leaves half a file."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means an unusable file
        raise HeadstartError(f"checkpoint {path} is damaged ({type(e).__name__}): start a new run") from e


def _contiguous_state(module: Any) -> dict[str, Any]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- training


@dataclass
class FineTuneResult:
    backbone_model: Any
    head_arrays: dict[str, np.ndarray]
    history: list[dict[str, float]]
    info: dict[str, Any] = field(default_factory=dict)


class FineTuner:
    """Trains backbone + head end to end on augmented images, with early stopping and resume."""

    def __init__(
        self,
        settings: FineTuneSettings,
        run_dir: Path | None = None,
        log: Callable[[str], None] = print,
        verbose: bool = True,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.log = log
        self.verbose = verbose
        self.on_epoch_end = on_epoch_end

    # ------------------------------------------------------------------ helpers

    def _workers(self) -> int:
        if self.settings.workers is not None:
            return max(0, int(self.settings.workers))
        return max(1, min(4, usable_core_count() // 2))  # decoding is cheap next to training

    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _param_groups(self, network: Any, trainable: list[list[str]]) -> list[dict[str, Any]]:
        s = self.settings
        params = dict(network.net.named_parameters())
        groups = [{"params": list(network.fc.parameters()), "lr": s.lr, "name": "head"}]
        for depth, names in enumerate(trainable):
            lr = s.lr * s.backbone_lr_scale * s.layer_decay**depth
            groups.append({"params": [params[n] for n in names], "lr": lr, "name": f"backbone-{depth}"})
        return groups

    def _evaluate(self, network: Any, loader: Any, loss_fn: Any) -> tuple[float, float, np.ndarray]:
        import torch

        network.eval()
        losses, correct, n, outputs = 0.0, 0, 0, []
        with torch.inference_mode(), self._autocast():
            for pixels, labels in loader:
                logits = network(pixels).float()
                outputs.append(torch.softmax(logits, 1).numpy())
                ok = labels >= 0
                if ok.any():
                    losses += float(loss_fn(logits[ok], labels[ok])) * int(ok.sum())
                    correct += int((logits[ok].argmax(1) == labels[ok]).sum())
                    n += int(ok.sum())
        proba = np.concatenate(outputs) if outputs else np.zeros((0, 0))
        return (losses / n if n else float("nan")), (correct / n if n else float("nan")), proba

    def _eval_loader(self, items: Sequence[tuple[str, int]], data_config: dict[str, Any]) -> Any:
        from headstart.data.augment import EvalTransform

        transform = EvalTransform(data_config)
        _, h, w = data_config["input_size"]
        ds = ImageSet(items, transform, transform.preprocess.min_side, (3, h, w))
        return make_loader(
            ds, EpochSampler(len(items), 0, shuffle=False), self.settings.batch_size, self._workers()
        )

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        backbone_model: Any,
        data_config: dict[str, Any],
        head: Any,
        train: Sequence[tuple[str, int]],
        val: Sequence[tuple[str, int]],
        n_classes: int,
        resume: bool = False,
        deadline: float | None = None,
        fingerprint: str = "",
    ) -> FineTuneResult:
        """Fine-tune a copy of ``backbone_model`` (the original, and so the feature cache, stay intact)."""
        import torch

        from headstart.data.augment import train_transform

        s = self.settings
        torch.manual_seed(s.seed)
        self.precision = resolve_precision(s.precision)
        self.threads = compute_threads(s.threads)
        torch.set_num_threads(self.threads)
        model = copy.deepcopy(backbone_model)
        freeze_info = freeze(model, s.unfreeze)
        network = make_network(model, data_config, head).to(memory_format=torch.channels_last)
        self.network_ = network
        _, h, w = data_config["input_size"]
        workers = self._workers()

        train_set = ImageSet(train, train_transform(s.augment, data_config), max(h, w) + 96, (3, h, w))
        sampler = EpochSampler(len(train_set), s.seed, shuffle=True)
        train_loader = make_loader(train_set, sampler, s.batch_size, workers)
        val_loader = self._eval_loader(val, data_config)

        weight = None
        if s.class_weight == "balanced":
            counts = np.bincount([y for _, y in train], minlength=n_classes).astype(np.float64)
            weight = torch.tensor(
                np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0),
                dtype=torch.float32,
            )
        elif s.class_weight not in (None, "none"):
            raise HeadstartError(f"unknown --class-weight '{s.class_weight}': use balanced or none")
        train_loss_fn = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=s.label_smoothing)
        # val_loss is the training objective on validation images (as Keras reports it), with the
        # same label smoothing: with plain cross-entropy a smoothed model pays ~0.06 nats for its
        # deliberately softer confidence and could never beat the (unsmoothed) probe it starts from.
        val_loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=s.label_smoothing)

        c = getattr(head, "C", None)
        l2 = 0.5 / (float(c) * len(train)) if (s.keep_probe_l2 and c) else 0.0
        optimizer = torch.optim.AdamW(
            self._param_groups(network, freeze_info["groups"]), weight_decay=s.weight_decay
        )
        steps_per_epoch = max(1, math.ceil(len(train_set) / s.batch_size))
        total_steps = steps_per_epoch * s.epochs
        warmup = max(1, int(round(s.warmup * total_steps)))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

        ckpt_dir = self.run_dir / CHECKPOINT_DIR if self.run_dir is not None else None
        history: list[dict[str, float]] = []
        probe_state = _contiguous_state(network)
        best = {"val_loss": float("inf"), "val_accuracy": 0.0, "epoch": 0, "state": probe_state}
        waited, start_epoch, trained_s = 0, 1, 0.0
        if resume:
            last = ckpt_dir / "last.pt" if ckpt_dir is not None else None
            if last is None or not last.is_file():
                raise HeadstartError(
                    f"no checkpoint to resume in {self.run_dir} ({CHECKPOINT_DIR}/last.pt is missing: the run "
                    "ended before its first epoch); start it again without --resume"
                )
            state = load_checkpoint(last)
            if state.get("fingerprint") != fingerprint:
                raise HeadstartError(
                    f"the checkpoint in {self.run_dir} is from different data or settings: resume with the "
                    "same ones, or start a new run in another --out folder"
                )
            network.load_state_dict(state["network"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history = list(state["history"])
            waited, trained_s = int(state["waited"]), float(state["trained_s"])
            start_epoch = int(state["epoch"]) + 1
            best_path = ckpt_dir / "best.pt"
            best["val_loss"] = float(state["best_val_loss"])
            best["val_accuracy"] = float(state.get("best_val_accuracy", 0.0))
            self.start_ = state.get("start_val")
            if best_path.is_file() and state["best_epoch"]:
                best = {
                    "val_loss": float(state["best_val_loss"]),
                    "epoch": int(state["best_epoch"]),
                    "val_accuracy": float(state.get("best_val_accuracy", 0.0)),
                    "state": load_checkpoint(best_path)["network"],
                }
            if deadline is not None:
                deadline -= trained_s  # the budget covers the interrupted part too
            self.log(f"resuming from epoch {state['epoch']} of {s.epochs} (checkpoint {last})")
        if ckpt_dir is not None and ckpt_dir.is_dir():
            for leftover in ckpt_dir.glob(".*.tmp"):  # from a kill while writing: never a checkpoint
                leftover.unlink(missing_ok=True)

        self.log(
            f"fine-tuning ({s.unfreeze}: {freeze_info['n_trainable_groups']} of {freeze_info['n_groups']} block "
            f"groups, {freeze_info['trainable_params']:,} of {freeze_info['total_params']:,} backbone parameters "
            f"trainable) for {s.epochs} epoch(s) on {len(train)} images, {self.precision}, {workers} loader "
            f"worker(s), {self.threads} torch thread(s), batch {s.batch_size}, lr {s.lr:g}, augment {s.augment}"
        )
        if start_epoch == 1:
            # The probe is the model to beat. Its val_loss is not comparable with the epochs' (it
            # was fitted without label smoothing), so epochs compete on val_loss among themselves
            # and the best one must then match the probe's val accuracy (see the end of fit).
            val_loss, val_acc, _ = self._evaluate(network, val_loader, val_loss_fn)
            self.start_ = {"val_loss": val_loss, "val_accuracy": val_acc}
            self.log(f"start (linear probe): val_loss {val_loss:.4f} val_accuracy {val_acc:.4f}")
        writer = self._tensorboard()
        try:
            stopped = "completed"
            epoch_times = [row["seconds"] for row in history]
            for epoch in range(start_epoch, s.epochs + 1):
                if deadline is not None and time.time() >= deadline:
                    stopped = "time_budget"
                    break
                t0 = time.perf_counter()
                sampler.epoch = epoch
                torch.manual_seed(s.seed * 1_000_003 + epoch)  # dropout / drop-path of this epoch
                set_train_mode(network, s.freeze_bn_stats)
                progress = ConsoleProgress() if self.verbose else NullProgress()
                progress.start(f"epoch {epoch}/{s.epochs}", len(train_set))
                loss_sum, correct, seen, over_budget = 0.0, 0, 0, False
                for pixels, labels in train_loader:
                    ok = labels >= 0
                    with self._autocast():
                        logits = network(pixels).float()
                    if ok.any():
                        loss = train_loss_fn(logits[ok], labels[ok])
                        if l2:
                            loss = loss + l2 * network.fc.weight.square().sum()
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        if s.grad_clip:
                            torch.nn.utils.clip_grad_norm_(
                                [p for g in optimizer.param_groups for p in g["params"]], s.grad_clip
                            )
                        optimizer.step()
                        k = int(ok.sum())
                        loss_sum += float(loss.detach()) * k
                        correct += int((logits.detach()[ok].argmax(1) == labels[ok]).sum())
                        seen += k
                    scheduler.step()
                    progress.advance(len(labels))
                    if deadline is not None and time.time() >= deadline:
                        over_budget = True
                        break
                progress.finish()
                if over_budget:
                    stopped = "time_budget"
                    self.log(
                        f"time budget reached during epoch {epoch}: that epoch is dropped, the best model kept"
                    )
                    break
                train_s = time.perf_counter() - t0
                val_loss, val_acc, _ = self._evaluate(network, val_loader, val_loss_fn)
                seconds = time.perf_counter() - t0
                row = {
                    "epoch": epoch,
                    "loss": loss_sum / max(seen, 1),
                    "accuracy": correct / max(seen, 1),
                    "val_loss": val_loss,
                    "val_accuracy": val_acc,
                    "lr": optimizer.param_groups[0]["lr"],
                    "images_per_s": len(train_set) / train_s if train_s > 0 else 0.0,
                    "seconds": seconds,
                }
                history.append(row)
                epoch_times.append(seconds)
                trained_s += seconds
                improved = val_loss < best["val_loss"] - 1e-4
                if improved:
                    best = {
                        "val_loss": val_loss,
                        "val_accuracy": val_acc,
                        "epoch": epoch,
                        "state": _contiguous_state(network),
                    }
                    waited = 0
                else:
                    waited += 1
                eta = (s.epochs - epoch) * float(np.mean(epoch_times))
                self.log(
                    f"epoch {epoch}/{s.epochs}: loss {row['loss']:.4f} accuracy {row['accuracy']:.4f} "
                    f"val_loss {val_loss:.4f} val_accuracy {val_acc:.4f} lr {row['lr']:.2e} "
                    f"{row['images_per_s']:.1f} img/s {seconds:.0f}s{' *best' if improved else ''}"
                    f"{f', ETA {_fmt_eta(eta)}' if epoch < s.epochs else ''}"
                )
                if writer is not None:
                    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s"):
                        writer.add_scalar(key, row[key], epoch)
                    writer.flush()
                if ckpt_dir is not None:
                    if improved:
                        save_checkpoint(ckpt_dir / "best.pt", {"network": best["state"], "epoch": epoch})
                    save_checkpoint(
                        ckpt_dir / "last.pt",
                        {
                            "epoch": epoch,
                            "network": network.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "history": history,
                            "best_val_loss": best["val_loss"],
                            "best_val_accuracy": best["val_accuracy"],
                            "best_epoch": best["epoch"],
                            "start_val": getattr(self, "start_", None),
                            "waited": waited,
                            "trained_s": trained_s,
                            "fingerprint": fingerprint,
                        },
                    )
                    self._write_history(history)
                if self.on_epoch_end is not None:
                    self.on_epoch_end(epoch, row)
                if waited >= s.patience and epoch < s.epochs:
                    stopped = "early_stopping"
                    self.log(f"early stopping: val_loss has not improved for {waited} epoch(s)")
                    break
        except KeyboardInterrupt:
            done = history[-1]["epoch"] if history else 0
            hint = (
                f"; continue with: headstart train --resume {self.run_dir}" if self.run_dir and done else ""
            )
            self.log(f"interrupted during epoch {done + 1}: {done} epoch(s) saved{hint}")
            raise
        finally:
            if writer is not None:
                writer.close()
        if self.run_dir is not None:
            self._write_history(history)

        start = getattr(self, "start_", None) or {}
        kept_probe = bool(best["epoch"]) and best["val_accuracy"] < start.get("val_accuracy", 0.0)
        if kept_probe:
            self.log(
                f"the best epoch ({best['epoch']}, val_accuracy {best['val_accuracy']:.4f}) is below the linear "
                f"probe's val_accuracy {start['val_accuracy']:.4f}: the model is the probe on the pretrained backbone"
            )
            best = {**best, "epoch": 0, "state": probe_state}
        network.load_state_dict(best["state"])
        network.eval()
        self.network_ = network
        self.precision_ = self.precision
        model = network.net.to(memory_format=torch.contiguous_format)
        model.eval()
        head_arrays = {
            "mean": network.feature_mean.numpy().copy(),
            "scale": network.feature_scale.numpy().copy(),
            "coef": network.fc.weight.detach().numpy().copy(),
            "intercept": network.fc.bias.detach().numpy().copy(),
        }
        info = {
            "unfreeze": s.unfreeze,
            "settings": asdict(s),
            "precision": self.precision,
            "loader_workers": workers,
            "torch_threads": self.threads,
            "trainable_groups": freeze_info["n_trainable_groups"],
            "block_groups": freeze_info["n_groups"],
            "trainable_backbone_params": freeze_info["trainable_params"],
            "total_backbone_params": freeze_info["total_params"],
            "epochs_requested": s.epochs,
            "epochs_run": len(history),
            "best_epoch": best["epoch"],
            "best_val_loss": best["val_loss"],
            "probe_kept": kept_probe or not history,
            "stopped_because": stopped,
            "resumed_from_epoch": start_epoch - 1 if resume else None,
            "start_val": getattr(self, "start_", None),
            "train_seconds": trained_s,
            "images_per_s": float(np.mean([r["images_per_s"] for r in history])) if history else 0.0,
        }
        if not best["epoch"] and not kept_probe:
            self.log("no epoch ran: the model is the linear probe on the pretrained backbone")
        return FineTuneResult(model, head_arrays, history, info)

    def predict_proba(self, items: Sequence[tuple[str, int]], data_config: dict[str, Any]) -> np.ndarray:
        """Probabilities of the fine-tuned network (eval transform), one row per item."""
        import torch

        _, _, proba = self._evaluate(
            self.network_, self._eval_loader(items, data_config), torch.nn.CrossEntropyLoss()
        )
        return proba

    def _write_history(self, history: list[dict[str, float]]) -> None:
        from headstart.core.io import write_rows

        assert self.run_dir is not None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / ".history.csv.tmp"
        write_rows(tmp, HISTORY_COLUMNS, [[row[c] for c in HISTORY_COLUMNS] for row in history])
        os.replace(tmp, self.run_dir / "history.csv")

    def _tensorboard(self) -> Any:
        if self.run_dir is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))


def settings_fingerprint(
    settings: FineTuneSettings, train: Sequence[tuple[str, int]], extra: dict[str, Any]
) -> str:
    """What must match for a checkpoint to be resumed: settings (but workers) and the training set."""
    import hashlib

    spec = {
        k: v
        for k, v in asdict(settings).items()
        if k not in ("workers", "threads", "time_budget", "patience")
    }
    blob = json.dumps([spec, list(train), extra], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]
