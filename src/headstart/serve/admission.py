"""Admission before work: what decoding a request will cost, decided from the image headers.

A request's images are admitted to decoding only while the pixels being decoded (across all
requests) stay under a budget, so a flood of small files that each decode to 100 megapixels is
refused (413 or 503 with ``Retry-After``) before it costs memory or CPU, and a normal request
still finds a decode worker. Rules:

- a request's cost is the sum of its images' decoded pixels, read from their headers (Pillow's
  ``Image.open`` is lazy); a JPEG counts at the size its draft-mode decode produces (``draft``
  sets the size without decoding);
- a request over ``request_megapixels`` can never fit: 413; one that does not fit in what is
  left of ``in_flight_megapixels`` now, or finds ``decode_queue`` images already waiting: 503;
- decoding runs in two fixed thread pools of its own (not asyncio's shared default executor):
  images over ``large_megapixels`` go one at a time through a pool of one thread, the others
  through ``workers`` threads, so large images cannot occupy every worker.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from PIL import Image, ImageFile

from headstart.core.errors import ParameterError

T = TypeVar("T")


@dataclass(frozen=True)
class DecodeLimits:
    """What decoding may cost: per request, in flight, and the pools that do it."""

    request_megapixels: float = 120.0  # one image at the 100-megapixel limit fits
    in_flight_megapixels: float = 240.0  # about 0.7 GB of RGB pixels at once
    large_megapixels: float = 16.0  # images over this decode one at a time
    workers: int = 2
    decode_queue: int = 128  # images admitted and waiting for a worker, all requests together

    def __post_init__(self) -> None:
        if self.request_megapixels <= 0 or self.in_flight_megapixels < self.request_megapixels:
            raise ParameterError("decode limits", "need 0 < request_megapixels <= in_flight_megapixels")
        if self.workers < 1 or self.decode_queue < 1:
            raise ParameterError("decode limits", "workers and decode_queue must be at least 1")


class Refused(Exception):
    """Admission said no: the HTTP status (413 never fits, 503 try again) and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decoded_pixels(data: bytes, min_side: int | None) -> int:
    """Pixels the decoder will produce for ``data``, from its header alone (0 when the header
    cannot be read: decoding will then fail at once with its own reason, costing nothing)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                if min_side and img.format == "JPEG" and isinstance(img, ImageFile.ImageFile):
                    img.draft("RGB", (min_side, min_side))  # sets the size it will decode to
                width, height = img.size
    except Exception:  # noqa: BLE001 - an unreadable header is the decoder's to report
        return 0
    return int(width) * int(height)


class DecodeAdmission:
    """The decode pools and the pixel budget they share (one per app; event-loop thread only)."""

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits = limits
        self._in_flight = 0
        self._waiting = 0
        self._small = ThreadPoolExecutor(limits.workers, thread_name_prefix="decode")
        self._large = ThreadPoolExecutor(1, thread_name_prefix="decode-large")

    @property
    def in_flight_megapixels(self) -> float:
        return self._in_flight / 1e6

    def admit(self, costs: Sequence[int]) -> int:
        """Reserve ``costs`` (pixels per image) or raise :class:`Refused`; returns the total."""
        total = sum(costs)
        limits = self.limits
        if total > limits.request_megapixels * 1e6:
            raise Refused(
                413,
                f"refused: the images decode to {total / 1e6:.1f} megapixels, over this server's "
                f"limit of {limits.request_megapixels:g} per request",
            )
        if self._in_flight + total > limits.in_flight_megapixels * 1e6:
            raise Refused(503, "busy: too many pixels being decoded now; try again shortly")
        if self._waiting + len(costs) > limits.decode_queue:
            raise Refused(503, "busy: the decode queue is full; try again shortly")
        self._in_flight += total
        self._waiting += len(costs)
        return total

    def release(self, total: int, images: int) -> None:
        self._in_flight -= total
        self._waiting -= images

    async def run(self, cost: int, work: Callable[[], T]) -> T:
        """``work()`` on the pool its cost belongs to."""
        pool = self._large if cost > self.limits.large_megapixels * 1e6 else self._small
        return await asyncio.get_running_loop().run_in_executor(pool, work)

    def close(self) -> None:
        self._small.shutdown(wait=False, cancel_futures=True)
        self._large.shutdown(wait=False, cancel_futures=True)
