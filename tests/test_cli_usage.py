"""A mistyped command, flag or value gets the usage line and one error line, exit code 2, no traceback.

Every command of the app is checked (enumerated from the typer app, so a new command is covered
too). Typer's in-process CliRunner runs the same standalone code path as the installed command; a
few subprocess runs of ``python -m headstart`` prove that.
"""

from __future__ import annotations

import enum
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from headstart.cli.app import app
from headstart.core.errors import HeadstartError, ParameterError

pytestmark = pytest.mark.cli

USAGE_ERROR = 2
ERROR_LINE = re.compile(r"^Error: \S.*$")


def commands() -> dict[str, typer.models.CommandInfo]:
    """Command name -> its typer registration, read from the app."""
    found = {}
    for info in app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        found[name] = info
    return found


COMMANDS = commands()


def parameter_types(name: str) -> dict[str, type]:
    """Python parameter name -> its annotated type (Optional and Annotated unwrapped)."""
    hints = typing.get_type_hints(COMMANDS[name].callback)
    types = {}
    for param, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        types[param] = args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint
    return types


def click_params(name: str) -> list:
    return typer.main.get_command(app).commands[name].params


def required_arguments(name: str) -> list:
    return [p for p in click_params(name) if p.param_type_name == "argument" and p.required]


def placeholder_arguments(name: str) -> list[str]:
    """A value for each required argument, so that only the flag under test is wrong."""
    return ["x" for _ in required_arguments(name)]


def bad_values(name: str) -> list[tuple[str, str]]:
    """(flag, value) pairs that the flag's type must refuse: a word for a number, an unknown choice."""
    types = parameter_types(name)
    cases = []
    for p in click_params(name):
        kind = types.get(p.name)
        if p.param_type_name != "option" or kind is None:
            continue
        flag = max(p.opts, key=len)
        if kind in (int, float):
            cases.append((flag, "abc"))
        elif typing.get_origin(kind) is typing.Literal or (
            isinstance(kind, type) and issubclass(kind, enum.Enum)
        ):
            cases.append((flag, "nope"))
    return cases


def run(args: list[str]):
    return CliRunner().invoke(app, args)


def assert_usage_error(exit_code: int, output: str) -> None:
    assert exit_code == USAGE_ERROR, output
    assert "Traceback" not in output, output
    assert "Usage:" in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    assert len(errors) == 1, output
    assert lines[-1] == errors[0], f"the error is not the last, single line:\n{output}"


