"""The review app: one page, a small JSON API, the run's photos; bound to 127.0.0.1 by the CLI.

The queues are computed once (``queues.build_queues``) and served a page at a time, so the first
page of a 10,000-image run costs what one page costs. A photo is asked for by the path the run
records; any path the run does not hold is a 404, so nothing but the run's own images (as cached
JPEGs) can be fetched. Decisions go to ``RUN/corrections.csv`` at once (``decisions``).
"""

from __future__ import annotations

import string
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel

from headstart.core.errors import BadImageError
from headstart.review.decisions import DecisionBook
from headstart.review.page import review_page
from headstart.review.photos import Size, photo
from headstart.review.queues import QUEUES, Queue, QueueItem, QueueSpec, build_queues
from headstart.review.run import Log, ReviewRun

RESERVED_KEYS = frozenset("xknpu")  # exclude, keep, next, previous, undo
PAGE_SIZE = 50
NEIGHBOURS = 6
TOP_K = 5


class DecisionIn(BaseModel):
    """A decision the page sends: ``relabel`` (to ``label``), ``exclude``, ``keep`` or ``clear``."""

    path: str
    choice: Literal["relabel", "exclude", "keep", "clear"]
    label: str = ""


def class_keys(classes: list[str]) -> list[str]:
    """The key of each class: 1-9, 0, then the letters the other actions do not use ('' after)."""
    keys = [*"1234567890", *(c for c in string.ascii_lowercase if c not in RESERVED_KEYS)]
    return [keys[i] if i < len(keys) else "" for i in range(len(classes))]


@dataclass
class ReviewState:
    """What the app serves: the run, its queues, the decisions so far, the train rows' features."""

    run: ReviewRun
    queues: dict[str, Queue]  # those computed so far
    book: DecisionBook
    train_rows: np.ndarray
    train_unit: np.ndarray

    @classmethod
    def create(cls, run: ReviewRun, queues: list[Queue]) -> ReviewState:
        train = np.array([image.split == "train" for image in run.images], dtype=bool)
        rows = np.flatnonzero(train & run.outputs.readable)
        return cls(
            run, {q.name: q for q in queues}, DecisionBook(run.run_dir), rows, run.outputs.unit[rows].copy()
        )

    def compute_later(self, specs: list[QueueSpec], log: Log | None = None) -> threading.Thread:
        """Compute ``specs`` in a thread; each queue is served once it is done."""

        def work() -> None:
            for spec in specs:
                t = time.perf_counter()
                queue = spec.make(self.run)
                self.queues[spec.name] = queue  # one dict assignment: atomic for readers
                if log is not None:
                    log(
                        f"queue ready: {queue.title.lower()} {len(queue.items)} ({time.perf_counter() - t:.1f}s)"
                    )

        thread = threading.Thread(target=work, name="review-queues", daemon=True)
        thread.start()
        return thread

    def item(self, entry: QueueItem) -> dict[str, Any]:
        """One image as a queue page lists it."""
        image = self.run.images[entry.index]
        proba = self.run.outputs.proba[entry.index]
        readable = bool(np.isfinite(proba).all())
        top = int(np.nan_to_num(proba).argmax())
        decision = self.book.get(image.path)
        return {
            "index": image.index,
            "path": image.path,
            "label": image.label,
            "split": image.split,
            "predicted": self.run.classes[top] if readable else None,
            "probability": round(float(proba[top]), 4) if readable else None,
            "reason": entry.reason,
            "suggested": entry.suggested,
            "decision": decision.shown_as(image.label) if decision else None,
            "decided_label": decision.label if decision else None,
        }

    def details(self, index: int) -> dict[str, Any]:
        """One image with the model's top-k, its reject score and its nearest training images."""
        out = self.run.outputs
        proba = out.proba[index]
        top: list[dict[str, Any]] = []
        if np.isfinite(proba).all():
            order = np.argsort(-proba)[:TOP_K]
            top = [{"label": self.run.classes[j], "probability": round(float(proba[j]), 4)} for j in order]
        score = None if out.scores is None or not np.isfinite(out.scores[index]) else float(out.scores[index])
        return {
            "index": index,
            "top_k": top,
            "score": score,
            "threshold": out.threshold,
            "neighbours": self.neighbours(index),
        }

    def neighbours(self, index: int) -> list[dict[str, Any]]:
        """The training images nearest ``index`` by cosine of the model's features (itself left out)."""
        unit = self.run.outputs.unit[index]
        if not len(self.train_rows) or not np.isfinite(unit).all():
            return []
        sims = self.train_unit @ unit
        k = min(NEIGHBOURS + 1, len(sims))
        best = np.argpartition(-sims, k - 1)[:k]
        best = best[np.argsort(-sims[best], kind="stable")]
        found = [(int(self.train_rows[j]), float(sims[j])) for j in best if self.train_rows[j] != index]
        return [
            {"path": self.run.images[i].path, "label": self.run.images[i].label, "cosine": round(s, 4)}
            for i, s in found[:NEIGHBOURS]
        ]

    def queue_info(self, spec: QueueSpec) -> dict[str, Any]:
        """A queue as the page lists it (``computing`` until it is done)."""
        queue = self.queues.get(spec.name)
        if queue is None:
            return {
                "name": spec.name,
                "title": spec.title,
                "about": "computing...",
                "count": None,
                "computing": True,
            }
        return {
            "name": queue.name,
            "title": queue.title,
            "about": queue.about,
            "count": len(queue.items),
            "computing": False,
        }

    def meta(self) -> dict[str, Any]:
        classes = self.run.classes
        return {
            "run": str(self.run.run_dir),
            "data": str(self.run.root),
            "images": len(self.run.images),
            "classes": [{"name": c, "key": k} for c, k in zip(classes, class_keys(classes))],
            "queues": [self.queue_info(spec) for spec in QUEUES],
            "decided": len(self.book),
            "corrections": str(self.book.path),
            "page_size": PAGE_SIZE,
        }


