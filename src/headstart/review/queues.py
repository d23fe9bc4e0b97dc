"""The review queues: which of a run's images are worth a look, most worth it first.

Computed once when the app starts (each a list of image indices with the reason it is there),
then served a page at a time:

- ``label_issues``: likely wrong labels, the doctor's confident learning (``doctor.labels``:
  out-of-fold probabilities from the run's cached features, so a training image is judged by a
  model that never saw it), with the label it suggests; least self-confident first.
- ``errors``: validation and test images the model gets wrong, most confident first (a
  confident error is often a wrong label; a hesitant one a hard image).
- ``duplicates``: the run's duplicate groups (its ``duplicate_groups.csv``; near copies by
  feature cosine where the run has none), groups with conflicting labels first.
- ``unsure``: images the model turns down (its reject option) or gives under
  ``UNSURE_PROBABILITY``, least sure first.
- ``all``: every image in the run's order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from headstart.core.io import read_rows
from headstart.doctor.duplicates import NEAR_COSINE, find_duplicates
from headstart.doctor.labels import LABEL_NEIGHBOURS, find_label_issues, label_proba
from headstart.review.run import ReviewRun

UNSURE_PROBABILITY = 0.6  # a top probability below this puts an image in the unsure queue
DUPLICATES_FILE = "duplicate_groups.csv"


@dataclass(frozen=True)
class QueueItem:
    """An image in a queue: why it is there, and the label the evidence points to (if any)."""

    index: int
    reason: str
    suggested: str | None = None


@dataclass(frozen=True)
class Queue:
    name: str
    title: str
    about: str
    items: list[QueueItem]


def label_issue_queue(run: ReviewRun, folds: int = 5, seed: int = 0) -> Queue:
    """The doctor's label check on the run's features: the same queue `headstart doctor` gives."""
    title, about = (
        "Likely wrong labels",
        "the doctor's check: cleanlab on out-of-fold and neighbour probabilities",
    )
    y = run.labels()
    rows = np.flatnonzero(run.outputs.readable & (y >= 0))
    k = len(run.classes)
    proba = None
    if len(rows):
        features = run.outputs.features[rows]
        _, nn_idx, nn_sim, _ = find_duplicates([None] * len(rows), features, neighbours=LABEL_NEIGHBOURS)
        proba = label_proba(features, y[rows], k, nn_idx, nn_sim, folds, seed)
    if proba is None:
        return Queue("label_issues", title, about + ": not possible (a class with under two images)", [])
    order, issue, suggested = find_label_issues(proba, y[rows])
    items = []
    for i in order:
        if not issue[i]:
            continue
        given, best = int(y[rows[i]]), int(suggested[i])
        reason = (
            f"out-of-fold probability {proba[i, given]:.2f} for '{run.classes[given]}', "
            f"{proba[i, best]:.2f} for '{run.classes[best]}'"
        )
        items.append(QueueItem(int(rows[i]), reason, run.classes[best]))
    return Queue("label_issues", title, about, items)


def error_queue(run: ReviewRun) -> Queue:
    """Validation and test images whose predicted class is not their label, surest first."""
    y = run.labels()
    proba = run.outputs.proba
    held_out = np.array([image.split in ("val", "test") for image in run.images], dtype=bool)
    rows = np.flatnonzero(held_out & run.outputs.readable)
    predicted = proba[rows].argmax(axis=1) if len(rows) else np.zeros(0, dtype=np.int64)
    wrong = rows[predicted != y[rows]]
    wrong = wrong[np.argsort(-proba[wrong].max(axis=1), kind="stable")]
    items = []
    for i in wrong:
        p = int(proba[i].argmax())
        reason = f"{run.images[i].split}: the model says '{run.classes[p]}' ({proba[i, p]:.2f})"
        items.append(QueueItem(int(i), reason, run.classes[p]))
    return Queue("errors", "Confident errors", "validation and test images the model gets wrong", items)


def _saved_groups(run: ReviewRun) -> list[list[int]] | None:
    """The run's own duplicate groups (None when it wrote none: its data check was off)."""
    path = run.run_dir / DUPLICATES_FILE
    if not path.is_file():
        return None
    groups: dict[str, list[int]] = {}
    for row in read_rows(path):
        image = run.find(row.get("path", ""))
        if image is not None:
            groups.setdefault(row.get("group", ""), []).append(image.index)
    return [members for members in groups.values() if len(members) > 1]


