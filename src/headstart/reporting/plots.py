"""The report's figures, in one matplotlib style: titled, labelled, legible with many classes.

Every figure function returns PNG bytes (the HTML report embeds them) and never shows a window;
``write_confusion_matrix`` also writes its figure to a file (``RUN_DIR/confusion_matrix.png``).
Class names are shortened for axes (the report's tables carry the full names). Text is drawn
in DejaVu Sans (shipped with matplotlib), falling back per glyph to an installed CJK font
(Noto CJK, Source Han, WenQuanYi, IPA...) where the system has one; a name that no available
font can draw is shown as its class number (``#12``) instead of empty boxes.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.io import write_bytes
from headstart.evaluation import confusion
from headstart.evaluation.calibration import CALIBRATION_BINS, reliability_bins

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "figure.constrained_layout.use": True,
    "text.parse_math": False,  # names are data: "cost_$10_$20" is text, never mathtext
}
SPLIT_COLORS = {"train": "#4C78A8", "val": "#F58518", "test": "#54A24B", "evaluated": "#54A24B"}
MAX_HEATMAP_CLASSES = 30
MAX_NAMED_BARS = 60


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Font families tried, in order, for glyphs DejaVu Sans lacks, and file-name hints to find
# them on systems where matplotlib's font list predates their installation.
FALLBACK_FAMILIES = (
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Noto Sans CJK KR",
    "Source Han Sans",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "IPAexGothic",
    "IPAGothic",
    "Microsoft YaHei",
    "Yu Gothic",
    "Malgun Gothic",
    "Hiragino Sans",
    "PingFang SC",
    "Arial Unicode MS",
)
_FONT_FILE_HINTS = ("notosanscjk", "sourcehansans", "wqy", "droidsansfallback", "ipag", "ipaexg")


@functools.cache
def fallback_fonts() -> tuple[tuple[str, str], ...]:
    """(family, file) of each installed fallback font, in FALLBACK_FAMILIES order."""
    from matplotlib import font_manager

    known = {f.name for f in font_manager.fontManager.ttflist}
    if not known & set(FALLBACK_FAMILIES):
        try:  # fonts installed after matplotlib built its font list
            for path in font_manager.findSystemFonts():
                if any(h in Path(path).name.lower().replace("-", "") for h in _FONT_FILE_HINTS):
                    font_manager.fontManager.addfont(path)
        except Exception:  # noqa: BLE001 - a font scan must never break a report
            pass
    by_name = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    if set(by_name) & set(FALLBACK_FAMILIES):
        # CJK fonts often come in one weight; bold titles then log "Failed to find font weight
        # bold" for every figure, though the text renders (in the regular weight).
        logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    return tuple((name, by_name[name]) for name in FALLBACK_FAMILIES if name in by_name)


def style() -> dict[str, Any]:
    """STYLE plus the font family list: DejaVu Sans first, then any installed fallbacks."""
    return {**STYLE, "font.family": ["DejaVu Sans", *(name for name, _ in fallback_fonts())]}


def styled(draw: Callable[..., bytes]) -> Callable[..., bytes]:
    """Run a figure function under STYLE without changing the caller's matplotlib settings."""

    @functools.wraps(draw)
    def wrapper(*args: object, **kwargs: object) -> bytes:
        with _plt().rc_context(style()):
            return draw(*args, **kwargs)

    return wrapper


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # constrained layout already fits labels: no second "tight" pass
    _plt().close(fig)
    return buf.getvalue()


@functools.cache
def _charmaps() -> tuple[tuple[str, frozenset[int]], ...]:
    """(font file, code points it draws) for DejaVu Sans and each installed fallback."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    files: list[str] = [str(font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans")))]
    files += [path for _, path in fallback_fonts()]
    out = []
    for path in files:
        try:
            out.append((path, frozenset(FT2Font(path).get_charmap())))
        except (OSError, RuntimeError):
            continue
    return tuple(out)


def _drawable() -> frozenset[int]:
    """Code points some available font can draw."""
    return frozenset().union(*(chars for _, chars in _charmaps()))


def font_file_for(text: str) -> str | None:
    """The first font file (DejaVu Sans, then the fallbacks) that draws every character of ``text``."""
    codes = {ord(ch) for ch in text if not ch.isspace()}
    for path, chars in _charmaps():
        if codes <= chars:
            return path
    return None


def axis_label(name: str, index: int, width: int = 24) -> str:
    """A class name as an axis can show it: shortened, or ``#index`` if no font has its glyphs."""
    drawable = _drawable()
    if any(ord(ch) not in drawable for ch in name if not ch.isspace()):
        return f"#{index}"
    return name if len(name) <= width else name[: width - 1] + "…"


def class_colors(n: int) -> list:
    """Distinct colours: tab10/tab20 for few classes, an evenly spaced hue wheel beyond."""
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(n)]
    cmap = matplotlib.colormaps["hsv"]
    return [cmap(i / n) for i in range(n)]


