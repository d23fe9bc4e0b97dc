"""Distributed fine-tuning: PyTorch's own DDP, launched by ``torchrun`` (gloo on CPUs, NCCL on GPUs).

    torchrun --nproc-per-node 2 -m headstart train photos/ --strategy finetune --out runs/ft
    headstart train photos/ --strategy finetune --nproc 2        # the same: starts torchrun's launcher

Every rank runs the whole ``fit``; they differ only where this module says so:

- the process group comes from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...);
- the training set is split among the ranks by :class:`DistributedEpochSampler`: the one-process
  epoch order (same permutation, same per-image augmentation seeds) dealt out by torch's
  ``DistributedSampler``, each rank taking ``batch_size / world_size`` images per step, so global
  step k trains on the images a single process would, and DDP averages the gradients;
- validation and test images are split among the ranks and their results reduced or gathered;
- stopping (early stopping, the time budget) is decided on rank 0 and broadcast (:class:`SyncStop`),
  so no rank waits in a collective that another has left;
- only rank 0 writes: the run folder, checkpoints, history, TensorBoard, the report; the other
  ranks' writers get no folder. A resumed run's checkpoint is read by rank 0 and broadcast, so
  resuming works with another world size, and on nodes that do not share the run folder.

Rule: a rank whose partner died must not hang: collectives time out after
``$HEADSTART_DIST_TIMEOUT`` seconds (default 600), and torchrun's agent stops the other ranks as
soon as one fails.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from headstart.core.errors import HeadstartError, ParameterError
from headstart.training.callbacks import Callback
from headstart.training.state import TrainState

if TYPE_CHECKING:
    from torch.nn import Module

    from headstart.data.loaders import EpochSampler, Loader


TIMEOUT_ENV = "HEADSTART_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
T = TypeVar("T")


def launched_by_torchrun() -> bool:
    """True in a worker that torchrun (or any launcher setting its variables) started with peers."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job (one process: world size 1, no backend)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1
    backend: str = ""
    device: str = "cpu"

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, int | str]:
        """What ``metrics.json`` records (``finetune.distributed``)."""
        return {"world_size": self.world_size, "backend": self.backend or "none", "device": self.device}

    def per_rank_batch(self, batch_size: int) -> int:
        """Each rank's share of the global batch; the global batch must divide evenly."""
        if batch_size % self.world_size:
            raise ParameterError(
                "train_batch_size",
                f"{batch_size} does not divide among {self.world_size} processes: use a multiple of "
                f"{self.world_size}, so each step trains on the same images as one process would",
            )
        return batch_size // self.world_size

    def share(self, count: int) -> int:
        """This rank's share of ``count`` threads or workers on its machine (at least 1)."""
        return max(1, count // self.local_world_size)

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's items of an evaluation set (every world_size-th, from its rank)."""
        return list(items[self.rank :: self.world_size])

    def unshard(self, part: np.ndarray, n: int) -> np.ndarray:
        """The rows of every rank's :meth:`shard`, gathered back into the original order."""
        if not self.active:
            return part
        import torch.distributed as dist

        parts: list[np.ndarray] = [part] * self.world_size  # all_gather_object replaces each
        dist.all_gather_object(parts, part)
        widest = max(parts, key=len)  # a rank with no rows has no columns either
        full = np.zeros((n, *widest.shape[1:]), dtype=widest.dtype)
        for rank, rows in enumerate(parts):
            if len(rows):
                full[rank :: self.world_size] = rows
        return full

    def average(self, values: Sequence[float], weight: float) -> list[float]:
        """Weighted means of ``values`` over the ranks (NaN values weigh nothing)."""
        if not self.active:
            return list(values)
        import torch
        import torch.distributed as dist

        ok = weight if not any(np.isnan(v) for v in values) else 0.0
        sums = torch.tensor([*(v * ok if ok else 0.0 for v in values), ok], dtype=torch.float64)
        reduced = sums.to(self.device)  # gloo reduces CPU tensors; NCCL needs device ones
        dist.all_reduce(reduced)
        sums = reduced.cpu()
        total = float(sums[-1])
        return [float(s) / total if total else float("nan") for s in sums[:-1]]

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, network: Module) -> Module:
        """The module that runs the training forward: ``network`` itself, or its
        DistributedDataParallel wrapper, which averages the gradients across ranks."""
        if not self.active:
            return network
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.startswith("cuda") else None
        return DistributedDataParallel(network, device_ids=ids)


def in_a_group() -> bool:
    """Whether this process may be in a torch.distributed group: never while torch.distributed
    was not even imported (so a single process need not import torch to know it is alone)."""
    return "torch.distributed" in sys.modules or launched_by_torchrun()


def current() -> Distributed:
    """The job this process is part of (the process group, if one is initialised)."""
    try:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return Distributed(device=single_process_device())
        world, rank = dist.get_world_size(), dist.get_rank()
        backend = str(dist.get_backend())
    except ImportError:  # torch without distributed support
        return Distributed(device=single_process_device())
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    local_rank = int(os.environ.get("LOCAL_RANK", rank % max(1, local_world)))
    device = f"cuda:{local_rank}" if backend == "nccl" else "cpu"
    return Distributed(world, rank, local_rank, local_world, backend, device)


