"""The ``headstart`` command: train, evaluate, predict.

Errors the user can fix are printed as one line (``error: ...``) with exit code 2; no traceback.
A mistyped command or flag gets the usage line and a one-line ``Error: ...`` from typer, exit code 2.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from headstart.cli.options import (
    AllowedHosts,
    ApiKey,
    Augment,
    BackboneName,
    BatchSize,
    CacheDir,
    CheckData,
    ClassWeight,
    CorrectionsFile,
    EngineChoice,
    Epochs,
    ExcludeFile,
    ExportForce,
    ExportFormatChoice,
    ExportOut,
    ExportPrecisionChoice,
    ExportSource,
    FeaturePrecisionChoice,
    FeaturesChoice,
    Format,
    FromRun,
    HeadChoice,
    LabelledData,
    LabelsFrom,
    LearningRate,
    ListFormatChoice,
    MaxBatch,
    MaxUploadMb,
    MeasureSpeed,
    ModelFile,
    MultiLabel,
    Patience,
    ProcessCount,
    Quiet,
    RejectOption,
    ReportHeatmaps,
    ResumeRun,
    RunOut,
    Seed,
    ServeHost,
    ServePort,
    ServePrecision,
    SplitFractions,
    Steps,
    StrategyChoice,
    TargetAccuracy,
    TargetCoverage,
    TimeBudgetMinutes,
    TimedBatches,
    TopK,
    TrainData,
    TTAChoice,
    Unfreeze,
    WarmupBatches,
    WeightsFile,
)
from headstart.cli.review import review
from headstart.core.choices import MapMethod, MapPoints, class_weight_value
from headstart.core.errors import HeadstartError, ParameterError
from headstart.core.io import terminal_safe
from headstart.estimator.classifier import ImageClassifier
from headstart.models.backbones import DEFAULT_BACKBONE
from headstart.runs.sort import SortMode

# The estimator's defaults are the flags' defaults: its signature is their one source.
DEFAULTS = {name: p.default for name, p in inspect.signature(ImageClassifier).parameters.items()}
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

# Library parameters set by a CLI flag of another name; the others share the command's parameter name.
PARAMETER_FLAGS = {
    "train_batch_size": "--batch-size",
    "head_params": "--head",
    "near_cosine": "--near",
    "k": "--top-k",
    "out_dir": "--out",
    "run_dir": "--resume",
    "verbose": "--quiet",
}


def flag_for(param: str, command: object = None) -> str:
    """The CLI flag (or ARGUMENT) that sets the library parameter ``param`` of ``command``.

    Library errors name Python parameters; the user typed flags, so the message names the flag.
    A parameter no flag sets keeps its Python name rather than naming a flag that does not exist.
    """
    if param in PARAMETER_FLAGS:
        return PARAMETER_FLAGS[param]
    for option in getattr(command, "params", []):
        if option.name == param:
            longest = max(option.opts, key=len)
            return longest if longest.startswith("-") else longest.upper()
    return param


def user_message(error: HeadstartError, command: object = None) -> str:
    """``error`` as the one line the CLI prints, with a parameter's name replaced by its flag."""
    if isinstance(error, ParameterError):
        return f"{flag_for(error.param, command)}: {error.message}"
    return str(error)


