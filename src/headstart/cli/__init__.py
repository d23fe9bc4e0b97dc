"""The ``headstart`` command line: parses flags, calls the estimator and workflows, prints results."""

from headstart.cli.app import app, main

__all__ = ["app", "main"]
