"""``compare.html``: two runs compared, as one self-contained page (thumbnails embedded)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from headstart.core.system import usable_core_count
from headstart.reporting.html import thumbnail_uri, write_page


def _pct(x: Any) -> str:
    return "–" if x is None else f"{x:.1%}"


def _ci(ci: Any) -> str:
    return "–" if not ci else f"{ci[0]:.1%}–{ci[1]:.1%}"


def _figures(items: list[dict[str, Any]], thumbs: dict[str, str | None]) -> list[dict[str, Any]]:
    return [
        {
            "path": x["path"],
            "uri": thumbs.get(x["path"]),
            "caption": f"{x['label']}: A said {x['a'] or '?'}, B said {x['b'] or '?'} ({Path(x['path']).name})",
        }
        for x in items
    ]


def write_compare_page(path: Path, result: dict[str, Any], max_items: int = 300) -> Path:
    """The accuracies with intervals, the McNemar test, the per-class table (new classes as
    rows of their own), and the images B fixes and breaks (each list cut at ``max_items``)."""
    fixed, broken = result["fixed"][:max_items], result["broken"][:max_items]
    wanted = list(dict.fromkeys(x["path"] for x in fixed + broken))
    with ThreadPoolExecutor(usable_core_count()) as pool:
        thumbs = dict(zip(wanted, pool.map(thumbnail_uri, wanted)))
    per_class = [
        {
            "name": name,
            "n": row["n"],
            "a": _pct(row["a_accuracy"]),
            "a_ci": _ci(row["a_ci95"]),
            "b": _pct(row["b_accuracy"]),
            "b_ci": _ci(row["b_ci95"]),
            "change": "–" if row["change"] is None else f"{row['change']:+.1%}",
            "status": row["status"],
        }
        for name, row in result["per_class"].items()
    ]
    sides = [
        (
            name,
            {
                "accuracy": _pct(result[name]["accuracy"]),
                "ci95": _ci(result[name]["ci95"]),
                "n": result[name]["n"],
            },
        )
        for name in ("a", "b")
    ]
    p = result["mcnemar_p"]
    verdict = (
        "a difference beyond noise at the 5% level"
        if p < 0.05
        else "no difference beyond noise at the 5% level"
    )
    return write_page(
        path,
        "compare.html",
        title="headstart compare",
        r=result,
        sides=sides,
        p=f"{p:.4g}",
        verdict=verdict,
        per_class=per_class,
        fixed=_figures(fixed, thumbs),
        broken=_figures(broken, thumbs),
    )


__all__ = ["write_compare_page"]