class HeadstartGroup(TyperGroup):
    """The command group: turns our errors into one line and an exit code inside the framework.

    Usage errors stay typer's (usage line, one-line ``Error:``, exit 2); a ``HeadstartError`` from a
    command becomes ``error: ...`` with exit 2 and Ctrl-C exit 130, by raising ``typer.Exit``, which
    every typer/click version handles in standalone mode.
    """

    def invoke(self, ctx: Any) -> object:  # typer's own Context class is private (typer._click)
        try:
            return super().invoke(ctx)
        except HeadstartError as error:
            name = ctx.invoked_subcommand
            command = self.get_command(ctx, name) if name else None
            # one line whatever the names in it hold (newlines, control characters)
            typer.echo(f"error: {terminal_safe(user_message(error, command), keep='')}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from error
        except KeyboardInterrupt as interrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from interrupt


app = typer.Typer(
    cls=HeadstartGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # plain click output: a usage error is the usage line and ONE line "Error: ..." (rich boxes wrap it)
    rich_markup_mode=None,
    help="Transfer learning for image classification: folder of photos in, tested model out.",
)


def _print_version(value: bool) -> None:
    """``--version``: the installed distribution's version (what pip installed), then exit; from a source
    tree that was never installed, the package's own ``__version__`` (pyproject.toml reads the same)."""
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("headstart")
        except PackageNotFoundError:
            from headstart import __version__ as number
        typer.echo(f"headstart {number}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Transfer learning for image classification: folder of photos in, tested model out."""


def _data_or_flowers(data: Optional[Path], cache_dir: Optional[Path]) -> Path:
    if data is not None:
        return data
    from headstart.data.download import fetch_flowers
    from headstart.features.cache import default_cache_dir

    return fetch_flowers(Path(cache_dir) if cache_dir else default_cache_dir())


def _check_train_values(batch_size: Optional[int], time_budget: Optional[float]) -> None:
    """Flags whose CLI meaning differs from the library parameter's (``None`` picks a default)."""
    if batch_size is not None and batch_size < 1:
        raise ParameterError("batch_size", f"must be at least 1 (got {batch_size})")
    if time_budget is not None and not time_budget > 0:
        raise ParameterError("time_budget", f"must be a number of minutes > 0 (got {time_budget:g})")


@app.command()
def train(
    ctx: typer.Context,
    data: TrainData = None,
    out: RunOut = Path("runs/latest"),
    backbone: BackboneName = DEFAULTS["backbone"],
    weights: WeightsFile = None,
    head: HeadChoice = DEFAULTS["head"],
    seed: Seed = DEFAULTS["seed"],
    split: SplitFractions = ",".join(str(f) for f in DEFAULTS["split"]),
    labels_from: LabelsFrom = DEFAULTS["labels_from"],
    top_k: TopK = DEFAULTS["top_k"],
    engine: EngineChoice = DEFAULTS["engine"],
    feature_precision: FeaturePrecisionChoice = DEFAULTS["feature_precision"],
    features: FeaturesChoice = DEFAULTS["features"],
    tta: TTAChoice = DEFAULTS["tta"],
    batch_size: BatchSize = None,
    cache_dir: CacheDir = None,
    quiet: Quiet = False,
    exclude: ExcludeFile = None,
    check_data: CheckData = DEFAULTS["check_data"],
    strategy: StrategyChoice = DEFAULTS["strategy"],
    unfreeze: Unfreeze = DEFAULTS["unfreeze"],
    epochs: Epochs = DEFAULTS["epochs"],
    steps: Steps = DEFAULTS["steps"],
    lr: LearningRate = DEFAULTS["lr"],
    augment: Augment = DEFAULTS["augment"],
    class_weight: ClassWeight = DEFAULTS["class_weight"] or "none",
    patience: Patience = DEFAULTS["patience"],
    time_budget: TimeBudgetMinutes = None,
    multi_label: MultiLabel = DEFAULTS["multi_label"],
    reject: RejectOption = DEFAULTS["reject"],
    target_accuracy: TargetAccuracy = DEFAULTS["target_accuracy"],
    target_coverage: TargetCoverage = DEFAULTS["target_coverage"],
    report_heatmaps: ReportHeatmaps = DEFAULTS["report_heatmaps"],
    nproc: ProcessCount = 1,
    resume: ResumeRun = None,
    corrections: CorrectionsFile = None,
    from_run: FromRun = None,
) -> None:
    """Train a classifier on DATA; write RUN_DIR/model.safetensors and RUN_DIR/metrics.json."""
    flags = dict(locals())  # first: the flags only
    del flags["ctx"]
    from headstart.training.distributed import launch, launched_by_torchrun, without_flag

    if nproc < 1:
        raise ParameterError("nproc", f"must be at least 1 (got {nproc})")
    if nproc > 1 and not launched_by_torchrun():  # each worker runs this command, less --nproc
        raise typer.Exit(launch(nproc, without_flag(sys.argv[1:], "--nproc")))
    if resume is not None:
        ImageClassifier.resume(resume, verbose=not quiet)
        return
    _check_train_values(batch_size, time_budget)
    params = _train_params(flags)
    if from_run is not None:
        given = {name for name in flags if _given_on_command_line(ctx, name)}
        clf = ImageClassifier.from_run(from_run, **_recipe_overrides(params, given))
        data = data if data is not None else _run_data(from_run)
    else:
        clf = ImageClassifier(**params)
    clf.fit(_data_or_flowers(data, cache_dir), out_dir=out)


def _run_data(run: Path) -> Path:
    """The data an earlier run trained on (``--from RUN`` without DATA)."""
    from headstart.runs.recipe import run_folder

    metrics = json.loads((run_folder(run) / "metrics.json").read_text())
    return Path(metrics["data"]["source"])


def _given_on_command_line(ctx: Any, name: str) -> bool:
    """Whether the user typed the flag (a default does not override ``--from``'s recipe)."""
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _recipe_overrides(params: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """The parameters that replace ``--from``'s recipe: the flags given, and those that say how to
    run rather than what to train (cache, verbosity, corrections, the extraction engine)."""
    always = {
        "verbose",
        "cache_dir",
        "corrections",
        "engine",
        "labels_from",
        "check_data",
        "exclude",
        "weights",
    }
    out = {k: v for k, v in params.items() if k in given or k in always}
    if "batch_size" in given:
        out["train_batch_size"] = params["train_batch_size"]
    if "time_budget" not in given:
        out.pop("time_budget", None)
    return out


def _train_params(flags: dict[str, Any]) -> dict[str, Any]:
    """``train``'s flags as the estimator's parameters: enums to their values, minutes to seconds,
    and the one ``--batch-size`` flag to the extraction or the fine-tuning batch."""
    from headstart.data.splits import parse_split

    cli_only = {"data", "out", "quiet", "resume", "nproc", "from_run"}
    params = {k: v for k, v in flags.items() if k not in cli_only}
    batch_size = flags["batch_size"]
    params.update(
        split=parse_split(flags["split"]),
        verbose=not flags["quiet"],
        # fine-tuning (and auto, whose expensive candidates fine-tune) keep the extraction batch
        batch_size=DEFAULTS["batch_size"]
        if flags["strategy"] in ("finetune", "auto")
        else (batch_size or DEFAULTS["batch_size"]),
        train_batch_size=batch_size or DEFAULTS["train_batch_size"],
        class_weight=class_weight_value(flags["class_weight"]),
        # the flag is in minutes, the API in seconds
        time_budget=flags["time_budget"] * 60 if flags["time_budget"] else None,
        reject=_reject_value(flags["reject"]),
    )
    return params


def _reject_value(text: str) -> str | float:
    """``--reject``: ``off``, ``auto`` or a number (the estimator checks its range)."""
    if text in ("off", "auto"):
        return text
    try:
        return float(text)
    except ValueError:
        raise ParameterError(
            "reject", f"must be off, auto or a threshold between 0 and 1 (got {text!r})"
        ) from None


@app.command()
def doctor(
    data: LabelledData,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Folder for doctor.json, doctor.html, exclude.txt, corrections.csv."
        ),
    ] = Path("runs/doctor"),
    backbone: Annotated[
        str, typer.Option(help="Backbone whose (cached) features judge similarity and labels.")
    ] = DEFAULT_BACKBONE,
    weights: WeightsFile = None,
    labels_from: LabelsFrom = DEFAULTS["labels_from"],
    folds: Annotated[int, typer.Option(help="Cross-validation folds for the out-of-fold label check.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the cross-validation folds.")] = 0,
    near: Annotated[
        float, typer.Option(help="Feature cosine similarity from which two images are near duplicates.")
    ] = 0.95,
    engine: EngineChoice = DEFAULTS["engine"],
    cache_dir: CacheDir = None,
    quiet: Quiet = False,
) -> None:
    """Check DATA for broken files, duplicates, leaks, likely wrong labels and imbalance."""
    from headstart.runs.doctor import run_doctor

    _, lines = run_doctor(
        data,
        out,
        backbone=backbone,
        weights=weights,
        labels_from=labels_from,
        cache_dir=cache_dir,
        engine=engine,
        folds=folds,
        seed=seed,
        near_cosine=near,
        verbose=not quiet,
    )
    if not quiet:
        print("\n".join(terminal_safe(line) for line in lines), file=sys.stderr)


@app.command()
def evaluate(
    model: ModelFile,
    data: LabelledData,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for metrics.json and the confusion matrix.")
    ] = Path("runs/evaluate"),
    split: Annotated[
        str,
        typer.Option(
            help="auto: the saved test split if DATA is the training data, else all images; or all/test/val/train."
        ),
    ] = "auto",
    cache_dir: CacheDir = None,
    quiet: Quiet = False,
) -> None:
    """Evaluate a saved model on labelled images."""
    from headstart.estimator.classifier import load

    clf = load(model, cache_dir=cache_dir, verbose=not quiet)
    clf.evaluate(data, out_dir=out, split=split)


