"""The report's "Unknown" section: how the reject option behaves for this model.

Read from metrics.json's ``reject`` entry only (threshold, the rule that set it, coverage and
accuracy on the evaluated images, and ``held_out_class``: each class held out in turn on
validation, see ``evaluation.heldout``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from headstart.core.io import read_rows
from headstart.reporting.html import esc, thumbnail_uri

ERRORS_CSV = "errors.csv"


def _pct(x: object) -> str:
    return "–" if not isinstance(x, (int, float)) or x != x else f"{x:.1%}"


def unknown_section(metrics: dict[str, Any]) -> str:
    """HTML of the section ('' when the model has no reject option)."""
    reject = metrics.get("reject") or {}
    if reject.get("threshold") is None:
        return ""
    rule = reject.get("threshold_set_by", "accuracy")
    targets = (
        f"target accuracy {reject.get('target_accuracy')}, target coverage {reject.get('target_coverage', 1.0)}"
        if reject.get("mode") == "auto"
        else "fixed by the user"
    )
    parts = [
        '<h2 id="unknown">Unknown</h2>',
        f"<p>The model answers <b>unknown</b> when its score ({esc(str(reject.get('score', '')))}) is at or "
        f"below <b>{float(reject['threshold']):.4f}</b> ({esc(targets)}; set by the {esc(rule)} rule). "
        f"On the {esc(str(reject.get('evaluated_on', 'evaluated')))} images it turned down "
        f"<b>{_pct(1 - reject['coverage']) if 'coverage' in reject else '–'}</b>, and was right on "
        f"{_pct(reject.get('accuracy_accepted'))} of the rest.</p>",
    ]
    held = reject.get("held_out_class") or {}
    if held.get("folds"):
        parts.append(
            "<p>Each class held out in turn (head refitted without it, its validation images scored as "
            f'unknown): AUROC <b id="held-out-auroc">{held["auroc"]:.3f}</b>; at this threshold '
            f"<b>{_pct(held['turned_down'])}</b> of the held-out class's images were turned down, and "
            f"{_pct(held['known_turned_down'])} of the known ones.</p>"
        )
        rows = "".join(
            f'<tr><td>{esc(f["held_out"])}</td><td class="num">{f["n_unknown"]}</td>'
            f'<td class="num">{f["auroc"]:.3f}</td><td class="num">{_pct(f["turned_down"])}</td>'
            f'<td class="num">{_pct(f["known_turned_down"])}</td></tr>'
            for f in held["folds"]
        )
        parts.append(
            '<div class="scroll"><table><thead><tr><th>held out</th><th>images</th><th>AUROC</th>'
            "<th>turned down</th><th>known turned down</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>"
        )
    return "".join(parts)


def error_extras(run_dir: Path) -> dict[str, str]:
    """HTML to add under each misclassified image (by its absolute path): its heatmap overlay
    and its nearest training photos, from ``errors.csv`` (written at fit time; none: {})."""
    out = {}
    for row in read_rows(Path(run_dir) / ERRORS_CSV):
        parts = []
        overlay = row.get("overlay", "")
        uri = thumbnail_uri(str(Path(run_dir) / overlay)) if overlay else None
        if uri:
            parts.append(f'<img class="heatmap" alt="where the model looked" src="{uri}">')
        try:
            near = json.loads(row.get("neighbours") or "[]")
        except ValueError:
            near = []
        thumbs = []
        for n in near[:3]:
            small = thumbnail_uri(str(n.get("path", "")), 56)
            if small:
                title = f"{n.get('label', '')} ({float(n.get('similarity', 0)):.2f})"
                thumbs.append(f'<img alt="{esc(title)}" title="{esc(title)}" src="{small}">')
        if thumbs:
            parts.append('<br><span class="muted">nearest training photos:</span><br>' + "".join(thumbs))
        out[row["path"]] = "".join(parts)
    return out
