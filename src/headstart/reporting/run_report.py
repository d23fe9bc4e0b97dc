"""``RUN_DIR/report.html``: one self-contained page (images embedded, CSS inline, no network).

A run first saves what the report needs next to its other files, then the page is assembled
from those files only, so ``headstart report RUN_DIR`` can rebuild it without retraining:

- ``metrics.json``: classes, summary, per-class scores, confusion matrix, split counts;
- ``test_predictions.csv`` (path,label,predicted,probability) and ``test_probabilities.npy``
  (float32, one row per CSV row, one column per class in ``metrics.json`` order; plain .npy);
- ``split.csv`` / ``skipped.csv`` (class counts, sample grid, skipped files);
- ``map.csv`` (path,label,split,x,y) and ``map.json`` (method, points, seconds): the 2-D map;
- optional: ``history.csv`` (fine-tuning curves), ``doctor.json`` (data doctor findings).

The images in the sample grid and the misclassified list are read from the user's files
(never written); one that cannot be read any more shows as a grey "unavailable" tile.

The page is ``templates/report.html`` on the shared shell (``reporting.html``). Its sections are
HTML built here, where every name from a file or class goes through ``esc``; the numbers come
from ``headstart.evaluation`` (calibration, confusion). A new map of a run (``report --points
all``) needs features, hence a model: the estimator computes them and stores the map with
``save_map`` (``map_inputs`` lists the images); this module never loads a model.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup

from headstart.core.errors import HeadstartError
from headstart.core.io import atomic_path, read_rows, write_bytes, write_json, write_rows
from headstart.evaluation.calibration import CALIBRATION_BINS, apply_temperature, expected_calibration_error
from headstart.evaluation.confusion import confused_pairs
from headstart.reporting import plots
from headstart.reporting.html import esc, thumbnail_uri, write_page
from headstart.reporting.maps import embed_features
from headstart.reporting.multilabel import build_multilabel_report
from headstart.reporting.unknown import error_extras, unknown_section

REPORT_NAME = "report.html"
PREDICTIONS_CSV = "test_predictions.csv"
PROBABILITIES_NPY = "test_probabilities.npy"
MAP_CSV = "map.csv"
MAP_JSON = "map.json"
MAX_MISCLASSIFIED = 48
MAX_SAMPLE_THUMBS = 600  # sample grid budget across all classes
logger = logging.getLogger(__name__)
MAX_MAP_POINTS = 2000  # the run report maps a seeded sample beyond this (embed maps everything):
# t-SNE of 5,000 points took 55 s on 2 cores, a third of the default time budget


# --------------------------------------------------------------------------- saving the inputs


def save_predictions(
    run_dir: Path, paths: Sequence[str], y: np.ndarray, proba: np.ndarray, classes: Sequence[str]
) -> None:
    """The evaluated images with their labels, and the full probabilities for calibration/top-k."""
    rows = []
    for p, t, pr in zip(paths, y, proba):  # absolute paths: `headstart report` may run from elsewhere
        rows.append([os.path.abspath(p), classes[int(t)], classes[int(pr.argmax())], f"{pr.max():.4f}"])
    write_rows(run_dir / PREDICTIONS_CSV, ["path", "label", "predicted", "probability"], rows)
    with atomic_path(run_dir / PROBABILITIES_NPY) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(proba, dtype=np.float32), allow_pickle=False)


def save_map(
    run_dir: Path,
    features: np.ndarray,
    paths: Sequence[str],
    labels: Sequence[str],
    splits: Sequence[str],
    method: str,
    points: str,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Compute (or fetch from the cache) the 2-D map and store it in the run folder.

    Args:
        run_dir: the run folder (``map.csv`` and ``map.json`` are written there).
        features: one feature row per image.
        paths, labels, splits: per image, in ``features`` order.
        method: ``tsne`` or ``pca``.
        points: what the rows are (``test`` or ``all``); a ``test`` map of more than
            MAX_MAP_POINTS images maps a seeded sample.
        seed: seed of the map and of the sample.
        cache_dir: feature cache folder (maps are cached under ``CACHE/maps``).
    """
    n_total = len(features)
    idx = np.arange(n_total)
    if points == "test" and n_total > MAX_MAP_POINTS:
        idx = np.sort(np.random.default_rng(seed).choice(n_total, MAX_MAP_POINTS, replace=False))
    fmap = embed_features(features[idx], method, seed, cache_dir)
    write_rows(
        run_dir / MAP_CSV,
        ["path", "label", "split", "x", "y"],
        [
            [os.path.abspath(paths[i]), labels[i], splits[i], f"{x:.4f}", f"{y:.4f}"]
            for i, (x, y) in zip(idx.tolist(), fmap.xy)
        ],
    )
    info = {
        "method": fmap.method,
        "points": points,
        "n": int(len(idx)),
        "n_total": int(n_total),
        "seconds": round(fmap.seconds, 3),
        "from_cache": fmap.cached,
    }
    write_json(run_dir / MAP_JSON, info)
    return info


