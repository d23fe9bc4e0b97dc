"""The command line's options, defined once as typed aliases, so a command's signature is one line
per flag and two commands that share a flag share its name, type and help."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from headstart.core.choices import (
    Engine,
    ExportFormat,
    ExportPrecision,
    FeatureLayers,
    FeaturePrecision,
    HeadName,
    InferencePrecision,
    Strategy,
    TestTimeAugmentation,
)

# Output formats are the CLI's own choices (the library returns values, not text).
Format = Literal["table", "json", "csv"]
ListFormat = Literal["table", "json"]


TrainData = Annotated[
    Optional[Path],
    typer.Argument(
        help="Folder of class sub-folders, split folders, or a CSV of path,label. "
        "Omitted: the TensorFlow flowers photos are downloaded."
    ),
]
LabelledData = Annotated[Path, typer.Argument(help="Labelled images, as for train.")]
ModelFile = Annotated[Path, typer.Argument(help="model.safetensors (or its run folder).")]
RunOut = Annotated[
    Path, typer.Option("--out", "-o", help="Run folder for the model, metrics and report files.")
]
BackboneName = Annotated[str, typer.Option(help="Any timm model name; the default works offline.")]
WeightsFile = Annotated[
    Optional[Path], typer.Option(help="Local weights file (safetensors or torch state dict) for --backbone.")
]
HeadChoice = Annotated[HeadName, typer.Option(help="Head trained on the cached features.")]
Seed = Annotated[int, typer.Option(help="Fixes the split and the training.")]
SplitFractions = Annotated[
    str, typer.Option(help="train,val,test fractions when the data has no split folders.")
]
LabelsFrom = Annotated[str, typer.Option(help="auto, folder, filename or csv.")]
TopK = Annotated[int, typer.Option(help="k of the top-k accuracy.")]
EngineChoice = Annotated[Engine, typer.Option(help="Runtime for feature extraction.")]


FeaturePrecisionChoice = Annotated[
    FeaturePrecision,
    typer.Option(
        "--precision",
        help="Feature-extraction numerics: auto (the engine's fp32, or bf16 where the CPU has it) or int8 "
        "(the backbone quantised, calibrated on 300 of the images; features cached apart; saved with "
        "the model, so predict extracts the same way).",
    ),
]
BatchSize = Annotated[
    Optional[int],
    typer.Option(
        help="Images per batch: extraction (default 8), or fine-tuning and auto's fine-tuning (default 32)."
    ),
]
CacheDir = Annotated[
    Optional[Path], typer.Option(help="Feature cache (default ~/.cache/headstart or $HEADSTART_CACHE).")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q")]
MeasureSpeed = Annotated[
    bool,
    typer.Option(
        "--measure/--no-measure",
        help="Time each backbone available here (export, compile, then the timed run).",
    ),
]
TimedBatches = Annotated[int, typer.Option(help="Batches timed per backbone (synthetic pixels).")]
WarmupBatches = Annotated[int, typer.Option(help="Batches run per backbone before the clock starts.")]
ListFormatChoice = Annotated[ListFormat, typer.Option("--format", help="table or json.")]
ExcludeFile = Annotated[
    Optional[Path],
    typer.Option(
        help="Files to leave out: a text file of paths (one a line, # comments), a CSV with a path column, "
        "or the doctor's exclude.txt/doctor.json. Your files are not touched."
    ),
]
CheckData = Annotated[
    bool,
    typer.Option(
        "--check-data/--no-check-data",
        help="Quick data check (duplicates, conflicts, leaks) with duplicate groups kept on one side of the split.",
    ),
]
StrategyChoice = Annotated[
    Strategy,
    typer.Option(
        help="auto (search probes, fine-tuning depths, backbones, TTA within --time-budget, judged on validation), "
        "feature-extraction (a head on cached features) or finetune (then train the backbone too)."
    ),
]
FeaturesChoice = Annotated[
    FeatureLayers,
    typer.Option(
        "--features",
        help="last (the backbone's pooled output) or multi (pooled activations of several block groups, "
        "concatenated; the head chooses among them).",
    ),
]
TTAChoice = Annotated[
    TestTimeAugmentation,
    typer.Option("--tta", help="Test-time augmentation: none or flip (image and mirror, features averaged)."),
]
MultiLabel = Annotated[
    Optional[bool],
    typer.Option(
        "--multi-label/--single-label",
        help="Several labels per image (CSV path,labels with labels separated by ';'). Default: detected.",
    ),
]
RejectOption = Annotated[
    str,
    typer.Option(
        help="Answer 'unknown' for images unlike the classes: off, auto (threshold chosen on validation "
        "for --target-accuracy) or a score threshold between 0 and 1.",
    ),
]
TargetAccuracy = Annotated[
    float, typer.Option(help="--reject auto: the accuracy wanted on the images the model accepts.")
]
TargetCoverage = Annotated[
    float,
    typer.Option(
        help="--reject auto: the least share of known validation images accepted (0.95: the threshold "
        "turns down up to 5% of them, so images unlike every class are turned down even when the model "
        "is accurate; 1: --target-accuracy alone)."
    ),
]
ReportHeatmaps = Annotated[
    bool,
    typer.Option(
        "--report-heatmaps",
        help="Show each misclassified test image's class activation map in the report (runs the "
        "network once more per error, in torch: seconds on a warm re-run).",
    ),
]
ProcessCount = Annotated[
    int,
    typer.Option(
        help="Processes for distributed training on this machine (starts torchrun; 1: no launcher)."
    ),
]
Unfreeze = Annotated[str, typer.Option(help="finetune: head, last:N (block groups), half or all.")]
Epochs = Annotated[int, typer.Option(help="finetune: most epochs (early stopping may end sooner).")]
Steps = Annotated[
    Optional[int],
    typer.Option(
        help="finetune: optimiser steps in all instead of epochs (images seen = steps x batch size); "
        "evaluated every half of them or every epoch, the sooner."
    ),
]
LearningRate = Annotated[
    float, typer.Option(help="finetune: the head's learning rate; backbone layers get less.")
]
Augment = Annotated[
    str, typer.Option(help="finetune: default (crop+flip), keras, randaugment, trivialaugment or none.")
]
ClassWeight = Annotated[str, typer.Option(help="finetune: none or balanced (for imbalanced classes).")]
Patience = Annotated[int, typer.Option(help="finetune: epochs without a better val_loss before stopping.")]
TimeBudgetMinutes = Annotated[
    Optional[float],
    typer.Option(
        help="finetune and auto: wall-clock budget in minutes; stops cleanly with the best model (auto: 3)."
    ),
]
ResumeRun = Annotated[
    Optional[Path],
    typer.Option(
        help="finetune: continue the interrupted run in this folder (DATA and options come from it)."
    ),
]


ExportSource = Annotated[Path, typer.Argument(help="A model.safetensors file or the run folder holding it.")]
ExportFormatChoice = Annotated[
    ExportFormat,
    typer.Option(
        "--format",
        "-f",
        help="onnx (model.onnx), openvino (model.xml + model.bin), web (model.onnx + index.html that runs it in a browser), tflite (model.tflite) or coreml (model.mlpackage).",
    ),
]
ExportPrecisionChoice = Annotated[
    ExportPrecision,
    typer.Option(help="fp32, fp16, or int8 (calibrated on up to 300 of the model's training images)."),
]
ExportOut = Annotated[
    Path, typer.Option("--out", "-o", help="Folder for the model file, labels.txt and export.json.")
]
ExportForce = Annotated[
    bool, typer.Option("--force", help="int8: keep the model even if it loses over 1 point of test accuracy.")
]
ServeHost = Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")]
ServePort = Annotated[int, typer.Option(help="TCP port.")]
MaxBatch = Annotated[
    int,
    typer.Option(
        help="Most images in one model call; the server batches up to the size this CPU runs fastest, "
        "measured at startup (1 turns micro-batching off)."
    ),
]
MaxUploadMb = Annotated[float, typer.Option(help="Most megabytes one request may send (all its files).")]
ApiKey = Annotated[
    Optional[str],
    typer.Option(
        envvar="HEADSTART_API_KEY",
        help="Require this key on /v1/ requests (Authorization: Bearer KEY or X-API-Key).",
    ),
]

AllowedHosts = Annotated[
    Optional[list[str]],
    typer.Option(
        "--allowed-hosts",
        metavar="HOST",
        help="A Host header the server answers (repeat for several; '*' for any). Default: the address it "
        "listens on and localhost, so a web page whose DNS name is rebound to this machine cannot use it.",
    ),
]


ServePrecision = Annotated[
    InferencePrecision,
    typer.Option(
        help="OpenVINO inference: auto (bf16 where the CPU has it natively, as predict's default engine) "
        "or fp32 (exact, slower)."
    ),
]
CorrectionsFile = Annotated[
    Optional[Path],
    typer.Option(
        help="A CSV path,action,label of relabels (action relabel, label the true class) and exclusions "
        "(action exclude), e.g. the review app's or the doctor's corrections.csv. Your files are not touched."
    ),
]
FromRun = Annotated[
    Optional[Path],
    typer.Option(
        "--from",
        help="Train with this earlier run's recipe (its winner's strategy, backbone, features, head, "
        "fine-tuning settings; no search) and keep its split for every image still there. Flags you give "
        "override the recipe.",
    ),
]
