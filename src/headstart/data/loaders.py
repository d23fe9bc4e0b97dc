"""Image loaders for fine-tuning: seeded per image, so an epoch is the same whatever the worker
count or an interruption.

Images reach the network as uint8 CHW tensors (normalisation happens inside the network), so
workers pass small tensors. An unreadable file gets label -100, which every loss ignores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from headstart.core.errors import BadImageError
from headstart.core.system import usable_core_count
from headstart.data.images import DataConfig

if TYPE_CHECKING:
    from PIL import Image
    from torch import Tensor
    from torch.utils.data import DataLoader

    Loader = DataLoader[tuple[Tensor, Tensor]]  # batches of (uint8 images, labels)

IGNORED_LABEL = -100


class ImageSet:
    """(path, label) pairs -> (uint8 CHW tensor, label); an unreadable file gets label -100 (ignored).

    Indices come from :class:`EpochSampler` as (index, seed): each image's augmentation is drawn
    from its own seed, so it is the same whatever the worker count or an interruption.
    """

    def __init__(
        self,
        items: Sequence[tuple[str, int]],
        transform: Callable[[Image.Image], Tensor],
        min_side: int,
        shape: tuple[int, int, int],
    ) -> None:
        self.items = list(items)
        self.transform = transform
        self.min_side = min_side
        self.shape = shape

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[Tensor, int]:
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
            return torch.zeros(self.shape, dtype=torch.uint8), IGNORED_LABEL


class EpochSampler:
    """A seeded permutation per pass over the images, yielding (index, per-image seed); set
    ``epoch`` (1, 2, ...) before each round.

    A round is ``per_round`` images of the endless stream of passes (pass ``j`` is the
    permutation drawn from ``(seed, j)``), so training budgeted in steps can evaluate and
    checkpoint after a fraction of an epoch and a resumed run finds the same round again. By
    default a round is one whole pass: round ``k`` is pass ``k``, the epoch it always was.
    """

    def __init__(self, n: int, seed: int, shuffle: bool, per_round: int | None = None) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.per_round = n if per_round is None else int(per_round)

    def __len__(self) -> int:
        return self.per_round

    def _pass(self, j: int) -> list[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, j])
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        seeds = rng.integers(0, 2**31 - 1, self.n)
        return [(int(i), int(s)) for i, s in zip(order, seeds)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.per_round == self.n:
            return iter(self._pass(self.epoch))
        start = max(self.epoch - 1, 0) * self.per_round  # the stream's position of this round
        out: list[tuple[int, int]] = []
        while len(out) < self.per_round and self.n:
            j, offset = divmod(start + len(out), self.n)
            out += self._pass(j + 1)[offset : offset + self.per_round - len(out)]
        return iter(out)


def worker_init(_: int) -> None:
    """Each loader worker decodes with one torch thread: the workers are the parallelism."""
    import torch

    torch.set_num_threads(1)


def loader_workers(workers: int | None, accelerator: bool = False) -> int:
    """Loader worker processes: ``workers`` if given, else up to 4 (half the usable cores), since
    on a CPU decoding is cheap next to training. A GPU trains faster than a few cores decode (an
    H200 ran Lite0 at 740 images/s with 4 workers, 1,400 with 12), so for it every usable core
    but the one feeding it decodes."""
    if workers is not None:
        return max(0, int(workers))
    if accelerator:
        return max(1, usable_core_count() - 1)
    return max(1, min(4, usable_core_count() // 2))


def make_loader(
    dataset: ImageSet, sampler: Iterable[tuple[int, int]], batch_size: int, workers: int
) -> Loader:
    """A torch DataLoader over ``dataset`` in ``sampler``'s order; workers persist across epochs."""
    import torch

    return torch.utils.data.DataLoader(
        dataset,  # type: ignore[arg-type]  # map-style by protocol (torch is imported lazily)
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=worker_init if workers else None,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )


def train_loader(
    items: Sequence[tuple[str, int]],
    augment: str,
    data_config: DataConfig,
    batch_size: int,
    workers: int,
    seed: int,
    per_round: int | None = None,
) -> tuple[Loader, EpochSampler]:
    """The shuffled, augmented training loader and its sampler (set ``sampler.epoch`` per round;
    ``per_round`` images a round, by default all of them).

    Images are decoded at the input size plus a margin, so random crops keep detail.
    """
    from headstart.data.augment import train_transform

    _, h, w = data_config["input_size"]
    dataset = ImageSet(items, train_transform(augment, data_config), max(h, w) + 96, (3, h, w))
    sampler = EpochSampler(len(dataset), seed, shuffle=True, per_round=per_round)
    return make_loader(dataset, sampler, batch_size, workers), sampler


def eval_loader(
    items: Sequence[tuple[str, int]], data_config: DataConfig, batch_size: int, workers: int
) -> Loader:
    """Images in order through the backbone's eval transform (the feature path's preprocessing)."""
    from headstart.data.augment import EvalTransform

    transform = EvalTransform(data_config)
    _, h, w = data_config["input_size"]
    dataset = ImageSet(items, transform, transform.preprocess.min_side, (3, h, w))
    return make_loader(dataset, EpochSampler(len(items), 0, shuffle=False), batch_size, workers)
