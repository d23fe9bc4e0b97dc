"""The ASGI app: REST endpoints, the web page, API-key checks, around one :class:`MicroBatcher`.

FastAPI for the routes and the OpenAPI schema; its CDN-loaded docs pages are off (``/docs`` is
a small local page that lists the endpoints and links ``/openapi.json``), since the server must
work with no network.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import psutil
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.middleware.trustedhost import TrustedHostMiddleware

from headstart.core.choices import INFERENCE_PRECISIONS, check_choice
from headstart.core.errors import BadImageError, ParameterError
from headstart.evaluation.answers import answer
from headstart.evaluation.multilabel import multilabel_answer
from headstart.models.card import ModelSummary
from headstart.serve.admission import DecodeAdmission, DecodeLimits, Refused
from headstart.serve.batching import MicroBatcher, QueueFull, fastest_batch_size
from headstart.serve.guards import BodyGuard, ConnectionLimits
from headstart.serve.page import docs_page, index_page
from headstart.serve.uploads import ImagePreparer, UploadError, prepare_all, read_uploads


class ServedModel(ImagePreparer, Protocol):
    """What the server needs of a model: ``export.runtime.ExportedModel`` (its ``metadata``,
    ``predict_scored`` and a multi-label model's ``thresholds`` are read where present)."""

    @property
    def classes(self) -> Sequence[str]: ...

    @property
    def input_size(self) -> tuple[int, int]: ...

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray: ...


OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/docs", "/openapi.json"})
RETRY_AFTER_S = 1
TITLE, SUMMARY = "headstart serve", "Image classification with a model exported by headstart."


def rss_mb() -> float:
    """This process's resident memory in MiB."""
    return round(psutil.Process(os.getpid()).memory_info().rss / 2**20, 1)


def model_info(model: Any) -> ModelSummary:
    """What ``GET /v1/model`` tells a client (``models.card.ModelSummary``): classes, task,
    preprocessing, test metrics, version; no server paths or library versions."""
    meta = dict(getattr(model, "metadata", {}) or {})
    meta.setdefault("format", getattr(model, "format", None))
    return ModelSummary.of(list(model.classes), model.input_size, meta)


def top_k_predictions(classes: list[str], proba: np.ndarray, k: int) -> list[dict[str, Any]]:
    """The ``k`` most likely labels, most likely first, as ``headstart predict --format json``."""
    return answer(classes, proba, k, decimals=6)["predictions"]


def image_answer(model: ServedModel, proba: np.ndarray, k: int, score: float | None = None) -> dict[str, Any]:
    """One image's answer, shaped as ``headstart predict --format json``'s items: top-k
    ``predictions``, ``labels``, ``unknown`` and, with the model's reject option on, ``score``
    (the model's own, from ``predict_scored``; the top probability where none is given)."""
    reject = (getattr(model, "metadata", None) or {}).get("reject") or {}
    threshold = reject.get("threshold")
    return answer(
        list(model.classes),
        proba,
        min(k, len(model.classes)),
        None if threshold is None else float(threshold),
        score,
        decimals=6,
    )


def model_call(model: ServedModel) -> Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, ...]]:
    """What the batcher runs: ``predict_scored`` ((probabilities, reject scores), so ``unknown``
    agrees with ``headstart predict`` whatever the score kind) where the model has it, else
    ``predict_proba``."""
    return getattr(model, "predict_scored", None) or model.predict_proba


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def _load(model: ServedModel | str | os.PathLike[str], precision: str) -> ServedModel:
    if isinstance(model, (str, os.PathLike)):
        from headstart.export.runtime import load_exported

        return load_exported(Path(model), precision=precision)
    return model


def _tune(model: ServedModel, max_batch: int, tune: bool) -> tuple[int, dict[int, float]]:
    """The batch size to use, measured on this machine (``tune``) or ``max_batch`` as given.

    Either way the model runs a full batch before the server reports ready: the runtime sizes its
    memory for the largest batch now, so memory stays flat under load."""
    height, width = model.input_size
    if tune and max_batch > 1:
        return fastest_batch_size(model.predict_proba, (height, width), max_batch)
    model.predict_proba(np.zeros((max_batch, height, width, 3), dtype=np.uint8))
    return max_batch, {}


