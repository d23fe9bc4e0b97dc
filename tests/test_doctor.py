"""The data doctor: a battery of bad input, duplicate groups in the split, label issues, --exclude."""

from __future__ import annotations

import csv
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, make_class_folders, tree_digest
from PIL import Image

from headstart.data.discovery import Sample
from headstart.data.exclusions import exclude_samples, read_exclude_list
from headstart.data.splits import assign_splits, make_split
from headstart.doctor import find_duplicates, rank_label_issues

TRAIN = ("train", "--strategy=feature-extraction")  # a quick probe, not the search that is the default


def run(*args, check=True):
    proc = cli(*args)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def huge_header_png(path: Path, side: int = 100_000) -> None:
    """A valid PNG header claiming side x side pixels (10 gigapixels) with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def make_battery(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Class folders plus every kind of bad input we know of.

    Returns (file name -> reason the doctor must give as an error; file name -> warning).
    """
    make_class_folders(root, per_class=8)
    red, green, blue = root / "red", root / "green", root / "blue"
    good = (red / "red_0.jpg").read_bytes()
    errors, warns = {}, {}
    (red / "zero.jpg").write_bytes(b"")  # 1 zero bytes
    errors["zero.jpg"] = "empty"
    (red / "truncated.jpg").write_bytes(good[: len(good) // 3])  # 2 truncated
    errors["truncated.jpg"] = "truncated"
    (red / "text.png").write_text("I am not a picture")  # 3 not an image
    errors["text.png"] = "not an image"
    (green / "page.JPG").write_text("<html>saved web page</html>")  # 4 HTML saved as .JPG
    errors["page.JPG"] = "not an image"
    huge_header_png(blue / "bomb.png")  # 5 decompression bomb
    errors["bomb.png"] = "decompression-bomb"
    Image.new("RGB", (16, 16), (200, 40, 40)).save(red / "tiny.png")  # 6 tiny
    warns["tiny.png"] = "tiny"
    Image.new("RGB", (800, 40), (40, 60, 200)).save(blue / "banner.png")  # 7 extreme aspect
    warns["banner.png"] = "aspect"
    (red / "loop").symlink_to(".", target_is_directory=True)  # 8 symlink loop to itself
    (green / "up").symlink_to("..", target_is_directory=True)  # 9 link to an ancestor
    (blue / "dangling.jpg").symlink_to(root / "nowhere.jpg")  # 10 broken link
    errors["dangling.jpg"] = "not found"
    (red / "locked.jpg").write_bytes(good)  # 11 unreadable (root can still read it)
    os.chmod(red / "locked.jpg", 0)
    (red / ".hidden.jpg").write_bytes(good)  # 12 hidden file
    (red / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # 13 .DS_Store
    (green / "notes.txt").write_text("not a picture")  # 14 non-image name
    weird = os.fsencode(str(green)) + b"/caf\xe9_latin1.jpg"  # 15 non-UTF-8 file name
    Image.open(green / "green_3.jpg").save(os.fsdecode(weird), format="JPEG")
    Image.open(green / "green_4.jpg").save(green / ("long_" + "x" * 230 + ".jpg"))  # 16 very long name
    (blue / "sub" / "deeper").mkdir(parents=True)  # 17 nested sub-folders
    Image.open(blue / "blue_5.jpg").save(blue / "sub" / "deeper" / "nested.jpg")
    Image.open(blue / "blue_6.jpg").save(blue / "UPPER.PNG")  # 18 uppercase extension
    (red / "folder.jpg").mkdir()  # 19 a directory named like an image
    Image.open(red / "red_5.jpg").save(red / "folder.jpg" / "inside.jpg")
    img = Image.open(red / "red_6.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(red / "rotated.jpg", exif=exif.tobytes())  # 20 EXIF rotation
    img.convert("CMYK").save(red / "cmyk.jpg")  # 21 CMYK
    Image.fromarray(np.full((48, 64), 50000, dtype=np.uint16)).save(green / "sixteen.png")  # 22 16-bit
    img.convert("P").save(red / "palette.gif")  # 23 palette
    img.convert("RGBA").save(red / "rgba.png")  # 24 alpha
    (red / "copy_of_red_1.jpg").write_bytes((red / "red_1.jpg").read_bytes())  # 25 exact duplicate
    Image.open(green / "green_2.jpg").save(green / "green_2_again.png")  # 26 near duplicate (re-encoded)
    (red / "blue_7_misfiled.jpg").write_bytes((blue / "blue_7.jpg").read_bytes())  # 27 cross-class duplicate
    (red / "real_png.jpg").write_bytes((root / "red" / "rgba.png").read_bytes())  # 28 wrong extension, fine
    return errors, warns


@pytest.mark.slow
@pytest.mark.cli
def test_bad_input_battery_doctor_and_train(tmp_path):
    data = tmp_path / "battery"
    errors, warns = make_battery(data)
    before = tree_digest(data)
    out = tmp_path / "doctor"
    proc = run("doctor", data, "--out", out)
    assert "Traceback" not in proc.stderr
    doc = json.loads((out / "doctor.json").read_text())
    assert {"bad_files", "duplicates", "label_issues", "class_counts"} <= set(doc)
    html = (out / "doctor.html").read_text()
    assert "data:image/jpeg;base64," in html and '<img src="http' not in html  # one self-contained file

    reported = {os.path.basename(b["path"]): b for b in doc["bad_files"]}
    for name, reason in errors.items():
        assert reason in reported[name]["reason"] and reported[name]["severity"] == "error", name
    for name, reason in warns.items():
        assert reason in reported[name]["reason"] and reported[name]["severity"] == "warning", name
    assert "symbolic-link loop" in reported["loop"]["reason"]
    assert "symbolic-link loop" in reported["up"]["reason"]
    assert reported[".hidden.jpg"]["reason"] == "hidden file"
    assert reported[".DS_Store"]["reason"] == "hidden file"
    assert "not an image file name" in reported["notes.txt"]["reason"]
    if os.geteuid() != 0:  # root reads any file whatever its mode: nothing to report then
        assert "permission" in reported["locked.jpg"]["reason"]

    groups = {frozenset(os.path.basename(f["path"]) for f in g["files"]): g for g in doc["duplicates"]}
    exact = groups[frozenset({"red_1.jpg", "copy_of_red_1.jpg"})]
    assert exact["kind"] == "exact" and not exact["cross_class"]
    assert groups[frozenset({"green_2.jpg", "green_2_again.png"})]["kind"] == "near"
    conflict = groups[frozenset({"blue_7.jpg", "blue_7_misfiled.jpg"})]
    assert conflict["cross_class"] and conflict["labels"] == ["blue", "red"]
    counts = doc["class_counts"]
    assert counts["green"] >= 8
    assert doc["imbalance"]["ratio"] == pytest.approx(max(counts.values()) / min(counts.values()), abs=1e-3)
    # images that are odd but fine are used, nested ones under their class
    assert not {
        "rotated.jpg",
        "cmyk.jpg",
        "sixteen.png",
        "palette.gif",
        "rgba.png",
        "inside.jpg",
        "nested.jpg",
        "UPPER.PNG",
        "real_png.jpg",
    } & set(reported)
    names = {
        os.path.basename(r["path"])
        for r in csv.DictReader(open(out / "label_ranking.csv", encoding="utf-8", errors="surrogateescape"))
    }
    assert {"inside.jpg", "nested.jpg", "UPPER.PNG", "long_" + "x" * 230 + ".jpg"} <= names
    assert any(n.startswith("caf") and n.endswith("_latin1.jpg") for n in names)

    run_dir = tmp_path / "run"
    proc = run(*TRAIN, data, "--out", run_dir)
    assert "Traceback" not in proc.stderr and "1 with conflicting labels" in proc.stderr
    skipped = {
        os.path.basename(r["path"]): r["reason"]
        for r in csv.DictReader(open(run_dir / "skipped.csv", encoding="utf-8", errors="surrogateescape"))
    }
    for name, reason in errors.items():
        assert reason.split("-")[0] in skipped[name].replace("decompression-bomb", "decompression"), name
    assert {"loop", "up", ".hidden.jpg", ".DS_Store", "notes.txt"} <= set(skipped)
    rows = list(
        csv.DictReader(open(run_dir / "duplicate_groups.csv", encoding="utf-8", errors="surrogateescape"))
    )
    by_group: dict[str, set[str]] = {}
    for r in rows:
        by_group.setdefault(r["group"], set()).add(r["split"])
    assert by_group and all(len(s) == 1 for s in by_group.values())  # no group crosses a split
    assert any(r["conflicting_labels"] == "yes" for r in rows)
    assert json.loads((run_dir / "metrics.json").read_text())["data_checks"]["cross_class_groups"] == 1

    os.chmod(data / "red" / "locked.jpg", 0o644)
    after = tree_digest(data)
    before["red/locked.jpg"] = after["red/locked.jpg"]
    assert after == before, "the user's folder must be byte-identical"


def test_find_duplicates_groups_exact_and_near():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(6, 32)).astype(np.float32)
    feats[3] = feats[2] + 0.01 * rng.normal(size=32)  # near copy of 2
    hashes = ["a", "b", "c", "d", "a", "e"]  # 0 and 4 share bytes
    groups, nn_idx, _, notes = find_duplicates(hashes, feats)
    assert sorted((g.kind, g.members) for g in groups) == [("exact", [0, 4]), ("near", [2, 3])]
    assert nn_idx[2, 0] == 3 and notes == []
    # features that call everything alike (an untrained backbone) do not make one giant group
    same = np.ones((40, 8), dtype=np.float32) + 1e-3 * rng.normal(size=(40, 8)).astype(np.float32)
    groups, _, _, notes = find_duplicates([str(i) for i in range(40)], same)
    assert groups == [] and "not checked" in notes[0]
    # a similar perceptual hash alone is not enough; with feature agreement it is
    feats2 = rng.normal(size=(3, 32)).astype(np.float32)
    u = feats2[0] / np.linalg.norm(feats2[0])
    w = feats2[1] - (feats2[1] @ u) * u
    feats2[1] = 0.9 * u + np.sqrt(1 - 0.81) * w / np.linalg.norm(w)  # cosine 0.9 with row 0
    cos = float(feats2[0] @ feats2[1] / np.linalg.norm(feats2[0]) / np.linalg.norm(feats2[1]))
    assert 0.85 < cos < 0.95
    assert find_duplicates(["x", "y", "z"], feats2)[0] == []
    assert [g.members for g in find_duplicates(["x", "y", "z"], feats2, [0, 1, 2**63])[0]] == [[0, 1]]


def test_group_aware_split_keeps_groups_and_old_split():
    labels = [c for c in "abc" for _ in range(30)]
    plain = make_split(labels, seed=4)
    assert make_split(labels, seed=4, groups=[]) == plain  # no duplicates: the split of before
    test_i = plain.index("test")
    train_i = [i for i, s in enumerate(plain) if s == "train" and labels[i] == labels[test_i]][0]
    val_i = plain.index("val")
    other_test = plain.index("test", test_i + 1)
    grouped = make_split(labels, seed=4, groups=[[test_i, train_i], [val_i, other_test]])
    assert grouped[test_i] == grouped[train_i] == "train"  # a tie goes to train...
    assert grouped[val_i] == grouped[other_test] == "val"  # ...else to val
    assert sum(a != b for a, b in zip(plain, grouped)) <= 3
    # a group that would empty the validation split is left as drawn (training would fail)
    every_val = [i for i, s in enumerate(plain) if s == "val"] + [
        i for i, s in enumerate(plain) if s == "train"
    ][:9]
    assert make_split(labels, seed=4, groups=[every_val]) == plain
    # predefined splits are never changed; carving val from train keeps groups together
    samples = [Sample(f"{i}.jpg", labels[i], "test" if i % 10 == 0 else "train") for i in range(90)]
    pair = [1, 2]
    splits, method = assign_splits(samples, seed=0, groups=[pair, [0, 3]])
    assert splits[0] == "test" and splits[3] in ("train", "val")  # a leak is reported, not fixed
    assert splits[1] == splits[2] and "carved" in method


def test_rank_label_issues_confident_learning():
    y = np.array([0] * 10 + [1] * 10)
    proba = np.tile([0.9, 0.1], (20, 1))
    proba[10:] = [0.1, 0.9]
    proba[3] = [0.05, 0.95]  # labelled 0, the model is sure it is 1
    proba[15] = [0.6, 0.4]  # labelled 1, leaning to 0 but under class 0's threshold
    order, issue, suggested = rank_label_issues(proba, y)
    assert order[0] == 3 and issue[3] and suggested[3] == 1
    assert issue.sum() == 1 and not issue[15]


def test_cleanlab_queue_flags_a_flip_and_suggests_its_class():
    """cleanlab's find_label_issues on given probabilities; the suggested label is never the given one."""
    from headstart.doctor import find_label_issues

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    proba = np.full((60, 3), 0.05)
    proba[np.arange(60), y] = 0.9
    proba += rng.uniform(0, 0.02, proba.shape)
    proba[5] = [0.04, 0.06, 0.9]  # labelled 0, the model is sure it is 2
    proba /= proba.sum(axis=1, keepdims=True)
    order, issue, suggested = find_label_issues(proba, y)
    assert order[0] == 5 and issue[5] and suggested[5] == 2
    assert issue.sum() == 1 and sorted(order.tolist()) == list(range(60))


def test_doctor_finds_planted_flips_in_generated_images(tmp_path):
    """Six of 60 generated images get another class's label: the doctor flags most of them,
    few others, suggests the true class, and names the confused pairs."""
    from headstart.doctor import diagnose, report_dict

    root = make_class_folders(tmp_path / "d", per_class=20)
    files = sorted(root.rglob("*.jpg"))
    truth = {str(f): f.parent.name for f in files}
    flips = {
        str(root / c / f"{c}_{i}.jpg"): wrong
        for c, wrong in [("red", "green"), ("green", "blue"), ("blue", "red")]
        for i in (3, 11)
    }
    noisy = tmp_path / "noisy.csv"
    noisy.write_text("path,label\n" + "".join(f"{p},{flips.get(p, truth[p])}\n" for p in truth))

    report = diagnose(noisy, verbose=False)
    flagged = {r["path"]: r for r in report.label_issues}
    found = set(flagged) & set(flips)
    assert len(found) >= 5 and len(flagged) <= 10
    assert all(flagged[p]["suggested_label"] == truth[p] for p in found)
    assert len(set(flips) & {r["path"] for r in report.label_ranking[:8]}) >= 5
    doc = report_dict(report)
    assert doc["confused_pairs"] and {"a", "b", "images", "joint_probability"} <= set(
        doc["confused_pairs"][0]
    )


def test_exclude_list_formats(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=4)
    from headstart.data.discovery import discover

    ds = discover(root)
    txt = tmp_path / "x.txt"
    txt.write_text(f"# comment\n{ds.samples[0].path}\nred/red_1.jpg\nmissing.jpg\n")
    kept, left, unmatched = exclude_samples(ds, read_exclude_list(txt))
    assert {os.path.basename(s.path) for s in left} == {os.path.basename(ds.samples[0].path), "red_1.jpg"}
    assert unmatched == ["missing.jpg"] and len(kept.samples) == len(ds.samples) - 2
    js = tmp_path / "doctor.json"
    js.write_text(json.dumps({"exclude_suggested": [{"path": ds.samples[5].path, "reason": "x"}]}))
    assert read_exclude_list(js) == [ds.samples[5].path]
    cs = tmp_path / "x.csv"
    cs.write_text("path,label\nred/red_2.jpg,red\n")
    assert read_exclude_list(cs) == ["red/red_2.jpg"]


@pytest.mark.slow
def test_doctor_finds_flipped_labels_and_train_excludes_them(flowers_csv, tmp_path):
    """Three flower photos given a wrong label rank near the top; --exclude leaves them out."""
    import headstart
    from headstart.doctor import diagnose
    from headstart.runs.doctor import write_doctor_files

    rows = flowers_csv.read_text().splitlines()
    flips = {1: "roses", 40: "sunflowers", 100: "daisy"}  # row -> wrong label (rows 1-30 are daisy...)
    for i, wrong in flips.items():
        rows[i] = rows[i].rsplit(",", 1)[0] + "," + wrong
    noisy = tmp_path / "noisy.csv"
    noisy.write_text("\n".join(rows) + "\n")
    flipped = {rows[i].rsplit(",", 1)[0] for i in flips}

    report = diagnose(noisy, verbose=False)
    doc = write_doctor_files(report, tmp_path / "doc")
    top = {r["path"] for r in report.label_ranking[:12]}  # with genuinely odd photos (ranks 2, 4, 10 here)
    assert flipped <= top
    issues = {r["path"]: r for r in doc["label_issues"]}
    assert flipped <= set(issues) and len(issues) <= 15
    assert issues[rows[40].rsplit(",", 1)[0]]["suggested_label"] == "dandelion"
    assert "nearest images" in issues[rows[40].rsplit(",", 1)[0]]["evidence"]

    clf = headstart.ImageClassifier(
        strategy="feature-extraction", verbose=False, exclude=tmp_path / "doc" / "exclude.txt"
    )
    clf.fit(noisy, out_dir=tmp_path / "run")
    used = {f for f, _, _ in clf.split_["files"]}
    assert not any(os.path.basename(p) in " ".join(used) for p in flipped)
    excluded = {r["path"] for r in csv.DictReader(open(tmp_path / "run" / "excluded.csv"))}
    assert len(excluded) == len(issues) == clf.metrics_["data_checks"]["excluded"]


@pytest.mark.parametrize("bad", ["nope.txt", "bad.json"])
@pytest.mark.cli
def test_exclude_errors_are_one_line(tmp_path, bad):
    data = make_class_folders(tmp_path / "d", per_class=4)
    if bad == "bad.json":
        (tmp_path / bad).write_text("{}")
    proc = run(*TRAIN, data, "--exclude", tmp_path / bad, "--out", tmp_path / "r", check=False)
    assert proc.returncode == 2 and "--exclude" in proc.stderr and "Traceback" not in proc.stderr


def test_leak_across_predefined_splits_is_reported_not_moved():
    from headstart.doctor import quick_check, report_dict

    rng = np.random.default_rng(1)
    feats = rng.normal(size=(8, 16)).astype(np.float32)
    labels = ["cat"] * 6 + ["dog"] * 2
    splits = ["train", "train", "train", "test", "val", "train", "train", "test"]
    samples = [Sample(f"/d/{s}/{lab}/{i}.jpg", lab, s) for i, (lab, s) in enumerate(zip(labels, splits))]
    hashes = [str(i) for i in range(8)]
    hashes[3] = hashes[0]  # a train image copied into test
    report = quick_check(samples, feats, hashes)
    assert [g.members for g in report.leaks()] == [[0, 3]]
    assert any("LEAK" in line and "--exclude" in line for line in report.summary_lines())
    assert any("imbalance" in line for line in report.summary_lines())  # cat:dog is 3:1
    doc = report_dict(report)
    assert doc["summary"]["cross_split_groups"] == 1
    assert doc["exclude_suggested"] == [
        {"path": "/d/test/cat/3.jpg", "reason": "leak: copy of a train image"}
    ]
    given, _ = assign_splits(samples, groups=report.group_indices)
    assert given == splits  # the user's split is kept as given
