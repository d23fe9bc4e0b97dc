"""What the built wheel and sdist hold (.ci/run, after ``python -m build``).

The wheel is the package alone: its modules, ``py.typed`` and the page templates, with the licence in
its metadata; no tests, docs, benchmarks or built site. The sdist also carries what builds, tests and
documents it.
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path

WHEEL_MUST = [
    "headstart/__init__.py",
    "headstart/py.typed",
    "headstart/reporting/templates/report.html",
    "headstart/reporting/templates/shell.css",
    "headstart/serve/templates/api_docs.html",
    "headstart/export/templates/classify.html",
    "headstart/review/templates/review.html",
]
WHEEL_MUST_NOT = ("tests/", "docs/", "benchmarks/", "site/", ".ci/")
SDIST_MUST = [
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "CHANGELOG.md",
    "MANIFEST.in",
    "mkdocs.yml",
    "docs/index.md",
    "tests/conftest.py",
    "benchmarks/extraction_speed.py",
    "src/headstart/__init__.py",
    "src/headstart/reporting/templates/report.html",
    "src/headstart/serve/templates/api_docs.html",
    "src/headstart/export/templates/classify.html",
]


def main(dist: Path) -> int:
    (wheel,) = dist.glob("headstart-*.whl")
    (sdist,) = dist.glob("headstart-*.tar.gz")
    wheel_names = zipfile.ZipFile(wheel).namelist()
    with tarfile.open(sdist) as tar:
        sdist_names = ["/".join(name.split("/")[1:]) for name in tar.getnames()]
    problems = [f"wheel lacks {name}" for name in WHEEL_MUST if name not in wheel_names]
    problems += [f"wheel holds {name}" for name in wheel_names if name.startswith(WHEEL_MUST_NOT)]
    problems += [f"wheel holds {name}" for name in wheel_names if "__pycache__" in name]
    if not any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel_names):
        problems.append("wheel lacks the LICENSE in its .dist-info")
    problems += [f"sdist lacks {name}" for name in SDIST_MUST if name not in sdist_names]
    problems += [
        f"sdist holds {name}" for name in sdist_names if name.startswith("site/") or "__pycache__" in name
    ]
    for line in problems:
        print(line, file=sys.stderr)
    print(f"{wheel.name}: {len(wheel_names)} files; {sdist.name}: {len(sdist_names)} files")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "dist")))
