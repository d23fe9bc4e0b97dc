"""The documentation's promises that a test can keep.

Every fenced ```python block preceded by a ``<!-- run -->`` line, in ``docs/`` or the README, is
executed in a folder of generated photos (``photos/`` with one folder per class, ``more_photos/``,
``new.jpg``), as a reader would paste it. Blocks without the marker are illustrations (a 3-minute
``fit``, a server) and are not run. Also: the README's links into the docs lead somewhere, the
site's front page starts with the README's quick-start line, and ``headstart --version`` prints the
installed version.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import headstart

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUNNABLE = re.compile(r"^<!-- run -->[ \t]*\n```python[^\n]*\n(.*?)^```", re.M | re.S)
FENCE = re.compile(r"^```\w*[^\n]*\n(.*?)^```", re.M | re.S)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def runnable_blocks() -> list[tuple[str, str]]:
    """(``page:line``, code) of every block marked ``<!-- run -->``."""
    found = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        for match in RUNNABLE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{page.relative_to(ROOT)}:{line}", match.group(1)))
    return found


BLOCKS = runnable_blocks()


def test_the_docs_have_runnable_blocks():
    # the marker convention is what this file relies on: a renamed marker must not leave zero tests
    assert any(name.startswith("docs/python.md") for name, _ in BLOCKS), BLOCKS


@pytest.fixture(scope="module")
def photos_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import COLORS, make_class_folders, make_image

    root = tmp_path_factory.mktemp("docs")
    make_class_folders(root / "photos", per_class=10)
    for c, color in COLORS.items():
        for i in range(2):
            make_image(root / "more_photos" / c / f"{c}_more_{i}.jpg", color, seed=5000 + 10 * len(c) + i)
    make_image(root / "new.jpg", COLORS["red"], seed=9999)
    return root


@pytest.mark.slow  # fits a model: about a minute where the backbone is not yet exported
@pytest.mark.parametrize("name,code", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_runnable_block(name: str, code: str, photos_folder: Path, monkeypatch, capsys):
    monkeypatch.chdir(photos_folder)
    exec(compile(code, name, "exec"), {"__name__": "__docs__"})
    assert capsys.readouterr().out.strip(), f"{name} printed nothing"


def test_readme_links_into_the_docs_exist():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(((?:docs/|CHANGELOG|LICENSE)[^)#]*)(?:#[^)]*)?\)", text)
    assert len(targets) >= 10, targets
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, missing


def test_docs_front_page_has_the_readme_quick_start():
    def first_bash_block(path: Path) -> str:
        for match in FENCE.finditer(path.read_text(encoding="utf-8")):
            if "headstart train" in match.group(1):
                return match.group(1)
        raise AssertionError(f"{path.name} has no block with headstart train")

    assert first_bash_block(DOCS / "index.md") == first_bash_block(ROOT / "README.md")


def test_every_docs_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages_in_docs = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert {p for p in pages_in_docs if p not in nav} == set()


def test_version_is_the_installed_distributions():
    from typer.testing import CliRunner

    from headstart.cli.app import app

    done = CliRunner().invoke(app, ["--version"])
    assert done.exit_code == 0, done.output
    assert done.output.strip() == f"headstart {version('headstart')}"
    assert version("headstart") == headstart.__version__  # pyproject reads __version__ (dynamic)


@pytest.mark.cli
def test_version_from_the_command_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "headstart", "--version"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0 and done.stdout == f"headstart {headstart.__version__}\n", done


def test_license_file_matches_pyproject():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # tomllib: Python 3.11+
    assert re.search(r'^license = "Apache-2.0"$', pyproject, re.M)
    assert re.search(r'^license-files = \["LICENSE"\]$', pyproject, re.M)
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a pointer to it


@pytest.mark.slow
@pytest.mark.browser
def test_built_site_searches_offline_from_disk(tmp_path):
    """The site opened from file:// with every http(s) request refused: pages render and search
    answers (the offline plugin's inlined index; the worker shim is the site's own copy)."""
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    from conftest import find_chromium
    from playwright.sync_api import sync_playwright

    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    refused: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(find_chromium()), args=["--no-sandbox"])
        page = browser.new_page()
        page.route("http*://**", lambda route: (refused.append(route.request.url), route.abort()))
        page.goto((site / "train.html").as_uri())
        page.focus("input.md-search__input")
        page.keyboard.type("fastai", delay=20)
        page.wait_for_selector(".md-search-result__item", timeout=20_000)
        hits = page.locator(".md-search-result__item").count()
        browser.close()
    assert hits > 0 and refused == [], (hits, refused)
