"""``headstart review``: the queues find what was planted, decisions land in corrections.csv at once
and atomically, a restart resumes, only the run's own images can be fetched, DATA is never written,
and the keyboard flow works in headless Chromium."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from headstart.cli.app import app as cli_app
from headstart.estimator.classifier import ImageClassifier
from headstart.review import create_review_app, load_review_run
from headstart.review.app import class_keys
from headstart.review.photos import CACHE_DIR
from headstart.review.queues import label_issue_queue

FLIPPED = "green/red_0.jpg"  # a red photo filed under green
COPIES = ("blue/blue_1.jpg", "red/copy_of_blue_1.jpg")  # one picture under two labels
MORE_FLIPPED = ("red/red_9.jpg", "blue/red_9.jpg"), ("green/green_10.jpg", "red/green_10.jpg")  # (from, to)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A feature-extraction run on coloured squares with one flipped label and one cross-class
    copy: (data root, run folder)."""
    from conftest import make_class_folders

    root = make_class_folders(tmp_path_factory.mktemp("review") / "colors", per_class=12)
    shutil.move(root / "red" / "red_0.jpg", root / FLIPPED)
    for source, target in MORE_FLIPPED:  # enough for the keyboard flow's four images in one queue
        shutil.move(root / source, root / target)
    shutil.copy(root / COPIES[0], root / COPIES[1])
    run = tmp_path_factory.mktemp("review_run")
    ImageClassifier(strategy="feature-extraction", verbose=False, report_map="none").fit(root, out_dir=run)
    return root, run


@pytest.fixture
def fresh_run(trained, tmp_path):
    """The trained run, copied so each test starts with no decisions and no thumbnails."""
    root, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("corrections.csv", CACHE_DIR))
    return root, copy


def read_corrections(run: Path) -> list[list[str]]:
    with open(run / "corrections.csv", newline="") as f:
        return list(csv.reader(f))


def test_class_keys_skip_the_action_keys():
    keys = class_keys([f"c{i}" for i in range(40)])
    assert keys[:10] == list("1234567890") and keys[10:13] == ["a", "b", "c"]
    assert not set(keys) & set("xknpu") and len(set(keys[:31])) == 31 and keys[31:] == [""] * 9


def test_queues_hold_what_was_planted(fresh_run):
    _, run = fresh_run
    review = load_review_run(run)
    with TestClient(create_review_app(review)) as client:
        meta = client.get("/api/meta").json()
        counts = {q["name"]: q["count"] for q in meta["queues"]}
        issues = client.get("/api/queue/label_issues?size=500").json()["items"]
        flipped = [i for i in issues if i["path"] == FLIPPED]
        assert flipped and flipped[0]["suggested"] == "red" and flipped[0]["label"] == "green"
        duplicates = client.get("/api/queue/duplicates").json()["items"]
        assert {d["path"] for d in duplicates[:2]} == set(COPIES)
        assert all("conflicting labels" in d["reason"] for d in duplicates[:2])
        for item in client.get("/api/queue/errors?size=500").json()["items"]:
            assert item["split"] in ("val", "test") and item["predicted"] != item["label"]
        assert counts["all"] == len(review.images) == 37 and counts["label_issues"] >= 1
        page = client.get("/api/queue/all?page=1&size=10").json()
        assert page["total"] == 37 and [i["index"] for i in page["items"]] == list(range(10, 20))
        details = client.get(f"/api/image/{flipped[0]['index']}").json()
        assert len(details["top_k"]) == 3 and len(details["neighbours"]) == 6
        by_path = {i.path: i for i in review.images}
        assert all(by_path[n["path"]].split == "train" for n in details["neighbours"])
        assert FLIPPED not in [n["path"] for n in details["neighbours"]]
        assert client.get("/api/queue/nope").status_code == 404