@app.command()
def predict(
    model: ModelFile,
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 3,
    format: Annotated[Format, typer.Option("--format", "-f")] = "table",
    cache_dir: CacheDir = None,
    annotate: Annotated[
        Optional[Path],
        typer.Option(
            help="Also save each image with its top-k drawn on it into this folder, plus index.html."
        ),
    ] = None,
    explain: Annotated[
        Optional[Path],
        typer.Option(help="Also save each image with a heatmap of where the model found its answer (PNG)."),
    ] = None,
) -> None:
    """Top-k labels with probabilities for each image."""
    from headstart.estimator.classifier import load

    if top_k < 1:
        raise ParameterError("k", f"must be at least 1 (got {top_k})")
    clf = load(model, cache_dir=cache_dir, verbose=False)
    results = clf.predict_top_k(paths, k=top_k)
    if format == "json":
        # a non-UTF-8 file name becomes a \\udcXX escape: valid JSON that reads back exact
        _write_stdout(json.dumps(results, indent=2, ensure_ascii=False) + "\n", "backslashreplace")
    elif format == "csv":
        _write_stdout(_predictions_csv(results), "surrogateescape")
    else:
        _print_table(results, min(top_k, len(clf.classes_)))
    bad = [r for r in results if r.get("error")]
    if bad:
        print(f"{len(bad)} of {len(results)} file(s) could not be read", file=sys.stderr)
    if len(bad) == len(results):
        raise HeadstartError(
            "no image could be read" if results else "no image files found in the paths given"
        )
    if annotate is not None:
        from headstart.core.progress import ConsoleProgress
        from headstart.reporting.annotate import annotate_predictions

        index = annotate_predictions(
            results, annotate, f"Predictions of {Path(model).name}", ConsoleProgress()
        )
        print(f"annotated images and contact sheet: {index}", file=sys.stderr)
    if explain is not None:
        _write_explanations(clf, [r["path"] for r in results if not r.get("error")], explain)