def create_review_app(run: ReviewRun, background: bool = False, log: Log | None = None) -> FastAPI:
    """The review app over ``run``.

    Args:
        run: the run (``load_review_run``).
        background: compute the slow queues (the cross-validated label check) in a thread, so the
            app serves the others at once; False: every queue before this returns.
        log: where the background thread reports each queue it finished.
    """
    queues, _ = build_queues(run, slow=not background)
    state = ReviewState.create(run, queues)
    if background:
        state.compute_later([spec for spec in QUEUES if spec.name not in state.queues], log)
    app = FastAPI(title="headstart review", docs_url=None, redoc_url=None)
    app.state.review = state
    _add_routes(app, state)
    return app


def _add_routes(app: FastAPI, state: ReviewState) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return review_page(state.meta())

    @app.get("/api/meta")
    def meta() -> dict[str, Any]:
        return state.meta()

    @app.get("/api/queue/{name}")
    def queue(
        name: str, page: int = Query(0, ge=0), size: int = Query(PAGE_SIZE, ge=1, le=500)
    ) -> dict[str, Any]:
        chosen = state.queues.get(name)
        if chosen is None:
            known = [spec.name for spec in QUEUES]
            if name in known:
                raise HTTPException(503, f"the queue {name!r} is still being computed", {"Retry-After": "2"})
            raise HTTPException(404, f"no queue {name!r}: {', '.join(known)}")
        entries = chosen.items[page * size : (page + 1) * size]
        return {
            "name": name,
            "page": page,
            "size": size,
            "total": len(chosen.items),
            "items": [state.item(e) for e in entries],
        }

    @app.get("/api/image/{index}")
    def image(index: int) -> dict[str, Any]:
        if not 0 <= index < len(state.run.images):
            raise HTTPException(404, "no such image in this run")
        return state.details(index)

    @app.get("/photo/{size}")
    def photo_file(size: Size, path: str) -> FileResponse:
        found = state.run.find(path)
        if found is None:
            raise HTTPException(404, "not an image of this run")
        try:
            return FileResponse(photo(state.run.run_dir, found, size), media_type="image/jpeg")
        except (BadImageError, OSError) as e:
            raise HTTPException(422, f"cannot show {path}: {e}") from e

    @app.post("/api/decision")
    def decide(body: DecisionIn) -> dict[str, Any]:
        found = state.run.find(body.path)
        if found is None:
            raise HTTPException(404, "not an image of this run")
        if body.choice == "relabel" and body.label not in state.run.classes:
            raise HTTPException(422, f"unknown class {body.label!r}")
        decision = state.book.decide(found.path, body.choice, body.label, found.label)
        return {
            "path": found.path,
            "decision": decision.shown_as(found.label) if decision else None,
            "decided_label": decision.label if decision else None,
            "decided": len(state.book),
        }
