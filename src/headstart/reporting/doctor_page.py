"""``doctor.html``: the data doctor's findings as one self-contained page (thumbnails embedded).

The page is ``templates/doctor.html`` on the shared shell; every path, label and reason is
escaped by the template."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from headstart.core.system import usable_core_count
from headstart.reporting.html import thumbnail_uri, write_page


def _figure(path: str, caption: str, thumbs: dict[str, str | None]) -> dict[str, Any]:
    return {"path": path, "caption": caption, "uri": thumbs.get(path)}


def _thumbnails(doc: dict[str, Any], max_items: int) -> dict[str, str | None]:
    """The thumbnails the page shows, made in parallel (decoding releases the GIL)."""
    wanted = [b["path"] for b in doc["bad_files"] if b.get("stage") != "discovery"][:max_items]
    for g in doc["duplicates"][:max_items]:
        wanted += [f["path"] for f in g["files"]]
    for r in doc["label_issues"][:max_items]:
        wanted += [r["path"], *[n["path"] for n in r.get("neighbours", [])[:3]]]
    wanted = list(dict.fromkeys(wanted))
    with ThreadPoolExecutor(usable_core_count()) as pool:
        return dict(zip(wanted, pool.map(thumbnail_uri, wanted)))


def _duplicate_group(g: dict[str, Any], thumbs: dict[str, str | None]) -> dict[str, Any]:
    tags = (
        [g["kind"]]
        + (["CONFLICTING LABELS"] if g["cross_class"] else [])
        + (["LEAK ACROSS SPLITS"] if g["cross_split"] else [])
    )
    figures = [
        _figure(
            f["path"],
            f"{f['label']}{'/' + f['split'] if f.get('split') else ''}: {Path(f['path']).name}",
            thumbs,
        )
        for f in g["files"]
    ]
    evidence = "; ".join(
        ", ".join(f"{k} {v}" for k, v in e.items() if k not in ("a", "b")) for e in g["evidence"][:3]
    )
    return {"group": g["group"], "tags": tags, "figures": figures, "evidence": evidence}


def _label_issue(r: dict[str, Any], thumbs: dict[str, str | None]) -> dict[str, Any]:
    figures = [
        _figure(r["path"], f"#{r['rank']} given '{r['given_label']}' → '{r['suggested_label']}'", thumbs)
    ]
    figures += [
        _figure(n["path"], f"neighbour: {n['label']} ({n['cosine']:.2f})", thumbs)
        for n in r.get("neighbours", [])[:3]
    ]
    return {"path": r["path"], "evidence": r["evidence"], "figures": figures}


def write_doctor_page(doc: dict[str, Any], path: Path, max_items: int = 200) -> Path:
    """One page: summary, class counts, bad files, duplicate groups, label issues (each list
    cut at ``max_items``), on the shared page shell."""
    thumbs = _thumbnails(doc, max_items)
    bad_files = [
        {
            "path": b["path"],
            "reason": b["reason"],
            "uri": thumbs.get(b["path"]),
            "level": "err" if b["severity"] == "error" else "warn",
        }
        for b in doc["bad_files"][:max_items]
    ]
    return write_page(
        path,
        "doctor.html",
        title="headstart doctor",
        s=doc["summary"],
        class_counts=list(doc["class_counts"].items()),
        suggestion=doc["imbalance"].get("suggestion"),
        n_bad=len(doc["bad_files"]),
        bad_files=bad_files,
        n_duplicates=len(doc["duplicates"]),
        duplicates=[_duplicate_group(g, thumbs) for g in doc["duplicates"][:max_items]],
        confused_pairs=doc.get("confused_pairs", []),
        n_label_issues=len(doc["label_issues"]),
        label_issues=[_label_issue(r, thumbs) for r in doc["label_issues"][:max_items]],
    )