def test_decisions_are_saved_atomically_and_a_restart_resumes(fresh_run, monkeypatch):
    from conftest import tree_digest

    root, run = fresh_run
    before = tree_digest(root)
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr("headstart.core.io.os.replace", spy)
    review = load_review_run(run)
    target = run / "corrections.csv"
    with TestClient(create_review_app(review)) as client:
        post = lambda path, choice, label="": client.post(  # noqa: E731
            "/api/decision", json={"path": path, "choice": choice, "label": label}
        )
        assert post(FLIPPED, "relabel", "blue").json()["decision"] == "relabel"
        assert read_corrections(run) == [["path", "action", "label"], [FLIPPED, "relabel", "blue"]]
        assert renames[-1][1] == str(target) and Path(renames[-1][0]).parent == run
        assert not Path(renames[-1][0]).exists()
        assert post(FLIPPED, "relabel", "red").json()["decided_label"] == "red"  # replaces the row
        assert post(COPIES[1], "exclude").json()["decision"] == "exclude"
        assert post("red/red_1.jpg", "keep").json() == {
            "path": "red/red_1.jpg",
            "decision": "keep",
            "decided_label": "red",
            "decided": 3,
        }
        assert post("blue/blue_2.jpg", "exclude").json()["decided"] == 4
        assert post("blue/blue_2.jpg", "clear").json()["decision"] is None
        assert post(FLIPPED, "relabel", "purple").status_code == 422
        assert post("../outside.jpg", "exclude").status_code == 404
        for path in (COPIES[0], "red/red_2.jpg"):  # the photos too: cached under the run
            assert client.get("/photo/large", params={"path": path}).status_code == 200
    assert read_corrections(run)[1:] == [
        [FLIPPED, "relabel", "red"],
        [COPIES[1], "exclude", ""],
        ["red/red_1.jpg", "relabel", "red"],
    ]
    assert all(dst == str(target) for _, dst in renames if dst.endswith(".csv"))
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []
    with TestClient(create_review_app(load_review_run(run))) as client:  # a restart resumes
        assert client.get("/api/meta").json()["decided"] == 3
        items = {i["path"]: i for i in client.get("/api/queue/all?size=500").json()["items"]}
        assert items[FLIPPED]["decision"] == "relabel" and items[FLIPPED]["decided_label"] == "red"
        assert items[COPIES[1]]["decision"] == "exclude" and items["red/red_1.jpg"]["decision"] == "keep"
        assert items["blue/blue_2.jpg"]["decision"] is None
    assert tree_digest(root) == before


def test_only_the_runs_own_images_can_be_fetched(fresh_run):
    root, run = fresh_run
    with TestClient(create_review_app(load_review_run(run))) as client:
        good = client.get("/photo/thumb", params={"path": "red/red_1.jpg"})
        assert good.status_code == 200 and good.headers["content-type"] == "image/jpeg"
        assert good.content[:2] == b"\xff\xd8"
        refused = [
            "../../../../etc/passwd",
            "/etc/passwd",
            str(root / "red" / "red_1.jpg"),  # the file, but not as the run records it
            "red/../red/red_1.jpg",
            "red/red_1.jpg/",
            str(run / "model.safetensors"),
            "../" + run.name + "/model.safetensors",
        ]
        for path in refused:
            for size in ("thumb", "large"):
                assert client.get(f"/photo/{size}", params={"path": path}).status_code == 404, path
        assert client.get("/photo/huge", params={"path": "red/red_1.jpg"}).status_code == 422
        assert client.get("/photo/..%2f..%2fetc%2fpasswd", params={"path": "x"}).status_code in (404, 422)
    assert list((run / CACHE_DIR / "thumb").glob("*.jpg"))


def test_slow_queues_are_served_once_computed(fresh_run, monkeypatch):
    """With ``background``, the label check runs in a thread: its queue answers 503 (and the page
    shows it as computing) until done, while the other queues are served at once."""
    import dataclasses

    from headstart.review import app as review_app

    release = threading.Event()

    def held(run):
        release.wait(30)
        return label_issue_queue(run)

    specs = tuple(dataclasses.replace(s, make=held) if s.slow else s for s in review_app.QUEUES)
    monkeypatch.setattr(review_app, "QUEUES", specs)
    lines: list[str] = []
    _, run = fresh_run
    with TestClient(create_review_app(load_review_run(run), background=True, log=lines.append)) as client:
        first = {q["name"]: q for q in client.get("/api/meta").json()["queues"]}
        assert first["label_issues"]["computing"] and first["label_issues"]["count"] is None
        assert client.get("/api/queue/label_issues").status_code == 503
        assert client.get("/api/queue/duplicates").json()["total"] == 2
        release.set()
        deadline = time.monotonic() + 30
        while client.get("/api/queue/label_issues").status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        issues = client.get("/api/queue/label_issues?size=500").json()["items"]
    assert FLIPPED in [i["path"] for i in issues]
    assert lines and lines[0].startswith("queue ready: likely wrong labels")