class _State:
    """The loaded model and its batcher (set by the app's startup)."""

    model: ServedModel | None = None
    batcher: MicroBatcher | None = None
    admission: DecodeAdmission
    batch_rates: dict[int, float] = {}


def sent_key(request: Request) -> bytes:
    """The key as the client's bytes (X-API-Key, else Bearer): HTTP headers arrive as bytes,
    which Starlette decodes as Latin-1, so encoding back gives exactly what was sent (a UTF-8
    key stays UTF-8)."""
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return given.encode("latin-1")


def _api_key_middleware(api_key: str) -> Callable[[Request, Callable[..., Awaitable[Response]]], Any]:
    expected = api_key.encode("utf-8")

    async def check(request: Request, call_next: Callable[..., Awaitable[Response]]) -> Response:
        if request.url.path in OPEN_PATHS:
            return await call_next(request)
        if not hmac.compare_digest(sent_key(request), expected):
            return _error(
                401,
                "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                **{"WWW-Authenticate": "Bearer"},
            )
        return await call_next(request)

    return check


def check_serve_settings(
    max_batch: int, max_upload_mb: float, precision: str, api_key: str | None = None
) -> None:
    """The server's settings, checked once (by ``create_app``, and by ``headstart serve`` before
    it exports a model): a :class:`ParameterError` naming the first bad one."""
    if api_key is not None and not api_key.strip():
        raise ParameterError("api_key", "is empty (an unset variable?): give a key, or leave the option out")
    if max_batch < 1:
        raise ParameterError("max_batch", "must be at least 1")
    if max_upload_mb <= 0:
        raise ParameterError("max_upload_mb", "must be positive")
    check_choice("precision", precision, INFERENCE_PRECISIONS)


def create_app(
    model: ServedModel | str | os.PathLike[str],
    max_batch: int = 16,
    max_upload_mb: float = 20,
    api_key: str | None = None,
    max_files: int = 64,
    queue_size: int | None = None,
    max_wait_ms: float = 5.0,
    tune_batch: bool = True,
    precision: str = "auto",
    decode_limits: DecodeLimits | None = None,
    allowed_hosts: Sequence[str] | None = None,
    body_timeout_s: float = ConnectionLimits.body_timeout_s,
) -> FastAPI:
    """The server's ASGI app, ready to run with uvicorn or to mount in another app.

    Args:
        model: an ``ExportedModel`` (``headstart.export.runtime.load_exported``) or the path of an
            export folder; a path is loaded at startup, and the model runs one full batch before
            the app takes requests.
        max_batch: most images in one model call; 1 turns micro-batching off.
        max_upload_mb: most megabytes one request may send (all its files together).
        api_key: when set, every ``/v1/`` request must carry it (Bearer or X-API-Key).
        max_files: most files in one request.
        queue_size: most images waiting for the model (default 8 batches, at least 64); more get 503.
        max_wait_ms: how long a batch waits for more images once it has one.
        tune_batch: measure at startup which batch size up to ``max_batch`` this machine runs
            fastest, and batch up to that (``GET /readyz`` tells it); False: always ``max_batch``.
        precision: for a path to an OpenVINO export: ``auto`` (bf16 where the CPU has it natively,
            the numerics of ``headstart predict``'s default engine) or ``fp32`` (exact).
        decode_limits: pixels a request and all requests may decode at once (``serve.admission``).
        allowed_hosts: ``Host`` values accepted, checked before routing (DNS rebinding); None: any.
        body_timeout_s: longest pause inside a request body before the server answers 408.
    """
    check_serve_settings(max_batch, max_upload_mb, precision, api_key)
    state = _State()
    limit = int(max_upload_mb * 2**20)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.model = await asyncio.to_thread(_load, model, precision)
        batch, state.batch_rates = await asyncio.to_thread(_tune, state.model, max_batch, tune_batch)
        queue = queue_size or max(64, 8 * max_batch)
        state.admission = DecodeAdmission(decode_limits or DecodeLimits())
        state.batcher = app.state.batcher = MicroBatcher(
            model_call(state.model), batch, max_wait_ms / 1000, queue
        )
        state.batcher.start()
        try:
            yield
        finally:
            await state.batcher.stop()
            state.admission.close()

    app = FastAPI(title=TITLE, summary=SUMMARY, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.serve = state
    _add_middleware(app, api_key, body_timeout_s, allowed_hosts)
    _add_routes(app, state, limit, max_files, needs_key=bool(api_key))
    return app


def _add_middleware(
    app: FastAPI, api_key: str | None, body_timeout_s: float, allowed_hosts: Sequence[str] | None
) -> None:
    """Outermost first: the Host check (before routing), the body timeout and security headers,
    then the API key (each ``add_middleware`` wraps the ones added before it)."""
    if api_key:
        app.middleware("http")(_api_key_middleware(api_key))
    app.add_middleware(BodyGuard, body_timeout_s=body_timeout_s)  # type: ignore[arg-type]
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)