def _write_explanations(clf: ImageClassifier, paths: list[str], out_dir: Path) -> None:
    """``predict --explain DIR``: an overlay PNG per image, of the model's most probable class."""
    from headstart.data.images import decode_image, read_bytes
    from headstart.reporting.overlay import overlay_name, write_overlay

    written = 0
    for i, path in enumerate(paths):
        (e,) = clf.explain([path])
        if e.heatmap is None or e.label is None:
            continue
        image = decode_image(read_bytes(path))
        write_overlay(out_dir, overlay_name(path, e.label, i), image, e.heatmap)
        written += 1
    print(f"{written} explanation overlay(s) in {out_dir}", file=sys.stderr)


def _write_stdout(text: str, errors: str) -> None:
    """``text`` to stdout as UTF-8; ``errors`` says what becomes of non-UTF-8 file names."""
    data = text.encode("utf-8", errors)
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        buffer.write(data)
        buffer.flush()
    else:
        sys.stdout.write(data.decode("utf-8", "replace"))


def _predictions_csv(results: list[dict[str, Any]]) -> str:
    """predict's CSV: names are data, so a cell that starts like a formula is protected."""
    from headstart.core.io import protect_cell

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["path", "rank", "label", "probability", "error", "labels", "unknown", "score"])
    for r in results:
        if r.get("error"):
            writer.writerow([protect_cell(r["path"]), "", "", "", protect_cell(r["error"]), "", "", ""])
        answer = [
            protect_cell(";".join(r.get("labels", []))),
            str(r.get("unknown", False)).lower(),
            "" if r.get("score") is None else f"{r['score']:.6f}",
        ]
        for rank, p in enumerate(r["predictions"], start=1):
            writer.writerow(
                [
                    protect_cell(r["path"]),
                    rank,
                    protect_cell(p["label"]),
                    f"{p['probability']:.6f}",
                    "",
                    *answer,
                ]
            )
    return out.getvalue()