@styled
def class_distribution(counts: Mapping[str, Mapping[str, int]], classes: Sequence[str]) -> bytes:
    """Images per class, stacked by split: named horizontal bars up to 60 classes; beyond, the
    classes sorted by size as thin unnamed bars (the report's table has the names)."""
    plt = _plt()
    n = len(classes)
    splits = [(s, np.array([c_.get(c, 0) for c in classes], dtype=float)) for s, c_ in counts.items()]
    splits = [(s, v) for s, v in splits if v.any()]
    named = n <= MAX_NAMED_BARS
    order = np.arange(n) if named else np.argsort(-sum(v for _, v in splits), kind="stable")
    if named:
        fig, ax = plt.subplots(figsize=(8, max(2.2, 0.26 * n + 1.2)))
    else:
        fig, ax = plt.subplots(figsize=(10, 3.6))
    pos = np.arange(n)
    base = np.zeros(n)
    for split, values in splits:
        values = values[order]
        kwargs = {"color": SPLIT_COLORS.get(split, "#888"), "label": f"{split} ({int(values.sum())})"}
        if named:
            ax.barh(pos, values, left=base, **kwargs)
        else:
            ax.bar(pos, values, bottom=base, width=1.0, linewidth=0, **kwargs)
        base += values
    if named:
        ax.set_yticks(pos, [axis_label(classes[i], i) for i in order], fontsize=9 if n <= 40 else 7)
        ax.invert_yaxis()
        ax.set_xlabel("images")
        ax.grid(axis="x")
        ax.set_title("Images per class and split")
    else:
        ax.set_xticks([])
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_xlabel(f"{n} classes, largest to smallest (names in the table below)")
        ax.set_ylabel("images")
        ax.grid(axis="y")
        ax.set_title("Images per class and split")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="split")
    return to_png(fig)


@styled
def training_curves(history: Sequence[Mapping[str, float]]) -> bytes:
    """Accuracy and loss per epoch, train and validation, side by side."""
    plt = _plt()
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for key, label, color in ((metric, "train", "#4C78A8"), (f"val_{metric}", "validation", "#F58518")):
            values = [row.get(key, np.nan) for row in history]
            if not np.all(np.isnan(np.asarray(values, dtype=float))):
                ax.plot(epochs, values, marker="o", ms=3, label=label, color=color)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric.capitalize())
        ax.grid(True)
        ax.legend()
    return to_png(fig)


def most_confused_classes(cm: np.ndarray, limit: int = MAX_HEATMAP_CLASSES) -> list[int]:
    """The classes a heatmap shows: the ``limit`` with the most errors, in class order."""
    return confusion.most_confused_classes(cm, limit)


@styled
def confusion_heatmap(
    cm: np.ndarray, classes: Sequence[str], keep: Sequence[int], normalised: bool, title: str = ""
) -> bytes:
    """Counts, or row-normalised rates (recall on the diagonal), for the classes in ``keep``.

    Shading is always the row-normalised rate, so small classes read as clearly as large ones.

    Args:
        cm: confusion matrix (rows true, columns predicted) of all classes.
        classes: class names in matrix order.
        keep: indices of the classes to draw (rates still use the whole row).
        normalised: write rates in the cells instead of counts.
        title: the figure's title (default: what the cells show).
    """
    plt = _plt()
    cm = np.asarray(cm)
    sub = cm[np.ix_(keep, keep)].astype(float)
    rows = cm[keep].sum(axis=1, keepdims=True).astype(float)  # whole row: rates stay true rates
    rate = np.divide(sub, rows, out=np.zeros_like(sub), where=rows > 0)
    n = len(keep)
    side = min(max(4.0, 0.32 * n + 2.4), 11.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    names = [axis_label(classes[i], i) for i in keep]
    font = 9 if n <= 15 else 8
    image = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    rotate = n > 3 or max((len(name) for name in names), default=0) > 8
    ax.set_xticks(
        range(n),
        names,
        rotation=45 if rotate else 0,
        ha="right" if rotate else "center",
        rotation_mode="anchor",
        fontsize=font,
    )
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or ("Row-normalised (recall on the diagonal)" if normalised else "Counts"))
    if n <= 20:
        _cell_values(ax, rate if normalised else sub, "{:.0%}" if normalised else "{:.0f}", sub, rate, font)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="fraction of the true class")
    return to_png(fig)


def _cell_values(ax, values: np.ndarray, fmt: str, counts: np.ndarray, rate: np.ndarray, font: int) -> None:
    """Write each non-empty cell's value, white on dark shading."""
    n = len(values)
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                color = "white" if rate[i, j] > 0.5 else "black"
                ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=font, color=color)