def write_run_report(
    run_dir: Path,
    metrics: dict[str, Any],
    test: Mapping[str, Any],
    features: np.ndarray | None,
    method: str = "tsne",
    seed: int = 0,
    cache_dir: Path | None = None,
) -> float:
    """What ``train``/``evaluate`` call at the end: save the report's inputs, build the page.

    ``test`` holds ``paths``, ``y`` (class indices) and ``proba``. A failure here is logged and
    never loses the run (the model and metrics are already saved). Returns the seconds spent.
    """
    t0 = time.perf_counter()
    try:
        classes = metrics["classes"]
        save_predictions(run_dir, test["paths"], np.asarray(test["y"]), np.asarray(test["proba"]), classes)
        if method != "none" and features is not None:
            labels = [classes[int(t)] for t in test["y"]]
            info = save_map(
                run_dir,
                features,
                test["paths"],
                labels,
                ["test"] * len(labels),
                method,
                "test",
                seed,
                cache_dir,
            )
            logger.info(
                f"feature map: {info['method']} of {info['n']} test images in {info['seconds']:.1f}s"
                + (" (cached)" if info["from_cache"] else "")
            )
        else:
            for name in (MAP_CSV, MAP_JSON):
                (run_dir / name).unlink(missing_ok=True)
        path = build_report(run_dir, metrics)
        logger.info(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f}s)")
    except Exception as e:  # the report must never cost the user a trained model
        logger.info(
            f"warning: the report could not be written ({type(e).__name__}: {e}); "
            f"try `headstart report {run_dir}`",
            exc_info=True,  # the traceback goes to log.txt only
        )
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- reading the run


def _read_csv(path: Path) -> list[dict[str, str]]:
    """A CSV of the run as written (non-UTF-8 file names kept, formula protection removed)."""
    return read_rows(path)


def _resolve(path: str, root: str | None) -> str:
    """split.csv paths are relative to the data root; older prediction files to the working folder."""
    p = Path(path)
    if p.is_absolute() or not root or not (Path(root) / p).exists():
        return str(p)
    return str(Path(root) / p)


@dataclass
class LoadedRun:
    """A run folder's files, read once, as the report's sections use them."""

    run_dir: Path
    metrics: dict[str, Any]  # metrics.json as written by the run
    classes: list[str]
    predictions: list[dict[str, str]]  # test_predictions.csv rows (paths resolved)
    proba: np.ndarray | None  # test_probabilities.npy, when it matches the predictions
    split_rows: list[dict[str, str]]  # split.csv rows (paths resolved)
    skipped: list[dict[str, str]]  # skipped.csv rows
    history: list[dict[str, float]]  # history.csv rows (fine-tuning)
    map_rows: list[dict[str, str]]  # map.csv rows
    map_info: dict[str, Any]  # map.json
    doctor: dict[str, Any] | None  # doctor.json, when the folder has one