def _print_table(results: list[dict[str, Any]], columns: int) -> None:
    """predict's table: file and class names are shown as they are, never read as rich markup,
    emoji codes or terminal control characters."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    def shown(text: str) -> str:
        return escape(terminal_safe(text, keep=""))

    table = Table(show_header=True, header_style="bold")
    table.add_column("image", overflow="fold")
    for rank in range(1, columns + 1):
        table.add_column(f"#{rank}")
    table.add_column("answer")
    for r in results:
        cells = [f"{shown(p['label'])} {p['probability']:.1%}" for p in r["predictions"]]
        cells += [""] * (columns - len(cells)) + [_answer_cell(r, shown)]
        if r.get("error"):
            cells = [f"[red]skipped: {shown(r['error'])}[/red]"]
        path = os.path.relpath(r["path"]) if not r["path"].startswith("..") else r["path"]
        table.add_row(shown(path), *cells)
    Console(width=max(100, Console().width), emoji=False, highlight=False).print(table)


def _answer_cell(result: dict[str, Any], shown: Callable[[str], str]) -> str:
    """The table's answer: the accepted labels, or unknown (with the score that turned it down)."""
    score = f" (score {result['score']:.2f})" if result.get("score") is not None else ""
    if result.get("unknown"):
        return f"[yellow]unknown{score}[/yellow]"
    return ", ".join(shown(label) for label in result.get("labels", [])) + score


