"""headstart's default (``--strategy auto``) against fastai's ``vision_learner(...).fine_tune(2)``,
in one run, on the same machine, the same Lite0 weights, the same split and the same cores.

    flock /work/wt/cpu.lock python benchmarks/vs_fastai.py ../shared/datasets/flower_photos \\
        --fastai-lib /tmp/fastai-lib

fastai is never a headstart dependency: install it into a folder of its own that reuses this
environment's torch, torchvision, numpy, scikit-learn and matplotlib (nothing here changes):

    python -m pip install --target /tmp/fastai-lib --no-deps fastai==2.8.12 fastcore "fastprogress<1.1" \\
        fastdownload fasttransform "plum-dispatch<2.10" beartype pandas pytz requests urllib3 charset-normalizer

(fastprogress 1.1 needs python-fasthtml; 1.0 does not.) fastai's part runs in a subprocess with
``PYTHONPATH=FASTAI_LIB``.

What is the same for both:

- weights: headstart's packaged offline tf_efficientnet_lite0 weights, loaded into the timm model
  fastai trains (``vision_learner(dls, "tf_efficientnet_lite0", pretrained=False)``, then the body's
  state dict; the ImageNet normalisation fastai adds for pretrained models is added by hand);
- split: headstart's ``split.csv`` of this run: fastai trains on its train images, validates on its
  val images, and both are scored on its test images;
- cores: torch threads = the usable cores, for both;
- caches: headstart starts from an empty feature cache (``--cache-dir`` in a fresh folder); fastai
  keeps none.

Wall time is the whole command of each (imports, data loading, training, the test evaluation).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from headstart.core.io import write_json, write_text
from headstart.core.system import cpu_summary, usable_core_count


def run_headstart(data: Path, work: Path, extra: list[str]) -> dict:
    """``headstart train DATA`` as a newcomer types it (plus a fresh cache): test accuracy, seconds."""
    out = work / "headstart-run"
    command = [sys.executable, "-m", "headstart", "train", str(data), "--out", str(out)]
    command += ["--cache-dir", str(work / "cache"), *extra]
    t0 = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - t0
    metrics = json.loads((out / "metrics.json").read_text())
    auto = metrics.get("auto", {})
    return {
        "test_accuracy": metrics["test"]["accuracy"],
        "n_test": metrics["test"]["n"],
        "seconds": seconds,
        "strategy": metrics["strategy"],
        "winner": auto.get("winner"),
        "run_dir": str(out),
    }


def fastai_spec(data: Path, run_dir: Path, work: Path, epochs: int) -> Path:
    """The split of headstart's run, as absolute paths, for fastai's subprocess."""
    with open(run_dir / "split.csv", newline="", encoding="utf-8") as f:
        rows = [
            {"path": str((data / r["path"]).resolve()), "label": r["label"], "split": r["split"]}
            for r in csv.DictReader(f)
        ]
    spec = work / "fastai_spec.json"
    write_json(spec, {"rows": rows, "epochs": epochs, "threads": usable_core_count(), "out": str(work)})
    return spec


def run_fastai(spec: Path, fastai_lib: Path) -> dict:
    """This file's ``fastai_part`` in a subprocess that sees fastai: its results, its wall time."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(fastai_lib), env.get("PYTHONPATH", "")) if p)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--fastai-part", str(spec)], check=True, env=env)
    seconds = time.perf_counter() - t0
    result = json.loads((spec.parent / "fastai_result.json").read_text())
    return {**result, "seconds": seconds}


def fastai_part(spec_path: Path) -> None:
    """fastai's standard recipe on headstart's split and weights (runs in the subprocess)."""
    import pandas as pd
    import torch
    from fastai.vision.all import (
        ImageDataLoaders,
        Normalize,
        Resize,
        accuracy,
        aug_transforms,
        vision_learner,
    )

    from headstart.models.backbones import DEFAULT_BACKBONE, create_backbone

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(int(spec["threads"]))
    frame = pd.DataFrame(spec["rows"])
    fit_rows = frame[frame.split != "test"].assign(is_valid=lambda d: d.split == "val")
    backbone = create_backbone(DEFAULT_BACKBONE)
    mean, std = backbone.data_config["mean"], backbone.data_config["std"]
    size = int(backbone.data_config["input_size"][-1])
    dls = ImageDataLoaders.from_df(
        fit_rows,
        path="/",
        fn_col="path",
        label_col="label",
        valid_col="is_valid",
        item_tfms=Resize(size),
        batch_tfms=[*aug_transforms(size=size), Normalize.from_stats(mean, std)],
    )  # fastai's defaults otherwise (batch 64, its loader workers)
    learn = vision_learner(dls, DEFAULT_BACKBONE, pretrained=False, metrics=accuracy)
    missing = learn.model[0].model.load_state_dict(backbone.model.state_dict(), strict=False)
    assert not missing.missing_keys, missing.missing_keys
    learn.fine_tune(int(spec["epochs"]))
    test = frame[frame.split == "test"]
    test_dl = dls.test_dl(test, with_labels=True)
    proba, targets = learn.get_preds(dl=test_dl)
    acc = float((proba.argmax(1) == targets).float().mean())
    import fastai

    out = {"test_accuracy": acc, "n_test": len(test), "fastai": fastai.__version__, "epochs": spec["epochs"]}
    write_json(Path(spec["out"]) / "fastai_result.json", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="?")
    parser.add_argument("--fastai-lib", type=Path, default=Path("/tmp/fastai-lib"))
    parser.add_argument("--epochs", type=int, default=2, help="fastai's fine_tune(EPOCHS)")
    parser.add_argument("--headstart-args", default="", help="more flags for headstart train (quoted)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/vs_fastai_results.json"))
    parser.add_argument("--fastai-part", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fastai_part:
        fastai_part(args.fastai_part)
        return
    if args.data is None:
        parser.error("DATA is required")
    print(f"CPU: {cpu_summary()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vs_fastai_") as tmp:
        work = Path(tmp)
        ours = run_headstart(args.data.resolve(), work, args.headstart_args.split())
        spec = fastai_spec(args.data.resolve(), Path(ours["run_dir"]), work, args.epochs)
        theirs = run_fastai(spec, args.fastai_lib)
    table = [
        "| | test accuracy | wall time |",
        "|---|---|---|",
        f"| headstart train (default: auto, won by {ours['winner']}) | {ours['test_accuracy']:.4f} "
        f"({ours['n_test']} images) | {ours['seconds']:.0f} s |",
        f"| fastai {theirs['fastai']} vision_learner(...).fine_tune({args.epochs}) | {theirs['test_accuracy']:.4f} "
        f"({theirs['n_test']} images) | {theirs['seconds']:.0f} s |",
        f"time ratio fastai / headstart: {theirs['seconds'] / ours['seconds']:.2f}",
    ]
    print(f"CPU: {cpu_summary()}\n" + "\n".join(table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"cpu": cpu_summary(), "headstart": ours, "fastai": theirs})
    write_text(args.out.with_suffix(".md"), f"CPU: {cpu_summary()}\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