def confusion_title(metrics: Mapping[str, Any]) -> str:
    """The counts heatmap's title: the split it scores and its accuracy ("" where the metrics
    name neither). ``confusion_matrix.png`` and the report's counts heatmap share it."""
    evaluated_on = metrics.get("evaluated_on")
    accuracy = (metrics.get(evaluated_on) or {}).get("accuracy") if isinstance(evaluated_on, str) else None
    if not isinstance(accuracy, (int, float)):
        return ""
    return f"Confusion matrix ({evaluated_on}, accuracy {accuracy:.3f})"


def confusion_counts(cm: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str], title: str) -> bytes:
    """The counts heatmap as PNG bytes: every class, or beyond MAX_HEATMAP_CLASSES the most
    confused ones (the title says so).

    Drawn once per process for the same matrix, names and title: a training run writes it to
    ``confusion_matrix.png`` and shows it again in its report.
    """
    matrix = np.asarray(cm, dtype=int).reshape(len(classes), len(classes))
    return _counts_png(tuple(matrix.ravel().tolist()), tuple(classes), title)


@functools.lru_cache(maxsize=4)
def _counts_png(cells: tuple[int, ...], classes: tuple[str, ...], title: str) -> bytes:
    matrix = np.array(cells, dtype=int).reshape(len(classes), len(classes))
    keep = most_confused_classes(matrix)
    if len(keep) < len(classes):
        title = f"{title}: the {len(keep)} most confused of {len(classes)} classes"
    return confusion_heatmap(matrix, classes, keep, False, title)


def write_confusion_matrix(
    cm: np.ndarray | Sequence[Sequence[int]],
    classes: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix (test split)",
) -> Path:
    """``RUN_DIR/confusion_matrix.png``: the counts heatmap of the report, as a file.

    Beyond MAX_HEATMAP_CLASSES classes it shows the most confused ones and says so in the title;
    the whole matrix is in ``metrics.json``.

    Args:
        cm: confusion matrix, rows true classes and columns predicted ones.
        classes: class names in matrix order.
        path: the PNG file to write (atomically).
        title: the figure's title.
    """
    return write_bytes(path, confusion_counts(cm, classes, title))


@styled
def reliability_diagram(
    confidence: np.ndarray,
    correct: np.ndarray,
    bins: int = CALIBRATION_BINS,
    before: np.ndarray | None = None,
) -> bytes:
    """Accuracy against confidence per bin (on the diagonal = well calibrated), with the counts.

    ``before``: the confidences before temperature scaling, drawn as an outline beside the bars.
    """
    plt = _plt()
    r = reliability_bins(confidence, correct, bins)
    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(5.2, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.bar(
        r.centers,
        np.nan_to_num(r.accuracy),
        width=1 / bins,
        edgecolor="white",
        color="#4C78A8",
        label="accuracy" if before is None else "accuracy (calibrated)",
    )
    if before is not None:
        rb = reliability_bins(before, correct, bins)
        ax.step(
            rb.edges,
            np.append(np.nan_to_num(rb.accuracy), 0),
            where="post",
            color="#E45756",
            label="before temperature scaling",
        )
    ax.plot([0, 1], [0, 1], ls="--", color="#888", label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left")
    ax_n.bar(r.centers, r.counts, width=1 / bins, edgecolor="white", color="#999")
    ax_n.set_xlabel("confidence (top predicted probability)")
    ax_n.set_ylabel("images")
    ax_n.set_xlim(0, 1)
    return to_png(fig)


@styled
def feature_map(xy: np.ndarray, labels: Sequence[int], classes: Sequence[str], title: str) -> bytes:
    """Points coloured by class; a legend for up to 20 classes, names at class centres up to 60."""
    plt = _plt()
    n_classes = len(classes)
    colors = class_colors(n_classes)
    label_ids = np.asarray(labels, dtype=int)
    wide = n_classes <= 20
    fig, ax = plt.subplots(figsize=(9.5 if wide else 8, 7))
    size = 14 if len(xy) < 2000 else 6
    present = [c for c in range(n_classes) if (label_ids == c).any()]
    order = np.random.default_rng(0).permutation(len(xy))  # no class always drawn on top
    ax.scatter(
        xy[order, 0], xy[order, 1], s=size, c=[colors[label_ids[i]] for i in order], alpha=0.8, linewidths=0
    )
    if wide:  # legend handles only: one empty scatter per class
        for c in present:
            ax.scatter(
                [],
                [],
                s=size,
                color=colors[c],
                label=f"{axis_label(classes[c], c)} ({int((label_ids == c).sum())})",
            )
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2, fontsize=9)
    elif n_classes <= 60:
        for c in range(n_classes):
            mask = label_ids == c
            if mask.any():
                cx, cy = np.median(xy[mask], axis=0)
                ax.text(
                    cx,
                    cy,
                    axis_label(classes[c], c, 16),
                    fontsize=7,
                    ha="center",
                    va="center",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.6, "lw": 0},
                )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.spines[["left", "bottom"]].set_visible(False)
    ax.set_title(title)
    return to_png(fig)