def load_run(run_dir: Path, metrics: dict[str, Any] | None = None) -> LoadedRun:
    """Everything the page shows, from the run folder's files."""
    run_dir = Path(run_dir)
    if metrics is None:
        if not (run_dir / "metrics.json").is_file():
            raise HeadstartError(
                f"no metrics.json in {run_dir}: give a run folder written by `headstart train` or `evaluate`"
            )
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    classes = list(metrics["classes"])
    root = (metrics.get("data") or {}).get("source")
    predictions = _read_csv(run_dir / PREDICTIONS_CSV)
    for row in predictions:
        row["path"] = _resolve(row["path"], root)
    proba = None
    if (run_dir / PROBABILITIES_NPY).is_file():
        proba = np.load(run_dir / PROBABILITIES_NPY, allow_pickle=False)
        if proba.shape != (len(predictions), len(classes)):
            proba = None  # stale file from another run: the page falls back to the CSV
    split_rows = _read_csv(run_dir / "split.csv")
    for row in split_rows:
        row["path"] = _resolve(row["path"], root)
    history = []
    for row in _read_csv(run_dir / "history.csv"):
        history.append({k: _float(v) for k, v in row.items() if k})
    map_rows = _read_csv(run_dir / MAP_CSV)
    map_info = (
        json.loads((run_dir / MAP_JSON).read_text(encoding="utf-8"))
        if map_rows and (run_dir / MAP_JSON).is_file()
        else {}
    )
    doctor = None
    if (run_dir / "doctor.json").is_file():
        try:
            doctor = json.loads((run_dir / "doctor.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doctor = None
    return LoadedRun(
        run_dir=run_dir,
        metrics=metrics,
        classes=classes,
        predictions=predictions,
        proba=proba,
        split_rows=split_rows,
        skipped=_read_csv(run_dir / "skipped.csv"),
        history=history,
        map_rows=map_rows,
        map_info=map_info,
        doctor=doctor,
    )


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else float("nan")
    except ValueError:
        return float("nan")


# --------------------------------------------------------------------------- html pieces


def _png_tag(png: bytes, alt: str, cls: str = "figure") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{cls}" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def _tile(path: str, caption_html: str, cls: str = "") -> str:
    uri = thumbnail_uri(path)
    name = Path(path).name
    picture = (
        f'<img alt="{esc(name)}" src="{uri}">' if uri else '<div class="missing">image unavailable</div>'
    )
    return f'<figure class="tile {cls}" title="{esc(path)}">{picture}<figcaption>{caption_html}</figcaption></figure>'


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = (), tall: bool = False
) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f'<div class="scroll{" tall" if tall else ""}"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _pct(x: object) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.1%}"


def _class_row(name: str, pc: dict[str, Any]) -> list[str]:
    """One row of the per-class table (a class without test images: dashes)."""
    support = pc.get("support", 0)
    cell = (lambda v: _pct(v)) if support else (lambda v: "–")
    return [
        esc(name),
        cell(pc.get("precision")),
        cell(pc.get("recall")),
        _interval(pc.get("accuracy_ci95")) if support else "–",
        cell(pc.get("f1")),
        f"{support:,}",
    ]


def _interval(ci: Any) -> str:
    """A 95% interval ``[low, high]`` as ``low–high`` (runs written before intervals: a dash)."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return "–"
    return f"{_pct(ci[0])}–{_pct(ci[1])}"


# --------------------------------------------------------------------------- sections


def _summary(run: LoadedRun) -> tuple[str, dict[str, Any], str]:
    m = run.metrics
    key = "test" if "test" in m else m.get("evaluated_on", "val")
    return key, m.get(key) or {}, m.get("evaluated_on", key)


def _header(run: LoadedRun) -> str:
    m = run.metrics
    key, s, evaluated_on = _summary(run)
    data = m.get("data") or {}
    source = data.get("source", "")
    kind = "evaluation" if "split" not in data else "training run"
    split_word = "Test" if key == "test" else "Validation"
    n_classes = len(run.classes)
    backbone = (m.get("backbone") or {}).get("name", "?")
    head = (m.get("head") or {}).get("name", "")
    cards = [
        ("main", f"{split_word} accuracy", _pct(s.get("accuracy")), "accuracy"),
        ("", "95% interval", _interval(s.get("accuracy_ci95")), "accuracy-ci95"),
        ("", f"top-{s.get('top_k', '?')} accuracy", _pct(s.get("top_k_accuracy")), ""),
        ("", "macro F1", _pct(s.get("macro_f1")), ""),
        ("", f"{split_word.lower()} images", f"{s.get('n', 0):,}", ""),
        ("", "classes", f"{n_classes:,}", ""),
    ]
    card_html = "".join(
        f'<div class="card {c}"><div class="k">{esc(k)}</div><div class="v"{f" id={i!r}" if i else ""}>{esc(v)}</div></div>'
        for c, k, v, i in cards
    )
    facts = [
        f"{kind} of <b>{esc(Path(source).name or source)}</b>",
        f"backbone <code>{esc(backbone)}</code>",
        f"strategy {esc(m.get('strategy', '?'))}" + (f", head {esc(head)}" if head else ""),
        f"evaluated on {esc(evaluated_on)}",
    ]
    if m.get("created"):
        facts.append(esc(m["created"]))
    return (
        f"<h1>headstart report: {esc(Path(source).name or run.run_dir.name)}</h1>"
        f'<p class="muted">{" · ".join(facts)}<br>source <code>{esc(source)}</code> · run folder <code>{esc(run.run_dir)}</code></p>'
        f'<div class="cards">{card_html}</div>'
    )


def _counts(run: LoadedRun) -> dict[str, dict[str, int]]:
    m = run.metrics
    split_counts = ((m.get("data") or {}).get("split") or {}).get("counts")
    if split_counts:
        return {k: dict(v) for k, v in split_counts.items()}
    if run.split_rows:
        out: dict[str, Counter] = {}
        for r in run.split_rows:
            out.setdefault(r["split"], Counter())[r["label"]] += 1
        return {k: dict(v) for k, v in out.items()}
    return {"evaluated": dict(Counter(r["label"] for r in run.predictions))}


def _dataset_section(run: LoadedRun) -> str:
    classes = run.classes
    counts = _counts(run)
    splits = list(counts)
    total = {c: sum(counts[s].get(c, 0) for s in splits) for c in classes}
    parts = ['<h2 id="data">Data</h2>']
    n_img = sum(total.values())
    parts.append(
        f"<p>{n_img:,} images used in {len(classes):,} classes"
        + (f" ({', '.join(f'{s} {sum(counts[s].values()):,}' for s in splits)})." if len(splits) > 1 else ".")
        + "</p>"
    )
    small = [c for c in classes if total[c] <= 1]
    if small:
        parts.append(
            f'<p class="bad">{len(small)} class(es) with a single image: {esc(", ".join(small[:10]))}'
            + ("…" if len(small) > 10 else "")
            + ". Their scores mean little; add images.</p>"
        )
    absent = [c for c in classes if "test" in counts and not counts["test"].get(c)]
    if absent:
        parts.append(
            f'<p class="bad">{len(absent)} class(es) have no test image, so their recall is not measured: '
            f"{esc(', '.join(absent[:10]))}" + ("…" if len(absent) > 10 else "") + ".</p>"
        )
    parts.append(_png_tag(plots.class_distribution(counts, classes), "images per class and split"))
    rows = [[esc(c), *[f"{counts[s].get(c, 0):,}" for s in splits], f"{total[c]:,}"] for c in classes]
    table = _table(["class", *splits, "total"], rows, numeric=range(1, len(splits) + 2))
    parts.append(
        table
        if len(classes) <= 30
        else f"<details><summary>Counts table ({len(classes)} classes)</summary>{table}</details>"
    )
    parts.append(_skipped_section(run))
    parts.append(_sample_grid(run))
    return "".join(parts)


def _skipped_section(run: LoadedRun) -> str:
    skipped = run.skipped
    if not skipped:
        return "<h3>Skipped files</h3><p>None: every file found was used.</p>"
    reasons = Counter(r.get("reason", "").split(":")[0] for r in skipped)
    listed = skipped[:200]
    rows = [
        [f"<code>{esc(r.get('path', ''))}</code>", esc(r.get("reason", "")), esc(r.get("stage", ""))]
        for r in listed
    ]
    more = (
        f" (first {len(listed)} shown; all in <code>skipped.csv</code>)"
        if len(skipped) > len(listed)
        else " (also in <code>skipped.csv</code>)"
    )
    summary = ", ".join(f"{n} {esc(r)}" for r, n in reasons.most_common())
    return f"<h3>Skipped files</h3><p>{len(skipped):,} file(s) passed over: {summary}{more}.</p>" + _table(
        ["file", "reason", "stage"], rows, tall=True
    )


def _sample_grid(run: LoadedRun) -> str:
    classes = run.classes
    rows = run.split_rows or run.predictions
    by_class: dict[str, list[str]] = {}
    for r in rows:
        by_class.setdefault(r["label"], []).append(r["path"])
    per_class = int(np.clip(MAX_SAMPLE_THUMBS // max(1, len(classes)), 1, 8))
    blocks = []
    for c in classes:
        paths = sorted(by_class.get(c, []))
        if not paths:
            continue
        pick = [
            paths[int(i)]
            for i in np.unique(np.linspace(0, len(paths) - 1, min(per_class, len(paths))).round())
        ]
        tiles = "".join(_tile(p, esc(Path(p).name)) for p in pick)
        blocks.append(
            f'<div class="cls"><h3>{esc(c)} <span class="muted">({len(paths):,} images)</span></h3><div class="grid">{tiles}</div></div>'
        )
    inner = "".join(blocks)
    title = f"<h3>Sample images ({per_class} per class)</h3>"
    if len(classes) > 30:
        return f"{title}<details><summary>Show the sample grid of {len(classes)} classes</summary>{inner}</details>"
    return title + inner


def _curves_section(run: LoadedRun) -> str:
    history = run.history
    if not history:
        return ""
    last = history[-1]
    return (
        '<h2 id="training">Training curves</h2>'
        f"<p>{len(history)} epoch(s); last epoch: train accuracy {_pct(last.get('accuracy'))}, "
        f"validation accuracy {_pct(last.get('val_accuracy'))}, validation loss {last.get('val_loss', float('nan')):.4f}. "
        "A validation curve that falls while the training curve keeps rising means over-fitting.</p>"
        + _png_tag(plots.training_curves(history), "accuracy and loss per epoch")
    )


def _metrics_section(run: LoadedRun) -> str:
    m = run.metrics
    classes = run.classes
    key, s, evaluated_on = _summary(run)
    per_class = m.get("per_class") or {}
    parts = [
        '<h2 id="metrics">Test metrics</h2>' if key == "test" else '<h2 id="metrics">Validation metrics</h2>'
    ]
    parts.append(
        f"<p>Accuracy <b>{_pct(s.get('accuracy'))}</b> (95% interval {_interval(s.get('accuracy_ci95'))}, "
        f"Wilson) on {s.get('n', 0):,} images ({esc(evaluated_on)}); "
        f"top-{s.get('top_k', '?')} accuracy {_pct(s.get('top_k_accuracy'))}; macro F1 {_pct(s.get('macro_f1'))}.</p>"
    )
    rows = [_class_row(c, per_class.get(c) or {}) for c in classes]
    header = ["class", "precision", "recall", "recall 95% interval", "F1", "test images"]
    table = _table(header, rows, numeric=(1, 2, 3, 4, 5))
    parts.append("<h3>Per class</h3>")
    parts.append(table if len(classes) <= 30 else table.replace('class="scroll"', 'class="scroll tall"', 1))
    cm = np.asarray(m.get("confusion_matrix") or np.zeros((len(classes),) * 2), dtype=int)
    if cm.shape == (len(classes), len(classes)) and cm.sum():
        keep = plots.most_confused_classes(cm)
        parts.append("<h3>Confusion matrix</h3>")
        if len(keep) < len(classes):
            parts.append(
                f"<p><b>Showing the {len(keep)} most confused of {len(classes)} classes</b> "
                "(those with the most errors, as true or as predicted class); "
                "the full matrix is in <code>metrics.json</code>.</p>"
            )
        parts.append(
            '<div class="pair">'
            + _png_tag(
                plots.confusion_counts(cm, classes, plots.confusion_title(m)), "confusion matrix, counts"
            )
            + _png_tag(plots.confusion_heatmap(cm, classes, keep, True), "confusion matrix, row-normalised")
            + "</div>"
        )
        pairs = confused_pairs(cm, classes)
        if pairs:
            parts.append("<h3>Most confused pairs</h3>")
            parts.append(
                _table(
                    ["true class", "predicted as", "images", "share of true class"],
                    [[esc(t), esc(p), f"{n:,}", _pct(f)] for t, p, n, f in pairs],
                    numeric=(2, 3),
                )
            )
        else:
            parts.append("<p>No confusions: every evaluated image was classified correctly.</p>")
    return "".join(parts)


def _misclassified_section(run: LoadedRun) -> str:
    preds = run.predictions
    classes = run.classes
    proba = run.proba
    wrong = [(i, r) for i, r in enumerate(preds) if r["label"] != r["predicted"]]
    wrong.sort(key=lambda ir: -_float(ir[1]["probability"]))
    parts = ['<h2 id="errors">Misclassified images</h2>']
    if not preds:
        return parts[0] + "<p>No predictions were saved for this run.</p>"
    if not wrong:
        return parts[0] + f"<p>None: all {len(preds):,} evaluated images were classified correctly.</p>"
    parts.append(
        f"<p>{len(wrong):,} of {len(preds):,} evaluated images, most confident mistakes first"
        + (
            f" (first {MAX_MISCLASSIFIED} shown; all in <code>{PREDICTIONS_CSV}</code>)"
            if len(wrong) > MAX_MISCLASSIFIED
            else ""
        )
        + ".</p>"
    )
    tiles = []
    index = {c: i for i, c in enumerate(classes)}
    extras = error_extras(run.run_dir)
    for i, r in wrong[:MAX_MISCLASSIFIED]:
        true_p = ""
        if proba is not None and r["label"] in index:
            true_p = f" ({proba[i, index[r['label']]]:.0%})"
        caption = (
            f'<span class="bad">predicted <b>{esc(r["predicted"])}</b> {_float(r["probability"]):.0%}</span><br>'
            f'true <b>{esc(r["label"])}</b>{true_p}<br><span class="muted">{esc(Path(r["path"]).name)}</span>'
            + extras.get(r["path"], "")
        )
        tiles.append(_tile(r["path"], caption, "wrong"))
    parts.append(f'<div class="grid">{"".join(tiles)}</div>')
    return "".join(parts)


def _calibration_section(run: LoadedRun) -> str:
    preds = run.predictions
    if not preds:
        return ""
    conf = np.array([_float(r["probability"]) for r in preds])
    correct = np.array([r["label"] == r["predicted"] for r in preds], dtype=float)
    ok = np.isfinite(conf)
    conf, correct = conf[ok], correct[ok]
    ece = expected_calibration_error(conf, correct)
    gap = float(conf.mean() - correct.mean()) if len(conf) else 0.0
    verdict = (
        "over-confident" if gap > 0.02 else "under-confident" if gap < -0.02 else "about right on average"
    )
    before, scaling = _before_scaling(run, ok)
    return (
        '<h2 id="calibration">Calibration</h2>'
        f'<p>Expected calibration error (ECE, {CALIBRATION_BINS} bins): <b id="ece">{ece:.3f}</b>. '
        f"Mean confidence {conf.mean():.1%} against accuracy {correct.mean():.1%}: the model is {verdict}. "
        "Bars below the diagonal mean the probabilities promise more than the model delivers.</p>"
        + scaling
        + _png_tag(plots.reliability_diagram(conf, correct, CALIBRATION_BINS, before), "reliability diagram")
    )


def _before_scaling(run: LoadedRun, ok: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The confidences before temperature scaling (the saved probabilities are calibrated:
    T applied backwards recovers them exactly) and a line with the ECE before and after."""
    calibration = run.metrics.get("calibration") or {}
    temperature = calibration.get("temperature")
    proba = run.proba
    if not isinstance(temperature, (int, float)) or temperature <= 0 or proba is None:
        return None, ""
    before = apply_temperature(np.asarray(proba, dtype=np.float64), 1.0 / temperature).max(axis=1)[ok]
    correct = np.array([r["label"] == r["predicted"] for r in run.predictions], dtype=float)[ok]
    ece_before = expected_calibration_error(before, correct)
    ece_after = expected_calibration_error(proba.max(axis=1)[ok], correct)
    line = (
        f"<p>Temperature scaling (T = {temperature:.3f}, fitted on the validation split): ECE "
        f'<b id="ece-before">{ece_before:.3f}</b> before, <b id="ece-after">{ece_after:.3f}</b> after; '
        "the outline shows the accuracy per bin before scaling.</p>"
    )
    return before, line


def _map_section(run: LoadedRun) -> str:
    rows = run.map_rows
    if not rows:
        return (
            '<h2 id="map">Feature map</h2><p>No map was saved for this run '
            "(<code>headstart report RUN_DIR --method tsne</code> makes one).</p>"
        )
    classes = run.classes
    index = {c: i for i, c in enumerate(classes)}
    extra = sorted({r["label"] for r in rows} - set(index))
    names = classes + extra
    index.update({c: len(classes) + k for k, c in enumerate(extra)})
    xy = np.array([[_float(r["x"]), _float(r["y"])] for r in rows])
    labels = [index[r["label"]] for r in rows]
    info = run.map_info
    method = {"tsne": "t-SNE (openTSNE)", "pca": "PCA"}.get(info.get("method", ""), info.get("method", "?"))
    which = {"test": "test images", "all": "images (all splits)"}.get(info.get("points", ""), "images")
    sample = (
        f", a seeded sample of {info['n']:,} of {info['n_total']:,}"
        if info.get("n_total", 0) > info.get("n", 0)
        else ""
    )
    title = f"{method} of the backbone features: {len(rows):,} {which}"
    return (
        '<h2 id="map">Feature map</h2>'
        f"<p>Each dot is one image's bottleneck feature vector, placed by {method}{sample} and coloured by its "
        "true class. Classes that form separate islands here are easy for any head; mixed regions are where "
        f"the mistakes come from. Computed in {info.get('seconds', 0):.1f}s"
        + (" (from the cache)" if info.get("from_cache") else "")
        + "."
        + (
            " With this many classes the colours repeat; the class names sit at the class centres"
            + (" (up to 60 classes)." if len(names) > 60 else ".")
            if len(names) > 20
            else ""
        )
        + "</p>"
        + _png_tag(plots.feature_map(xy, labels, names, title), "2-D map of the features coloured by class")
    )


def _doctor_section(run: LoadedRun) -> str:
    doctor = run.doctor
    if not isinstance(doctor, dict):
        return ""
    items = []
    for key, label in (
        ("bad_files", "bad files"),
        ("duplicates", "duplicate groups"),
        ("label_issues", "likely label issues"),
    ):
        value = doctor.get(key)
        if isinstance(value, (list, dict)):
            items.append(f"<li>{len(value):,} {label}</li>")
    link = ' See <a href="doctor.html">doctor.html</a>.' if (run.run_dir / "doctor.html").is_file() else ""
    return f'<h2 id="doctor">Data doctor</h2><p>From <code>doctor.json</code>.{link}</p><ul>{"".join(items)}</ul>'


def _details_section(run: LoadedRun) -> str:
    m = run.metrics
    timings = m.get("timings") or {}
    rows = [[esc(k), f"{v:.2f}" if isinstance(v, (int, float)) else esc(v)] for k, v in timings.items()]
    files = sorted(p.name for p in run.run_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    versions = m.get("versions") or {}
    return (
        '<h2 id="details">Run details</h2>'
        + (
            ("<h3>Timings (seconds; rates in images/s)</h3>" + _table(["stage", "value"], rows, numeric=(1,)))
            if rows
            else ""
        )
        + f"<p>Files in the run folder: {', '.join(f'<code>{esc(f)}</code>' for f in files)}.</p>"
        + (
            f'<p class="muted">Versions: {esc(", ".join(f"{k} {v}" for k, v in versions.items()))}</p>'
            if versions
            else ""
        )
    )


def build_report(run_dir: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    """Assemble ``RUN_DIR/report.html`` from the run folder's files (``metrics`` may be passed in)."""
    if metrics is None and (Path(run_dir) / "metrics.json").is_file():
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
    if metrics is not None and metrics.get("multi_label"):
        return build_multilabel_report(run_dir, metrics)
    run = load_run(Path(run_dir), metrics)
    sections = [
        _header(run),
        '<nav><a href="#data">Data</a>'
        + ('<a href="#training">Training curves</a>' if run.history else "")
        + '<a href="#metrics">Metrics</a><a href="#errors">Misclassified</a>'
        '<a href="#calibration">Calibration</a><a href="#map">Feature map</a>'
        + ('<a href="#doctor">Data doctor</a>' if run.doctor else "")
        + '<a href="#details">Run details</a></nav>',
        _dataset_section(run),
        _curves_section(run),
        _metrics_section(run),
        _misclassified_section(run),
        _calibration_section(run),
        unknown_section(run.metrics),
        _map_section(run),
        _doctor_section(run),
        _details_section(run),
    ]
    name = Path((run.metrics.get("data") or {}).get("source", "") or run.run_dir).name
    return write_page(
        run.run_dir / REPORT_NAME,
        "report.html",
        title=f"headstart report: {name}",
        sections=[Markup(section) for section in sections if section],
    )


# --------------------------------------------------------------------------- new maps and the embed page


def map_inputs(run_dir: Path, points: str) -> list[dict[str, str]]:
    """The images a new map of the run covers, as rows with ``path``, ``label`` and ``split``.

    Args:
        run_dir: a run folder written by ``train`` (``split.csv``) or ``evaluate``.
        points: ``test`` (the evaluated images) or ``all`` (every split of ``split.csv``).
    """
    run = load_run(run_dir)
    if points == "all":
        if not run.split_rows:
            raise HeadstartError(f"{run_dir} has no split.csv: --points all needs a training run folder")
        return [{"path": r["path"], "label": r["label"], "split": r["split"]} for r in run.split_rows]
    return [{"path": r["path"], "label": r["label"], "split": "test"} for r in run.predictions]


def write_map_page(
    out_dir: Path, xy: np.ndarray, labels: Sequence[str], info: dict[str, Any], source: str
) -> Path:
    """``embed``'s outputs: ``map.png`` and a self-contained ``map.html``."""
    classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    method = {"tsne": "t-SNE (openTSNE)", "pca": "PCA"}.get(info["method"], info["method"])
    title = f"{method} of {info['backbone']} features: {len(labels):,} images, {len(classes)} classes"
    png = plots.feature_map(xy, [index[c] for c in labels], classes, title)
    write_bytes(out_dir / "map.png", png)
    counts = Counter(labels)
    return write_page(
        out_dir / "map.html",
        "map_page.html",
        title=f"headstart map: {Path(source).name}",
        name=Path(source).name,
        source=source,
        backbone=info["backbone"],
        method=method,
        seconds=info["seconds"],
        from_cache=bool(info.get("from_cache")),
        figure=Markup(_png_tag(png, "2-D map of the features coloured by class")),
        classes=[(c, counts[c]) for c in classes],
    )
