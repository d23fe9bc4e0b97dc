"""Dynamic micro-batching: concurrent requests share one model call.

Why: an exported network runs a batch of 16 images in far less than 16 times the time of
one, but HTTP clients send one photo at a time. Each prepared image waits in a bounded
asyncio queue; one worker task takes the first waiting image, gathers whatever else arrives
within ``max_wait_s`` (up to ``max_batch`` images), and runs the batch in a thread so the
event loop keeps accepting and decoding requests meanwhile. While one batch runs, the next
one fills, so a busy server always sends full batches.

Bigger batches are not always faster: on a small CPU a network like efficientnet-lite0 runs about
twice as fast per image at batch 1 as at batch 16 (at 16 its activations no longer fit in the
caches). :func:`fastest_batch_size` measures that once at startup, and the batcher then caps its
batches at the size the machine runs fastest, never above ``max_batch``.

Rules: the queue never grows past ``queue_size`` images: a request that does not fit whole is
refused with :class:`QueueFull` (the server answers 503 with Retry-After); images of one
request are queued together or not at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from headstart.core.errors import HeadstartError


def fastest_batch_size(
    predict_proba: Callable[[np.ndarray], np.ndarray],
    input_size: tuple[int, int],
    max_batch: int,
    min_seconds: float = 0.1,
    rounds: int = 3,
    tolerance: float = 0.9,
) -> tuple[int, dict[int, float]]:
    """The batch size (a power of two up to ``max_batch``, or ``max_batch``) the model runs fastest.

    Every size runs for ``min_seconds`` in each of ``rounds`` interleaved rounds, and keeps its
    best round: other work on the machine slows some rounds, never speeds one up. The answer is
    the smallest size within ``tolerance`` of the best images per second: a bigger batch must be
    clearly faster to be worth its latency and memory. The first call runs ``max_batch`` images,
    which sizes the runtime's memory for the largest batch before any request.

    Returns:
        The size and every size's images per second.
    """
    sizes = sorted({2**i for i in range(max_batch.bit_length()) if 2**i <= max_batch} | {max_batch})
    pixels = np.zeros((max_batch, *input_size, 3), dtype=np.uint8)
    for size in reversed(sizes):
        predict_proba(pixels[:size])  # untimed: the runtime's first call of a shape prepares it
    rates = dict.fromkeys(sizes, 0.0)
    for _ in range(rounds):
        for size in sizes:
            calls, start = 0, time.perf_counter()
            while calls < 1 or time.perf_counter() - start < min_seconds:
                predict_proba(pixels[:size])
                calls += 1
            rates[size] = max(rates[size], size * calls / (time.perf_counter() - start))
    best = max(rates.values())
    return min(size for size, rate in rates.items() if rate >= tolerance * best), rates


class QueueFull(HeadstartError):
    """More images are waiting than the queue holds: the client should retry shortly."""


@dataclass
class _Item:
    image: np.ndarray
    future: asyncio.Future[object]


def per_image(outputs: np.ndarray | tuple[np.ndarray, ...]) -> Sequence[object]:
    """A model call's result as one entry per image: its row, or (a tuple of outputs) the tuple
    of its rows in each, such as (probabilities, reject score)."""
    return list(zip(*outputs)) if isinstance(outputs, tuple) else list(outputs)


class MicroBatcher:
    """Gathers images from concurrent requests into batches for ``predict_proba``.

    Args:
        predict_proba: uint8 batch (N, H, W, 3) -> float32 probabilities (N, C), or a tuple of
            per-image outputs such as (probabilities, (N,) reject scores); each image then gets
            the tuple of its rows. Called from one inference thread, never from two at once.
        max_batch: most images in one model call (1 turns batching off).
        max_wait_s: how long the first image of a batch waits for company.
        queue_size: most images waiting; more are refused with :class:`QueueFull`.
    """

    def __init__(
        self,
        predict_proba: Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, ...]],
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        queue_size: int = 256,
    ) -> None:
        self.predict_proba = predict_proba
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max_wait_s
        self.queue_size = max(self.max_batch, int(queue_size))
        self.model_calls = 0
        self.images_done = 0
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Start the worker task on the running event loop (the app's startup)."""
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headstart-inference")
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="headstart-batcher")

    async def stop(self) -> None:
        """Finish the images already queued, then stop the worker (the app's shutdown)."""
        if self._queue is not None:
            await self._queue.join()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._worker = self._executor = None

    @property
    def waiting(self) -> int:
        """Images in the queue now."""
        return self._queue.qsize() if self._queue is not None else 0

    async def predict(self, images: list[np.ndarray]) -> list[object]:
        """Probabilities (or the tuple of outputs) for each prepared image, computed in whatever
        batches form.

        Raises:
            QueueFull: the queue cannot take all of ``images`` now.
        """
        if self._queue is None:
            raise HeadstartError("the model is not loaded yet")
        if self.queue_size - self._queue.qsize() < len(images):
            raise QueueFull(f"busy: {self._queue.qsize()} images are waiting (queue holds {self.queue_size})")
        loop = asyncio.get_running_loop()
        items = [_Item(image, loop.create_future()) for image in images]
        for item in items:  # one event loop: nothing else runs between the check and these puts
            self._queue.put_nowait(item)
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _gather(self, queue: asyncio.Queue[_Item]) -> list[_Item]:
        """The first waiting image, plus those that arrive within ``max_wait_s``."""
        batch = [await queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # polling, not wait_for(queue.get()): a timed-out get must never lose an image
            await asyncio.sleep(min(left, 0.001))
        return batch

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather(self._queue)
            try:
                stacked = np.stack([item.image for item in batch])
                outputs = await loop.run_in_executor(self._executor, self.predict_proba, stacked)
                self.model_calls += 1
                self.images_done += len(batch)
                for item, row in zip(batch, per_image(outputs)):
                    if not item.future.done():
                        item.future.set_result(row)
            except Exception as e:  # the requests of this batch fail; the server keeps serving
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
            finally:
                for _ in batch:
                    self._queue.task_done()