def test_review_command_refuses_a_folder_without_a_model(tmp_path):
    result = CliRunner().invoke(cli_app, ["review", str(tmp_path)])
    assert result.exit_code == 2 and "holds no model.safetensors" in result.output


# --------------------------------------------------------------------------- headless Chromium


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_review(fresh_run):
    """The review app on a free local port, in this process: (url, run folder)."""
    import uvicorn

    _, run = fresh_run
    port = free_port()
    app = create_review_app(load_review_run(run), background=True)
    server = uvicorn.Server(uvicorn.Config(app, "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/meta", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url, run
    server.should_exit = True
    thread.join(10)


@pytest.mark.browser
def test_keyboard_flow_in_chromium(live_review, tmp_path):
    """Open the page; a class key relabels the first image of the first queue and moves on, x
    excludes the second, n skips the third; corrections.csv holds exactly those two rows."""
    from conftest import find_chromium

    if os.environ.get("HEADSTART_REQUIRE_BROWSER") == "1":
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    url, run = live_review
    deadline = time.monotonic() + 60
    while any(q["computing"] for q in httpx.get(url + "/api/meta").json()["queues"]):
        assert time.monotonic() < deadline, "the label check did not finish"
        time.sleep(0.1)
    meta = httpx.get(url + "/api/meta").json()
    first_queue = next(q["name"] for q in meta["queues"] if q["count"] > 0)
    items = httpx.get(f"{url}/api/queue/{first_queue}").json()["items"]
    assert len(items) >= 4, f"the first queue ({first_queue}) holds too few images for the flow"
    keys = {c["name"]: c["key"] for c in meta["classes"]}
    new_label = next(c for c in keys if c != items[0]["label"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(find_chromium()), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            page.goto(url + "/")
            page.wait_for_function(f"document.body.dataset.path === {items[0]['path']!r}")
            page.wait_for_function("document.querySelectorAll('#topk .bar').length > 0")
            assert new_label in page.inner_text("#keys") and "exclude" in page.inner_text("#keys")
            page.keyboard.press(keys[new_label])
            page.wait_for_function(f"document.body.dataset.path === {items[1]['path']!r}")
            page.keyboard.press("x")
            page.wait_for_function(f"document.body.dataset.path === {items[2]['path']!r}")
            page.keyboard.press("n")
            page.wait_for_function(f"document.body.dataset.path === {items[3]['path']!r}")
            page.wait_for_function(
                "document.getElementById('status').dataset.pending === '0' "
                "&& document.getElementById('status').dataset.decided === '2'"
            )
            page.keyboard.press("p")
            page.wait_for_function(f"document.body.dataset.details === {items[2]['path']!r}")
            page.wait_for_function(
                "[...document.querySelectorAll('#neighbours img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            shown_top = page.inner_text("#topk .bar .name")
            page.wait_for_function(
                "document.getElementById('big').complete && document.getElementById('big').naturalWidth > 0"
            )
            decided = page.eval_on_selector_all(
                ".strip .thumb.relabel, .strip .thumb.exclude", "els => els.length"
            )
            screenshot = tmp_path / "review_page.png"
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    rows = sorted(read_corrections(run)[1:])
    assert rows == sorted([[items[0]["path"], "relabel", new_label], [items[1]["path"], "exclude", ""]])
    assert decided == 2
    expected_top = httpx.get(f"{url}/api/image/{items[2]['index']}").json()["top_k"][0]["label"]
    assert shown_top == expected_top
    artifacts = os.environ.get("HEADSTART_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(artifacts) / screenshot.name)
