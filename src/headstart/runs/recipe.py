"""An earlier run's recipe and split (``train --from RUN``): retrain as RUN did, without a search.

The recipe is what RUN's ``metrics.json`` records of the model it kept: the strategy (auto's
winner, resolved to ``feature-extraction`` or ``finetune``), the backbone, the features (layers,
TTA), the head and its chosen ``C`` (the sweep starts there), and the fine-tuning settings. The
split is RUN's ``split.csv``: every image still in the data keeps its split there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.core.errors import HeadstartError
from headstart.core.io import read_rows

FINETUNE_SETTINGS = {  # FineTuneSettings field -> ImageClassifier parameter
    "unfreeze": "unfreeze",
    "epochs": "epochs",
    "steps": "steps",
    "lr": "lr",
    "batch_size": "train_batch_size",
    "augment": "augment",
    "class_weight": "class_weight",
    "patience": "patience",
    "precision": "precision",
}


@dataclass
class Recipe:
    """``ImageClassifier`` parameters that rebuild RUN's model, and what could not be carried."""

    run_dir: Path
    params: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def run_folder(run: str | Path) -> Path:
    """The run folder of ``run`` (the folder itself, or its ``model.safetensors``)."""
    path = Path(run).expanduser()
    folder = path.parent if path.is_file() else path
    if not (folder / "metrics.json").is_file():
        raise HeadstartError(f"--from {run}: not a training run folder (no metrics.json in {folder})")
    return folder


def read_recipe(run: str | Path) -> Recipe:
    """RUN's recipe (see the module's docstring); multi-label runs and fine-tuned ensembles are
    carried as far as one network's parameters go, with a note."""
    folder = run_folder(run)
    metrics = json.loads((folder / "metrics.json").read_text())
    strategy = metrics.get("strategy", "feature-extraction")
    features = metrics.get("features") or {}
    params: dict[str, Any] = {
        "strategy": strategy,
        "backbone": features.get("backbone") or metrics["backbone"]["name"],
        "head": (metrics.get("head") or {}).get("name", "logistic"),
    }
    notes: list[str] = []
    if features:
        params["tta"] = features.get("tta", "none")
        if strategy != "finetune":
            params["features"] = features.get("layers", "last")
    split = (metrics.get("data") or {}).get("split") or {}
    if "seed" in split:
        params["seed"] = int(split["seed"])
    if split.get("fractions"):
        params["split"] = tuple(float(f) for f in split["fractions"])
    head_params = _head_params(metrics.get("head") or {}, strategy)
    if head_params is not None:
        params["head_params"] = head_params
    if strategy == "finetune":
        params.update(_finetune_params(metrics.get("finetune") or {}, notes))
        if "+" in params["backbone"]:
            params["backbone"] = params["backbone"].split("+")[0]
            notes.append("RUN averaged several fine-tuned networks: one is tuned again")
    return Recipe(folder, params, notes)


def _head_params(head: dict[str, Any], strategy: str) -> dict[str, Any] | None:
    """The logistic head's sweep around RUN's chosen C (it still widens if the best moves);
    fine-tuning's probe as fine-tuning fits it (on train only)."""
    fitted_c = (head.get("fit") or {}).get("C") or (head.get("params") or {}).get("C")
    if head.get("name") != "logistic" or fitted_c is None:
        return None
    c = float(fitted_c)
    params: dict[str, Any] = {"cs": (c / 3, c, c * 3)}  # the best inside the grid: no widening
    if strategy == "finetune":
        params["refit"] = False
    return params


def _finetune_params(info: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    settings = info.get("settings") or {}
    if not settings:
        notes.append("RUN recorded no fine-tuning settings: the defaults are used")
    out = {
        param: settings[name] for name, param in FINETUNE_SETTINGS.items() if settings.get(name) is not None
    }
    if out.get("class_weight") == "none":
        out["class_weight"] = None
    return out


def recorded_split(run: str | Path) -> dict[str, str]:
    """RUN's ``split.csv`` as relative path -> ``train``/``val``/``test`` (empty where absent)."""
    rows = read_rows(run_folder(run) / "split.csv")
    return {r["path"]: r["split"] for r in rows if r.get("path") and r.get("split")}


__all__ = ["Recipe", "read_recipe", "recorded_split", "run_folder"]
