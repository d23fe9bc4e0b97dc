"""What a data check found (``CheckReport``) and the ``doctor.json`` document made from it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from headstart.data.discovery import Dataset, Sample
from headstart.doctor.duplicates import DuplicateGroup


class _BadFileFields(TypedDict):
    path: str
    reason: str
    severity: str  # "error": left out; "warning": used, but worth a look


class BadFile(_BadFileFields, total=False):
    """A file the checks flagged: where (``stage``, the doctor's), and a warning's image size."""

    stage: str  # discovery, decode or check
    width: int | None
    height: int | None


IMBALANCE_RATIO = 1.5  # largest class / smallest class from which imbalance is reported
LABEL_RANKING_COLUMNS = (
    "rank",
    "path",
    "given_label",
    "suggested_label",
    "self_confidence",
    "suggested_probability",
    "is_issue",
)


@dataclass
class CheckReport:
    """What a data check found, index-aligned with the samples it was given."""

    samples: list[Sample]
    groups: list[DuplicateGroup]
    class_counts: dict[str, int]
    bad_files: list[BadFile] = field(default_factory=list)
    label_issues: list[dict[str, Any]] = field(default_factory=list)
    label_ranking: list[dict[str, Any]] = field(default_factory=list)
    confused_pairs: list[dict[str, Any]] = field(default_factory=list)  # classes a, b; images; joint
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dataset: Dataset | None = None  # what the full doctor discovered (None for train's quick check)
    cross_validated: bool = False  # whether label issues could be looked for

    @property
    def group_indices(self) -> list[list[int]]:
        return [g.members for g in self.groups]

    def conflicts(self) -> list[DuplicateGroup]:
        """Groups whose members carry different labels."""
        return [g for g in self.groups if len({self.samples[i].label for i in g.members}) > 1]

    def leaks(self) -> list[DuplicateGroup]:
        """Groups spread over more than one predefined split."""
        return [g for g in self.groups if len({self.samples[i].split for i in g.members} - {None}) > 1]

    def imbalance(self) -> dict[str, Any]:
        """Largest and smallest class, their ratio, and what to do from ``IMBALANCE_RATIO`` up."""
        counts = self.class_counts
        if not counts:
            return {"ratio": None, "suggestion": None}
        big, small = max(counts, key=counts.get), min(counts, key=counts.get)  # type: ignore[arg-type]
        ratio = counts[big] / max(counts[small], 1)
        suggestion = None
        if ratio >= IMBALANCE_RATIO:
            suggestion = (
                f"'{big}' has {ratio:.1f}x the images of '{small}': weight classes by inverse frequency "
                "(--class-weight balanced), and read per-class recall, not just accuracy"
            )
        return {"largest": big, "smallest": small, "ratio": round(ratio, 3), "suggestion": suggestion}

    def group_records(self, relative: Callable[[str], str] | None = None) -> list[dict[str, Any]]:
        """The duplicate groups as ``doctor.json`` lists them; ``relative`` shortens paths."""
        rel = relative or (lambda p: p)
        out = []
        for n, g in enumerate(self.groups, start=1):
            labels = sorted({self.samples[i].label for i in g.members})
            splits = sorted({s for i in g.members if (s := self.samples[i].split) is not None})
            out.append(
                {
                    "group": n,
                    "kind": g.kind,
                    "cross_class": len(labels) > 1,
                    "cross_split": len(splits) > 1,
                    "labels": labels,
                    "files": [
                        {
                            "path": rel(self.samples[i].path),
                            "label": self.samples[i].label,
                            **({"split": self.samples[i].split} if self.samples[i].split else {}),
                        }
                        for i in g.members
                    ],
                    "evidence": [
                        {
                            "a": rel(self.samples[e["a"]].path),
                            "b": rel(self.samples[e["b"]].path),
                            **{k: v for k, v in e.items() if k not in ("a", "b")},
                        }
                        for e in g.evidence
                    ],
                }
            )
        return out

    def summary_lines(self) -> list[str]:
        """The one-screen summary train prints."""
        exact = sum(g.kind == "exact" for g in self.groups)
        near = len(self.groups) - exact
        lines = [
            f"data check: {len(self.samples)} images, {len(self.class_counts)} classes; "
            f"{exact} exact + {near} near duplicate group(s) "
            f"({sum(len(g.members) for g in self.groups)} images), "
            f"{len(self.conflicts())} with conflicting labels"
        ]
        if self.bad_files:
            kinds = Counter(b["reason"].split(":")[0] for b in self.bad_files)
            lines.append(
                f"  {len(self.bad_files)} bad file(s): "
                + ", ".join(f"{n} {r}" for r, n in kinds.most_common(4))
            )
        for g in self.conflicts()[:3]:
            files = ", ".join(
                f"{Path(self.samples[i].path).name} ({self.samples[i].label})" for i in g.members[:3]
            )
            lines.append(f"  same image under different labels: {files}")
        leaks = self.leaks()
        if leaks:
            lines.append(
                f"  LEAK: {len(leaks)} duplicate group(s) span your predefined splits; the split is kept as "
                "given (headstart never moves your files). `headstart doctor` lists them in its exclude.txt: "
                "--exclude would drop the copies outside train"
            )
        imbalance = self.imbalance()
        if imbalance.get("suggestion"):
            lines.append(f"  imbalance: {imbalance['suggestion']}")
        if self.label_issues:
            lines.append(f"  {len(self.label_issues)} likely mislabeled image(s) (confident learning)")
        lines += [f"  note: {note}" for note in self.notes]
        return lines


def exclude_copies(report: CheckReport) -> list[tuple[int, str]]:
    """Which copies to drop so no duplicate group crosses a split or a label.

    Leak: keep the train copies (or the first split's), drop the others. Conflicting labels:
    drop them all (which label is right is for a person to say).
    """
    out: list[tuple[int, str]] = []
    order = {"train": 0, "val": 1, "test": 2}
    for g in report.groups:
        labels = {report.samples[i].label for i in g.members}
        if len(labels) > 1:
            out += [(i, "duplicate with conflicting labels") for i in g.members]
            continue
        splits = {s for i in g.members if (s := report.samples[i].split) is not None}
        if len(splits) > 1:
            keep = min(splits, key=lambda s: order.get(s, 9))
            out += [
                (i, f"leak: copy of a {keep} image") for i in g.members if report.samples[i].split != keep
            ]
    return out


def report_dict(report: CheckReport, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``doctor.json`` content."""
    exclude = [
        {"path": b["path"], "reason": b["reason"]} for b in report.bad_files if b["severity"] == "error"
    ]
    exclude += [{"path": r["path"], "reason": "likely mislabeled"} for r in report.label_issues]
    exclude += [{"path": report.samples[i].path, "reason": why} for i, why in exclude_copies(report)]
    seen: set[str] = set()
    exclude = [e for e in exclude if not (e["path"] in seen or seen.add(e["path"]))]  # type: ignore[func-returns-value]
    groups = report.group_records()
    return {
        "summary": {
            "images": len(report.samples) + sum(b["severity"] == "error" for b in report.bad_files),
            "usable": len(report.samples),
            "bad_files": sum(b["severity"] == "error" for b in report.bad_files),
            "warnings": sum(b["severity"] == "warning" for b in report.bad_files),
            "exact_duplicate_groups": sum(g["kind"] == "exact" for g in groups),
            "near_duplicate_groups": sum(g["kind"] == "near" for g in groups),
            "images_in_duplicate_groups": sum(len(g["files"]) for g in groups),
            "cross_class_groups": sum(g["cross_class"] for g in groups),
            "cross_split_groups": sum(g["cross_split"] for g in groups),
            "label_issues": len(report.label_issues),
            "notes": report.notes,
        },
        "bad_files": report.bad_files,
        "duplicates": groups,
        "label_issues": report.label_issues,
        "confused_pairs": report.confused_pairs,
        "class_counts": report.class_counts,
        "imbalance": report.imbalance(),
        "exclude_suggested": exclude,
        "settings": settings or {},
        "timings": report.seconds,
    }