def test_the_app_has_the_documented_commands():
    assert {"train", "evaluate", "predict", "report", "embed", "doctor"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_unknown_option(name):
    result = run([name, *placeholder_arguments(name), "--no-such-flag"])
    assert_usage_error(result.exit_code, result.output)
    assert "--no-such-flag" in result.output


@pytest.mark.parametrize("name", sorted(n for n in COMMANDS if required_arguments(n)))
def test_missing_argument(name):
    result = run([name])
    assert_usage_error(result.exit_code, result.output)
    first = required_arguments(name)[0]
    assert f"Missing argument '{first.name}'" in result.output or first.name.upper() in result.output


@pytest.mark.parametrize(
    ("name", "flag", "value"),
    [(name, flag, value) for name in sorted(COMMANDS) for flag, value in bad_values(name)],
)
def test_bad_value(name, flag, value):
    result = run([name, *placeholder_arguments(name), flag, value])
    assert_usage_error(result.exit_code, result.output)
    assert flag in result.output


def test_every_command_with_a_number_or_choice_is_checked_for_bad_values():
    with_values = {name for name in COMMANDS if bad_values(name)}
    assert {"train", "predict", "doctor", "report", "embed"} <= with_values


def test_unknown_command():
    result = run(["export", "x"])
    assert_usage_error(result.exit_code, result.output)
    assert "export" in result.output


def test_no_command_shows_the_help():
    result = run([])
    assert "Traceback" not in result.output
    assert "Usage:" in result.output
    for name in COMMANDS:
        assert name in result.output


def test_help_of_every_command_exits_0():
    for name in COMMANDS:
        result = run([name, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output


# --- our errors: one line "error: ...", exit 2; a parameter's name becomes the user's flag


def test_user_error_is_one_line_without_traceback(tmp_path):
    result = run(["report", str(tmp_path / "missing")])
    assert result.exit_code == USAGE_ERROR
    assert result.output.strip() == f"error: run folder not found: {tmp_path / 'missing'}"


@pytest.mark.parametrize(
    ("param", "flag"),
    [("epochs", "--epochs"), ("time_budget", "--time-budget"), ("train_batch_size", "--batch-size")],
)
def test_parameter_error_names_the_cli_flag(monkeypatch, tmp_path, param, flag):
    from headstart.estimator.classifier import ImageClassifier

    def refuse(self, *args, **kwargs):
        raise ParameterError(param, "must be at least 1")

    monkeypatch.setattr(ImageClassifier, "fit", refuse)
    result = run(["train", str(tmp_path), "--out", str(tmp_path / "run")])
    assert result.exit_code == USAGE_ERROR, result.output
    assert result.output.strip() == f"error: {flag}: must be at least 1"


def test_parameter_of_an_argument_is_named_in_capitals(monkeypatch, tmp_path):
    import headstart.estimator.classifier as classifier

    def refuse(*args, **kwargs):
        raise ParameterError("model", "is not a model bundle")

    monkeypatch.setattr(classifier, "load", refuse)
    result = run(["evaluate", "m", str(tmp_path)])
    assert result.exit_code == USAGE_ERROR, result.output
    assert result.output.strip() == "error: MODEL: is not a model bundle"


def test_interrupt_exits_130(monkeypatch, tmp_path):
    import headstart.estimator.classifier as classifier

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(classifier, "load", interrupted)
    result = run(["predict", "m", str(tmp_path)])
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output
    assert "interrupted" in result.output


def test_unexpected_errors_are_not_hidden(monkeypatch, tmp_path):
    """A bug is not a user error: it must surface (a traceback), not become a quiet exit 2."""
    import headstart.estimator.classifier as classifier

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(classifier, "load", bug)
    result = run(["predict", "m", str(tmp_path)])
    assert result.exit_code != USAGE_ERROR
    assert isinstance(result.exception, ZeroDivisionError)
    assert not isinstance(result.exception, HeadstartError)


# --- the installed command's code path, in a real process


REAL_PROCESS_USAGE = [
    ["export", "x"],
    ["train", "--bogus"],
    ["predict"],
    ["train", "--epochs", "abc"],
    ["train", "--head", "nope"],
]


@pytest.fixture(scope="module")
def real_processes(tmp_path_factory) -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """``python -m headstart ARGS`` for every case below, started together (each start-up is
    seconds of imports; side by side they share the cores): args -> the finished process."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    missing = str(tmp_path_factory.mktemp("report") / "missing")
    cases = [tuple(args) for args in REAL_PROCESS_USAGE] + [("report", missing)]
    started = {
        args: subprocess.Popen(
            [sys.executable, "-m", "headstart", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for args in cases
    }
    done = {}
    for args, proc in started.items():
        stdout, stderr = proc.communicate(timeout=120)
        done[args] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return done


@pytest.mark.parametrize("args", REAL_PROCESS_USAGE)
def test_usage_errors_in_a_real_process(args, real_processes):
    proc = real_processes[tuple(args)]
    assert proc.stdout == ""
    assert_usage_error(proc.returncode, proc.stderr)


def test_user_error_in_a_real_process(real_processes):
    (args, proc), *_ = [(a, p) for a, p in real_processes.items() if a[0] == "report"]
    assert proc.returncode == USAGE_ERROR
    assert proc.stderr.strip() == f"error: run folder not found: {args[1]}"


def test_a_parameter_without_a_flag_keeps_its_name(monkeypatch, tmp_path):
    import headstart.estimator.classifier as classifier

    def refuse(*args, **kwargs):
        raise ParameterError("cs", "must be positive")

    monkeypatch.setattr(classifier, "load", refuse)
    result = run(["predict", "m", str(tmp_path)])
    assert result.exit_code == USAGE_ERROR, result.output
    assert result.output.strip() == "error: cs: must be positive"