@app.command()
def sort(
    model: ModelFile,
    photos: Annotated[Path, typer.Argument(help="Folder of photos to sort (read only, never written).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the class folders and sorted.csv.")],
    mode: Annotated[
        SortMode,
        typer.Option(help="link: hard links (a copy where the file system cannot), copy, or symlink."),
    ] = "link",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write sorted.csv only; place no file.")] = False,
    cache_dir: CacheDir = None,
    quiet: Quiet = False,
    nproc: Annotated[
        int, typer.Option(help="Processes sharing the feature extraction (starts torchrun; 1: no launcher).")
    ] = 1,
) -> None:
    """Sort the images under PHOTOS into OUT/<class>/ and OUT/_unknown/, listed in OUT/sorted.csv."""
    from headstart.core.progress import ConsoleProgress, NullProgress
    from headstart.estimator.classifier import load
    from headstart.runs.sort import SortJob, sort_photos
    from headstart.training.distributed import launch, launched_by_torchrun, process_group, without_flag

    if nproc < 1:
        raise ParameterError("nproc", f"must be at least 1 (got {nproc})")
    if nproc > 1 and not launched_by_torchrun():  # each worker runs this command, less --nproc
        raise typer.Exit(launch(nproc, without_flag(sys.argv[1:], "--nproc")))
    clf = load(model, cache_dir=cache_dir, verbose=False)
    k = len(clf.classes_)
    job = SortJob(photos, out, mode, dry_run)
    if launched_by_torchrun():  # every rank extracts its share of each batch; rank 0 writes
        with process_group() as group:
            job.writes = group.is_main
            job.progress = ConsoleProgress() if group.is_main and not quiet else NullProgress()
            summary = sort_photos(lambda paths: clf.predict_top_k(paths, k=k), clf.classes_, job)
    else:
        job.progress = NullProgress() if quiet else ConsoleProgress()
        summary = sort_photos(lambda paths: clf.predict_top_k(paths, k=k), clf.classes_, job)
    if job.writes and not quiet:
        counts = ", ".join(f"{terminal_safe(f)} {n}" for f, n in sorted(summary.per_folder.items()))
        how = ", ".join(f"{h} {n}" for h, n in sorted(summary.placed.items()) if n)
        print(
            f"sorted {summary.n_images - summary.n_skipped} of {summary.n_images} images into {out}: {counts}"
            + (f" ({how})" if how else "")
            + (f"; {summary.n_skipped} skipped (skipped.csv)" if summary.n_skipped else ""),
            file=sys.stderr,
        )


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by train or evaluate.")],
    method: Annotated[
        Optional[MapMethod],
        typer.Option(help="Recompute the feature map with this method (default: keep the saved map)."),
    ] = None,
    points: Annotated[
        Optional[MapPoints],
        typer.Option(help="Map the test images or all images of the run (all: train, val and test)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the map.")] = 0,
    cache_dir: CacheDir = None,
    quiet: Quiet = False,
) -> None:
    """Rebuild RUN_DIR/report.html from the saved run files (no retraining)."""
    import time

    from headstart.estimator.remap import remap_run
    from headstart.reporting.run_report import MAP_JSON, build_report

    if not run_dir.is_dir():
        raise HeadstartError(f"run folder not found: {run_dir}")
    t0 = time.perf_counter()
    if method is not None or points is not None:
        saved = json.loads((run_dir / MAP_JSON).read_text()) if (run_dir / MAP_JSON).is_file() else {}
        info = remap_run(
            run_dir,
            method or saved.get("method", "tsne"),
            points or saved.get("points", "test"),
            seed,
            cache_dir,
            not quiet,
        )
        if not quiet:
            print(
                f"feature map: {info['method']} of {info['n']} images in {info['seconds']:.1f}s",
                file=sys.stderr,
            )
    path = build_report(run_dir)
    if not quiet:
        print(
            f"report: {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="The earlier run folder (A).")],
    run_b: Annotated[Path, typer.Argument(help="The later run folder (B).")],
    data: Annotated[
        Optional[Path],
        typer.Argument(help="Labelled images to compare on (default: RUN_B's test split with its labels)."),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out", "-o", help="Folder for compare.json and compare.html (default: RUN_B/compare)."
        ),
    ] = None,
    cache_dir: CacheDir = None,
    quiet: Quiet = False,
) -> None:
    """Both models on the same images and labels: accuracies with 95% intervals, per-class changes,
    the exact McNemar test, and the images B fixes and breaks (compare.json, compare.html)."""
    from headstart.estimator.compare import COMPARE_HTML, compare_runs, summary_lines

    result = compare_runs(run_a, run_b, data, out, cache_dir, verbose=not quiet)
    if not quiet:
        where = out if out is not None else Path(result["run_b"]) / "compare"
        lines = [*summary_lines(result), f"page: {where / COMPARE_HTML}"]
        print("\n".join(terminal_safe(line) for line in lines), file=sys.stderr)


