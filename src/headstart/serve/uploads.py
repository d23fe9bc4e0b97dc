"""Reading a request's images: size limits, multipart parsing, decoding off the event loop.

Rules: the body is read into memory only up to the upload limit (a longer one is refused while
it streams, before it is all received); multipart parts are kept in memory, never spooled to
temporary files, since the body is already bounded; each problem is an :class:`UploadError`
with the HTTP status and a message that names it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from headstart.core.errors import BadImageError, HeadstartError
from headstart.data.images import decode_image
from headstart.serve.admission import DecodeAdmission, decoded_pixels

RAW_TYPES = ("image/", "application/octet-stream")


class UploadError(HeadstartError):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """One image of a request: its name (the upload's filename) and its bytes."""

    name: str
    data: bytes


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise UploadError(413, f"upload too large: {int(declared)} bytes, the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadError(413, f"upload too large: over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _memory_parser(limit: int) -> type[MultiPartParser]:
    class InMemoryParser(MultiPartParser):
        spool_max_size = limit + 1  # the body is bounded already: parts stay in memory

    return InMemoryParser


async def _parse_multipart(headers: Headers, body: bytes, limit: int, max_files: int) -> list[Upload]:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = _memory_parser(limit)(headers, stream(), max_files=max_files, max_fields=100)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        message = str(getattr(e, "message", e))
        if "Too many files" in message:
            raise UploadError(413, f"refused: {message}") from e
        raise UploadError(400, f"malformed multipart form: {message}") from e
    except Exception as e:  # python-multipart's own errors for a damaged body
        raise UploadError(400, f"malformed multipart form: {type(e).__name__}: {str(e)[:120]}") from e
    try:
        files = [value for value in form.getlist("files") if isinstance(value, UploadFile)]
        if not files and not form.multi_items() and body.strip():
            raise UploadError(400, "malformed multipart form: no part could be read (wrong boundary?)")
        if not files:
            names = sorted({key for key, _ in form.multi_items()})
            raise UploadError(
                400, f"no file field: send images as multipart field 'files' (got {names or 'none'})"
            )
        return [Upload(f.filename or f"file{i + 1}", await f.read()) for i, f in enumerate(files)]
    finally:
        await form.close()


async def read_uploads(request: Request, limit: int, max_files: int) -> list[Upload]:
    """The images of a request: multipart ``files`` fields, or one raw image body.

    Args:
        limit: most bytes the request body may have.
        max_files: most files in one multipart request.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data" and not content_type.startswith(RAW_TYPES):
        raise UploadError(
            415,
            f"wrong content type {content_type or '(none)'!r}: send multipart/form-data with field "
            "'files', or one image body as image/* or application/octet-stream",
        )
    body = await read_body(request, limit)
    if content_type == "multipart/form-data":
        return await _parse_multipart(request.headers, body, limit, max_files)
    name = request.query_params.get("filename") or "upload"
    return [Upload(name, body)]


class ImagePreparer(Protocol):
    """A model's own step from a decoded image to its (H, W, 3) uint8 input (``decode``, where a
    model has one, replaces headstart's decoding)."""

    def prepare(self, image: Image.Image) -> np.ndarray: ...


def prepare_upload(model: ImagePreparer, data: bytes) -> np.ndarray:
    """Bytes -> the model's (H, W, 3) uint8 input: headstart's decoding, then ``model.prepare``.

    Raises:
        BadImageError: the bytes are not an image headstart can read (the reason says why).
    """
    decode = getattr(model, "decode", None)
    image = decode(data) if decode is not None else decode_image(data)
    return np.asarray(model.prepare(image), dtype=np.uint8)


def decode_min_side(model: object) -> int | None:
    """The smallest side the model's decoder keeps (JPEG draft mode), where it says."""
    side = ((getattr(model, "metadata", None) or {}).get("preprocessing") or {}).get("decode_min_side")
    return int(side) if side else None


async def prepare_all(
    model: ImagePreparer, uploads: list[Upload], admission: DecodeAdmission
) -> list[np.ndarray | BadImageError]:
    """Each upload decoded and prepared on the admission's pools; a bad one becomes its error.

    Raises:
        Refused: the request's pixels do not fit now (503) or ever (413); nothing was decoded.
    """
    min_side = decode_min_side(model)
    costs = [decoded_pixels(u.data, min_side) for u in uploads]
    total = admission.admit(costs)

    async def one(upload: Upload, cost: int) -> np.ndarray | BadImageError:
        try:
            return await admission.run(cost, lambda: prepare_upload(model, upload.data))
        except BadImageError as e:
            return e

    try:
        return list(await asyncio.gather(*(one(u, c) for u, c in zip(uploads, costs))))
    finally:
        admission.release(total, len(uploads))