def single_process_device() -> str:
    """Where a process outside a job trains: the first GPU torch sees, else the CPU
    (``CUDA_VISIBLE_DEVICES=`` keeps a GPU machine's run on its CPU)."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def timeout_s() -> float:
    """Seconds a collective may wait for a missing rank (``$HEADSTART_DIST_TIMEOUT``)."""
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        raise HeadstartError(f"${TIMEOUT_ENV} must be a number of seconds") from None


@contextmanager
def process_group() -> Iterator[Distributed]:
    """Join torchrun's job for the duration of the block (NCCL where every rank has a GPU, else
    gloo); a process that torchrun did not start, or that already belongs to a group, is left as is."""
    if not launched_by_torchrun():  # alone, or in a group someone else made: left as is
        yield current() if in_a_group() else Distributed(device="")  # device: not looked up
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        yield current()
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() > local_rank else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def in_process_group(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` inside :func:`process_group` (a decorator for the estimator's fit)."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> T:
        with process_group():
            return fn(*args, **kwargs)

    return wrapper


def is_main_process() -> bool:
    """Whether this process is rank 0 of its job (a process torchrun did not start always is).

    Read from torchrun's ``RANK``, so asking never imports torch."""
    return not launched_by_torchrun() or int(os.environ.get("RANK", "0")) == 0


class RankZeroFilter(logging.Filter):
    """Passes log lines on rank 0 only, so a job of N processes prints and logs each line once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return is_main_process()


def writer_args(out_dir: str | Path | None, verbose: bool) -> tuple[str | Path | None, bool]:
    """The run folder and verbosity of this rank's run writer: rank 0's folder, or none (what
    reaches the console is :class:`RankZeroFilter`'s to decide)."""
    return (out_dir if is_main_process() else None), verbose


class DistributedEpochSampler:
    """One rank's part of :class:`~headstart.data.loaders.EpochSampler`'s epoch.

    The order and per-image seeds are the one-process ones; torch's ``DistributedSampler``
    (without shuffling: the order is already seeded) deals the positions out, interleaved and
    padded to equal length, so with a per-rank batch of ``batch / world_size`` the ranks' k-th
    batches together are exactly one process's k-th batch.
    """

    def __init__(self, inner: EpochSampler, world_size: int, rank: int) -> None:
        from torch.utils.data import DistributedSampler

        self.inner = inner
        positions: Any = range(len(inner))  # a sized sequence is all the sampler reads
        sampler: DistributedSampler[int] = DistributedSampler(
            positions, num_replicas=world_size, rank=rank, shuffle=False
        )
        self.positions = list(sampler)

    @property
    def epoch(self) -> int:
        return int(self.inner.epoch)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.inner.epoch = value

    def __len__(self) -> int:
        return len(self.positions)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = list(iter(self.inner))
        return iter([order[p] for p in self.positions])


def shard_train_loader(
    loader: Loader, sampler: EpochSampler, dist: Distributed, batch_size: int
) -> tuple[Loader, EpochSampler | DistributedEpochSampler]:
    """This rank's training loader and sampler (the one-process ones when not distributed)."""
    if not dist.active:
        return loader, sampler
    from headstart.data.loaders import make_loader

    ranked = DistributedEpochSampler(sampler, dist.world_size, dist.rank)
    batch = dist.per_rank_batch(batch_size)
    return make_loader(loader.dataset, ranked, batch, loader.num_workers), ranked  # type: ignore[arg-type]


class SyncStop(Callback):
    """Rank 0's stop decision (reason and message) on every rank, after every hook that may stop.

    Put it last: the other callbacks (early stopping, the time budget) decide on each rank, and
    rank 0's decision wins, so every rank leaves the loop at the same step.
    """

    def __init__(self, dist: Distributed) -> None:
        self.dist = dist

    def _sync(self, state: TrainState) -> None:
        state.stop, state.stop_message = self.dist.broadcast((state.stop, state.stop_message))

    def on_epoch_start(self, state: TrainState) -> None:
        self._sync(state)

    def on_batch_end(self, state: TrainState) -> None:
        self._sync(state)

    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None:
        self._sync(state)


def broadcast_checkpoint(dist: Distributed, read: Callable[[], T]) -> T:
    """``read()`` on rank 0 (a checkpoint), its result (or its error) on every rank."""
    if not dist.active:
        return read()
    outcome: Any = None
    if dist.is_main:
        try:
            outcome = read()
        except HeadstartError as e:
            outcome = e
    outcome = dist.broadcast(outcome)
    if isinstance(outcome, HeadstartError):
        raise HeadstartError(str(outcome))
    return outcome


def launch(nproc: int, argv: Sequence[str]) -> int:
    """``headstart train --nproc N``: torchrun's own launcher (``torch.distributed.run``), one
    machine, ``nproc`` workers each running ``python -m headstart`` with ``argv``; the exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(nproc), "--module", "headstart", *argv]
    )
    try:
        run(args)
    except ChildFailedError as e:
        failures = ", ".join(f"rank {r} exit code {f.exitcode}" for r, f in e.failures.items())
        raise HeadstartError(f"distributed training failed ({failures})") from None
    return 0


def without_flag(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` less ``flag VALUE`` and ``flag=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out