def _feature_groups(run: ReviewRun) -> list[list[int]]:
    """Near copies by feature cosine (>= ``NEAR_COSINE``), for a run without its own groups."""
    rows = np.flatnonzero(run.outputs.readable)
    if len(rows) < 2:
        return []
    groups, _, _, _ = find_duplicates(
        [None] * len(rows), run.outputs.unit[rows], None, NEAR_COSINE, neighbours=0
    )
    return [[int(rows[i]) for i in g.members] for g in groups]


def duplicate_queue(run: ReviewRun) -> Queue:
    """Every member of every duplicate group; groups with conflicting labels first, then groups
    spread over more than one split, then the rest."""
    saved = _saved_groups(run)
    groups = saved if saved is not None else _feature_groups(run)
    about = "the run's duplicate groups" if saved is not None else "near copies by feature cosine"

    def rank(members: Sequence[int]) -> int:
        labels = {run.images[i].label for i in members}
        splits = {run.images[i].split for i in members}
        return 0 if len(labels) > 1 else 1 if len(splits) > 1 else 2

    items = []
    for n, members in enumerate(sorted(groups, key=rank), start=1):
        kind = ("conflicting labels", "across splits", "same label")[rank(members)]
        for i in members:
            others = [run.images[j] for j in members if j != i]
            shown = ", ".join(f"{o.path} ({o.label})" for o in others[:3])
            more = f" and {len(others) - 3} more" if len(others) > 3 else ""
            items.append(QueueItem(i, f"group {n}, {kind}: same picture as {shown}{more}"))
    return Queue("duplicates", "Duplicates and conflicts", about, items)


def unsure_queue(run: ReviewRun) -> Queue:
    """Images the model turns down (score at or below its threshold) or gives under
    ``UNSURE_PROBABILITY``, least sure first."""
    out = run.outputs
    ok = out.readable
    top = np.where(ok, np.nan_to_num(out.proba).max(axis=1), np.inf)
    sure = np.where(ok, out.scores, np.inf) if out.scores is not None else top
    turned_down = (sure <= out.threshold) if out.threshold is not None else np.zeros(len(top), dtype=bool)
    rows = np.flatnonzero(ok & (turned_down | (top < UNSURE_PROBABILITY)))
    rows = rows[np.argsort(sure[rows], kind="stable")]
    items = []
    for i in rows:
        p = int(out.proba[i].argmax())
        said = f"'{run.classes[p]}' at {out.proba[i, p]:.2f}"
        why = f"turned down (score {sure[i]:.2f} <= {out.threshold:.2f}): " if turned_down[i] else "unsure: "
        items.append(QueueItem(int(i), why + said, run.classes[p]))
    about = "turned down by the reject option, or a top probability under 0.6"
    return Queue("unsure", "Turned down or unsure", about, items)


def all_queue(run: ReviewRun) -> Queue:
    return Queue("all", "All images", "every image of the run", [QueueItem(i.index, "") for i in run.images])


@dataclass(frozen=True)
class QueueSpec:
    """A queue the page lists: ``slow`` ones (the cross-validation) may be computed while the app
    already serves the others."""

    name: str
    title: str
    make: Callable[[ReviewRun], Queue]
    slow: bool = False


QUEUES = (
    QueueSpec("label_issues", "Likely wrong labels", label_issue_queue, slow=True),
    QueueSpec("errors", "Confident errors", error_queue),
    QueueSpec("duplicates", "Duplicates and conflicts", duplicate_queue),
    QueueSpec("unsure", "Turned down or unsure", unsure_queue),
    QueueSpec("all", "All images", all_queue),
)


def build_queues(run: ReviewRun, slow: bool = True) -> tuple[list[Queue], dict[str, float]]:
    """The queues (the slow ones too with ``slow``), in the page's order, and the seconds each took."""
    seconds: dict[str, float] = {}
    queues = []
    for spec in QUEUES:
        if spec.slow and not slow:
            continue
        t = time.perf_counter()
        queues.append(spec.make(run))
        seconds[spec.name] = time.perf_counter() - t
    return queues, seconds
