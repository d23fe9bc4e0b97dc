"""``doctor.html``: the data doctor's findings as one self-contained page (thumbnails embedded)."""

from __future__ import annotations

import base64
import html
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from headstart.core.errors import BadImageError
from headstart.core.system import usable_core_count
from headstart.data.images import decode_image, read_bytes


def thumbnail_uri(path: str, size: int = 112) -> str | None:
    """A small JPEG as a data: URI, so the HTML page is one self-contained file."""
    try:
        img = decode_image(read_bytes(path), min_side=size)
    except BadImageError:
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _esc(text: Any) -> str:
    return html.escape(str(text).encode("utf-8", "backslashreplace").decode("utf-8"))


def _figure(path: str, caption: str, thumbs: dict[str, str | None]) -> str:
    uri = thumbs.get(path)
    img = f'<img src="{uri}" alt="">' if uri else '<div class="noimg">no preview</div>'
    return f'<figure>{img}<figcaption title="{_esc(path)}">{_esc(caption)}</figcaption></figure>'


def write_doctor_page(doc: dict[str, Any], path: Path, max_items: int = 200) -> Path:
    """One page: summary, bad files, duplicate groups, label issues, class counts."""
    wanted = [b["path"] for b in doc["bad_files"] if b.get("stage") != "discovery"][:max_items]
    for g in doc["duplicates"][:max_items]:
        wanted += [f["path"] for f in g["files"]]
    for r in doc["label_issues"][:max_items]:
        wanted += [r["path"], *[n["path"] for n in r.get("neighbours", [])[:3]]]
    wanted = list(dict.fromkeys(wanted))
    with ThreadPoolExecutor(usable_core_count()) as pool:
        thumbs = dict(zip(wanted, pool.map(thumbnail_uri, wanted)))
    s = doc["summary"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>headstart doctor</title><style>"
        "body{font-family:sans-serif;margin:1.5em;max-width:1400px}figure{display:inline-block;margin:4px;"
        "width:120px;vertical-align:top}figure img{max-width:112px;max-height:112px}figcaption{font-size:11px;"
        "overflow-wrap:anywhere}.noimg{width:112px;height:60px;background:#eee;font-size:11px}"
        ".row{border-bottom:1px solid #ddd;padding:6px 0}table{border-collapse:collapse}td,th{padding:2px 8px;"
        "border-bottom:1px solid #eee;text-align:left;font-size:13px}.warn{color:#a60}.err{color:#b00}"
        "</style></head><body><h1>headstart doctor</h1>",
        f"<p>{s['images']} images, {s['usable']} usable; {s['bad_files']} bad file(s), {s['warnings']} warning(s); "
        f"{s['exact_duplicate_groups']} exact and {s['near_duplicate_groups']} near duplicate group(s), "
        f"{s['cross_class_groups']} across classes, {s['cross_split_groups']} across splits; "
        f"{s['label_issues']} likely label issue(s).</p>",
        "<h2>Class counts</h2><table>"
        + "".join(f"<tr><td>{_esc(k)}</td><td>{v}</td></tr>" for k, v in doc["class_counts"].items())
        + "</table>",
    ]
    if doc["imbalance"].get("suggestion"):
        parts.append(f"<p class='warn'>{_esc(doc['imbalance']['suggestion'])}</p>")
    parts.append(
        f"<h2>Bad files ({len(doc['bad_files'])})</h2><table><tr><th></th><th>file</th><th>problem</th></tr>"
    )
    for b in doc["bad_files"][:max_items]:
        uri = thumbs.get(b["path"])
        img = f'<img src="{uri}" alt="" style="max-height:48px">' if uri else ""
        cls = "err" if b["severity"] == "error" else "warn"
        parts.append(
            f"<tr><td>{img}</td><td>{_esc(b['path'])}</td><td class='{cls}'>{_esc(b['reason'])}</td></tr>"
        )
    parts.append("</table>")
    parts.append(f"<h2>Duplicate groups ({len(doc['duplicates'])})</h2>")
    for g in doc["duplicates"][:max_items]:
        tags = (
            [g["kind"]]
            + (["CONFLICTING LABELS"] if g["cross_class"] else [])
            + (["LEAK ACROSS SPLITS"] if g["cross_split"] else [])
        )
        figs = "".join(
            _figure(
                f["path"],
                f"{f['label']}{'/' + f['split'] if f.get('split') else ''}: {Path(f['path']).name}",
                thumbs,
            )
            for f in g["files"]
        )
        ev = "; ".join(
            ", ".join(f"{k} {v}" for k, v in e.items() if k not in ("a", "b")) for e in g["evidence"][:3]
        )
        parts.append(
            f"<div class='row'><b>group {g['group']}</b> ({', '.join(tags)}) {_esc(ev)}<br>{figs}</div>"
        )
    parts.append(f"<h2>Likely label issues ({len(doc['label_issues'])}), most suspicious first</h2>")
    for r in doc["label_issues"][:max_items]:
        figs = _figure(
            r["path"], f"#{r['rank']} given '{r['given_label']}' → '{r['suggested_label']}'", thumbs
        )
        figs += "".join(
            _figure(n["path"], f"neighbour: {n['label']} ({n['cosine']:.2f})", thumbs)
            for n in r.get("neighbours", [])[:3]
        )
        parts.append(
            f"<div class='row'>{_esc(r['evidence'])}<br>{figs}<br><small>{_esc(r['path'])}</small></div>"
        )
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8", errors="backslashreplace")
    return path
