"""``headstart review RUN``: the review app over a run folder (``headstart.review``), on this machine.

Registered by ``cli.app``; kept apart so the command's flags and start-up lines live beside it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from headstart.cli.options import CacheDir, EngineChoice, Quiet, ServePort

REVIEW_HOST = "127.0.0.1"  # the app has no login and shows the user's photos: this machine only


def review(
    run: Annotated[Path, typer.Argument(help="A run folder (headstart train --out).")],
    port: ServePort = 8765,
    cache_dir: CacheDir = None,
    engine: EngineChoice = "auto",
    quiet: Quiet = False,
) -> None:
    """Review what a run got wrong, image by image, in a local web page (127.0.0.1).

    Queues: likely wrong labels, confident errors, duplicates and conflicts, images the model
    turns down or is unsure of. Every decision (relabel, exclude, keep) is saved at once to
    RUN/corrections.csv, for `headstart train DATA --corrections RUN/corrections.csv`.
    """
    import uvicorn

    from headstart.review import create_review_app, load_review_run

    started = time.perf_counter()

    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr)

    loaded = load_review_run(run, cache_dir, engine, say)
    app = create_review_app(loaded, background=True, log=say)
    queues = app.state.review.meta()["queues"]
    say(
        "queues: "
        + ", ".join(
            f"{q['title'].lower()} {q['count'] if q['count'] is not None else '(computing)'}" for q in queues
        )
    )
    say(
        f"review ready in {time.perf_counter() - started:.1f}s: http://{REVIEW_HOST}:{port}/ "
        f"(decisions go to {app.state.review.book.path}; Ctrl-C to stop)"
    )
    uvicorn.run(app, host=REVIEW_HOST, port=port, log_level="warning")
