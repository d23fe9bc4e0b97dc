"""``RUN_DIR/report.html`` of a multi-label run: the summary (mAP, F1, subset accuracy), per-class
AP with the thresholds, the label co-occurrence matrix, and the worst test images.

Built, like the single-label report, from the run folder's files only (``metrics.json``,
``test_predictions.csv`` with each image's true and predicted labels, ``test_probabilities.npy``),
so ``headstart report RUN_DIR`` rebuilds it. Every name goes through ``esc``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.io import read_rows, write_text
from headstart.evaluation.multilabel import binary_log_loss
from headstart.reporting.html import esc, page, thumbnail_uri

PREDICTIONS_CSV = "test_predictions.csv"
PROBABILITIES_NPY = "test_probabilities.npy"
REPORT_NAME = "report.html"
LABEL_SEPARATOR = ";"
MAX_WORST = 36


def _num(x: object, fmt: str = "{:.3f}") -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else fmt.format(x)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _summary_section(metrics: dict[str, Any]) -> str:
    key = "test" if "test" in metrics else metrics.get("evaluated_on", "val")
    s = metrics.get(key) or {}
    cards = [
        ("mAP", s.get("mAP")),
        ("macro F1", s.get("macro_f1")),
        ("micro F1", s.get("micro_f1")),
        ("subset accuracy", s.get("subset_accuracy")),
    ]
    data = metrics.get("data") or {}
    return (
        f"<h1>Multi-label {esc(key)} results: {esc(Path(str(data.get('source', ''))).name)}</h1>"
        + "<p>"
        + " &middot; ".join(f"<b>{esc(name)}</b> {_num(v)}" for name, v in cards)
        + f" on {esc(s.get('n', 0))} images ({esc(metrics.get('evaluated_on', key))}); "
        f"{len(metrics.get('classes', []))} labels, backbone {esc((metrics.get('backbone') or {}).get('name', '?'))}, "
        f"strategy {esc(metrics.get('strategy', '?'))}.</p>"
        "<p>A label is predicted when its probability reaches its threshold (chosen on the validation "
        "split to maximise the class's F1); mAP needs no threshold.</p>"
    )


def _per_class_section(metrics: dict[str, Any]) -> str:
    rows = []
    per_class = metrics.get("per_class") or {}
    for name in sorted(
        per_class, key=lambda n: (per_class[n].get("ap") is None, per_class[n].get("ap") or 0)
    ):
        r = per_class[name]
        rows.append(
            [
                esc(name),
                _num(r.get("ap")),
                _num(r.get("threshold")),
                _num(r.get("precision")),
                _num(r.get("recall")),
                _num(r.get("f1")),
                esc(r.get("support", 0)),
            ]
        )
    return '<h2 id="per-class">Per-class average precision (lowest first)</h2>' + _table(
        ["label", "AP", "threshold", "precision", "recall", "F1", "support"], rows
    )


def _co_occurrence_section(metrics: dict[str, Any]) -> str:
    matrix = np.asarray(metrics.get("co_occurrence") or [], dtype=float)
    classes = metrics.get("classes") or []
    if matrix.size == 0:
        return ""
    top = float(matrix.max()) or 1.0
    rows = []
    for i, name in enumerate(classes):
        cells = [esc(name)]
        for j in range(len(classes)):
            shade = 0.85 * matrix[i, j] / top
            cells.append(
                f'<span style="background:rgba(40,90,200,{shade:.2f});padding:0 4px">{int(matrix[i, j])}</span>'
            )
        rows.append(cells)
    return (
        '<h2 id="co-occurrence">Label co-occurrence (evaluated images)</h2>'
        "<p>Images carrying both labels; the diagonal counts each label's images.</p>"
        + _table(["", *classes], rows)
    )


def _worst_section(run_dir: Path, classes: list[str]) -> str:
    rows = read_rows(run_dir / PREDICTIONS_CSV)
    npy = run_dir / PROBABILITIES_NPY
    if not rows or not npy.is_file():
        return ""
    proba = np.load(npy, allow_pickle=False)
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros_like(proba)
    for r, row in enumerate(rows):
        for name in filter(None, row["labels"].split(LABEL_SEPARATOR)):
            if name in index:
                y[r, index[name]] = 1
    loss = np.array([binary_log_loss(y[i : i + 1], proba[i : i + 1]) for i in range(len(rows))])
    wrong = [i for i in np.argsort(-loss) if rows[i]["labels"] != rows[i]["predicted"]][:MAX_WORST]
    tiles = []
    for i in wrong:
        uri = thumbnail_uri(rows[i]["path"])
        picture = f'<img alt="" src="{uri}">' if uri else '<div class="missing">image unavailable</div>'
        caption = (
            f"true <b>{esc(rows[i]['labels'] or '(none)')}</b><br>"
            f'<span class="bad">predicted <b>{esc(rows[i]["predicted"] or "(none)")}</b></span><br>'
            f'<span class="muted">loss {loss[i]:.2f} &middot; {esc(Path(rows[i]["path"]).name)}</span>'
        )
        tiles.append(
            f'<figure class="tile wrong" title="{esc(rows[i]["path"])}">{picture}<figcaption>{caption}</figcaption></figure>'
        )
    n_wrong = sum(r["labels"] != r["predicted"] for r in rows)
    return (
        '<h2 id="errors">Worst examples</h2>'
        f"<p>{n_wrong} of {len(rows)} images have a predicted label set other than their own; the "
        f"{len(tiles)} with the highest binary log-loss shown.</p>"
        f'<div class="grid">{"".join(tiles)}</div>'
    )


def build_multilabel_report(run_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Write ``RUN_DIR/report.html`` for a multi-label run or evaluation (``metrics``: its metrics.json)."""
    run_dir = Path(run_dir)
    classes = list(metrics.get("classes") or [])
    body = "".join(
        [
            _summary_section(metrics),
            '<nav><a href="#per-class">Per-class AP</a><a href="#co-occurrence">Co-occurrence</a>'
            '<a href="#errors">Worst examples</a></nav>',
            _per_class_section(metrics),
            _co_occurrence_section(metrics),
            _worst_section(run_dir, classes),
        ]
    )
    name = Path(str((metrics.get("data") or {}).get("source", "")) or run_dir).name
    return write_text(
        run_dir / REPORT_NAME, page(f"headstart report: {name}", body), errors="backslashreplace"
    )