@app.command()
def embed(
    data: LabelledData,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for map.png, map.html and map.csv.")
    ] = Path("runs/embed"),
    backbone: Annotated[
        str, typer.Option(help="Any timm model name; the default works offline.")
    ] = DEFAULT_BACKBONE,
    weights: WeightsFile = None,
    method: Annotated[MapMethod, typer.Option(help="tsne (openTSNE) or pca (fast).")] = "tsne",
    labels_from: LabelsFrom = DEFAULTS["labels_from"],
    seed: Annotated[int, typer.Option()] = 0,
    cache_dir: CacheDir = None,
    quiet: Quiet = False,
) -> None:
    """A 2-D map of every image's backbone features, coloured by class (features from the cache)."""
    from headstart.runs.embed import embed_map

    embed_map(data, out, backbone, weights, method, labels_from, seed, cache_dir, not quiet)


@app.command()
def export(
    model: ExportSource,
    out: ExportOut,
    format: ExportFormatChoice = "onnx",  # noqa: A002 - the flag's name
    precision: ExportPrecisionChoice = "fp32",
    force: ExportForce = False,
    quiet: Quiet = False,
) -> None:
    """Export a model to ONNX, OpenVINO, a web page, TFLite or Core ML: uint8 RGB images in, probabilities out."""
    from headstart.core.logs import log_run
    from headstart.export.exporter import export_model

    with log_run(None, verbose=not quiet):
        export_model(model, out, format, precision, force)


@app.command()
def serve(
    model: Annotated[
        Path,
        typer.Argument(help="An export folder (headstart export), or model.safetensors / its run folder."),
    ],
    host: ServeHost = "127.0.0.1",
    port: ServePort = 8000,
    max_batch: MaxBatch = 16,
    max_upload_mb: MaxUploadMb = 20,
    api_key: ApiKey = None,
    cache_dir: CacheDir = None,
    precision: ServePrecision = "auto",
    allowed_hosts: AllowedHosts = None,
) -> None:
    """Serve the model over HTTP: a REST API (/v1/predict, /v1/model) and a web page at /.

    A model or run folder is exported to OpenVINO first (in a subprocess, into the cache), so the
    server runs the exported file and never loads torch.
    """
    import uvicorn

    from headstart.serve import check_serve_settings, create_app
    from headstart.serve.guards import ConnectionLimits, default_allowed_hosts, server_config
    from headstart.serve.source import resolve_model

    check_serve_settings(max_batch, max_upload_mb, precision, api_key)
    export_dir = resolve_model(model, cache_dir)
    print(
        f"serving {export_dir} on http://{host}:{port}/ (API docs: /docs; memory: GET /healthz)",
        file=sys.stderr,
    )
    asgi = create_app(
        export_dir,
        max_batch=max_batch,
        max_upload_mb=max_upload_mb,
        api_key=api_key,
        precision=precision,
        allowed_hosts=allowed_hosts or default_allowed_hosts(host),
    )
    uvicorn.Server(server_config(asgi, host, port, ConnectionLimits())).run()


@app.command()
def backbones(
    measure: MeasureSpeed = True,
    batches: TimedBatches = 8,
    warmup: WarmupBatches = 2,
    batch_size: BatchSize = None,
    engine: EngineChoice = DEFAULTS["engine"],
    format: ListFormatChoice = "table",  # noqa: A002 - the flag's name
    cache_dir: CacheDir = None,
) -> None:
    """The backbones headstart knows: offline or hub, input size, parameters, ImageNet top-1, and
    images/s of the feature engine on this machine (synthetic pixels, after a warm-up)."""
    from headstart.features.zoo import SpeedTrial, backbone_table, list_backbones

    trial = SpeedTrial(batches=batches, warmup=warmup, batch_size=batch_size or 8, engine=engine)
    listing = list_backbones(measure, trial, cache_dir)
    if format == "json":
        _write_stdout(json.dumps(listing, indent=2) + "\n", "strict")
    else:
        _write_stdout(backbone_table(listing) + "\n", "replace")


app.command()(review)


def main() -> None:
    """Entry point: typer runs standalone (usage errors: usage line, one-line error, exit 2)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    app()


if __name__ == "__main__":
    main()