def _add_routes(app: FastAPI, state: _State, limit: int, max_files: int, needs_key: bool) -> None:
    @app.get("/healthz", summary="Alive (and the process's memory)")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "rss_mb": rss_mb()}

    @app.get("/readyz", summary="The model is loaded", response_model=None)
    async def readyz() -> JSONResponse | dict[str, object]:
        if state.batcher is None:
            return _error(503, "the model is still loading")
        return {
            "status": "ready",
            "waiting": state.batcher.waiting,
            "batch_size": state.batcher.max_batch,
            "images_per_second_by_batch_size": {
                str(k): round(v, 1) for k, v in sorted(state.batch_rates.items())
            },
        }

    @app.get(
        "/v1/model",
        summary="Classes, task, preprocessing, test metrics, version",
        response_model=ModelSummary,
        responses={503: {"description": "the model is still loading"}},
    )
    async def get_model() -> Any:
        if state.model is None:
            return _error(503, "the model is still loading")
        return model_info(state.model)

    @app.post(
        "/v1/predict",
        summary="Top-k labels of each image (multipart field 'files', repeated, or one raw image body)",
        response_model=None,
    )
    async def predict(
        request: Request, top_k: int = Query(3, ge=1, le=1000)
    ) -> JSONResponse | list[dict[str, Any]]:
        return await _predict(request, state, top_k, limit, max_files)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return index_page(needs_key=needs_key)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> str:
        return docs_page(app.openapi())


async def _predict(
    request: Request, state: _State, top_k: int, limit: int, max_files: int
) -> JSONResponse | list[dict[str, Any]]:
    """One request: read, decode and prepare its images, queue them, shape the answer."""
    model = state.model  # set before the batcher
    if state.batcher is None or model is None:
        return _error(503, "the model is still loading", **{"Retry-After": str(RETRY_AFTER_S)})
    try:
        uploads = await read_uploads(request, limit, max_files)
    except UploadError as e:
        return _error(e.status, str(e))
    try:
        prepared = await prepare_all(model, uploads, state.admission)
    except Refused as e:
        retry = {"Retry-After": str(RETRY_AFTER_S)} if e.status == 503 else {}
        return _error(e.status, str(e), **retry)
    good = [p for p in prepared if not isinstance(p, BadImageError)]
    try:
        probabilities = iter(await state.batcher.predict(good)) if good else iter([])
    except QueueFull as e:
        return _error(503, str(e), **{"Retry-After": str(RETRY_AFTER_S)})
    results: list[dict[str, Any]] = []
    thresholds = getattr(model, "thresholds", None)  # a multi-label model's
    for upload, item in zip(uploads, prepared):
        if isinstance(item, BadImageError):
            results.append({"path": upload.name, "predictions": [], "error": str(item)})
            continue
        output = next(probabilities)
        proba, score = output if isinstance(output, tuple) else (output, None)
        if thresholds is not None:
            results.append(multilabel_answer(upload.name, proba, model.classes, thresholds, top_k))
        else:
            score = None if score is None else float(score)
            results.append({"path": upload.name, **image_answer(model, proba, top_k, score)})
    if not good:
        reasons = "; ".join(f"{r['path']}: {r['error']}" for r in results)
        return JSONResponse({"error": f"no readable image: {reasons}", "results": results}, status_code=422)
    return results
