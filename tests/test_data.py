from collections import Counter
from pathlib import Path

import pytest
from conftest import make_class_folders, make_image

from headstart.core.errors import HeadstartError
from headstart.data.discovery import discover
from headstart.data.splits import assign_splits, make_split


def test_class_folders_with_hidden_and_non_image_files(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=3)
    (root / "red" / ".DS_Store").write_bytes(b"junk")
    (root / "red" / "notes.txt").write_text("hello")
    make_image(root / "blue" / "nested" / "deep" / "UPPER.JPG", (0, 0, 255), 1)
    ds = discover(root)
    assert ds.kind == "class-folders"
    assert ds.class_counts() == {"blue": 4, "green": 3, "red": 3}
    assert any("notes.txt" in p for p, _ in ds.ignored)
    assert not any(".DS_Store" in s.path for s in ds.samples)


def test_csv_with_relative_paths(tmp_path):
    make_image(tmp_path / "imgs" / "a.png", (255, 0, 0), 1)
    make_image(tmp_path / "imgs" / "b.png", (0, 0, 255), 2)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\nimgs/a.png,cat\nimgs/b.png,dog\n")
    ds = discover(csv)
    assert ds.kind == "csv" and ds.labels == ["cat", "dog"]
    assert Path(ds.samples[0].path).is_file()


def test_file_name_labels_as_food11_names_them(tmp_path):
    for name in ["9_1339.jpg", "9_2.jpg", "10_5.jpg", "0_0.jpg"]:
        make_image(tmp_path / "food" / name, (100, 100, 100), 1)
    ds = discover(tmp_path / "food")
    assert ds.kind == "file-names"
    assert ds.class_counts() == {"0": 1, "10": 1, "9": 2}


def test_predefined_split_folders_are_used_as_given(tmp_path):
    for split, n in [("training", 4), ("validation", 2), ("evaluation", 2)]:
        make_class_folders(tmp_path / "d" / split, per_class=n, classes=("red", "blue"))
    ds = discover(tmp_path / "d")
    assert ds.kind == "split-folders"
    splits, how = assign_splits(ds.samples)
    assert how == "predefined"
    assert Counter(splits) == {"train": 8, "val": 4, "test": 4}
    for s, g in zip(ds.samples, splits):
        assert s.split == g


def test_missing_validation_folder_is_carved_from_train(tmp_path):
    make_class_folders(tmp_path / "d" / "train", per_class=10, classes=("red", "blue"))
    make_class_folders(tmp_path / "d" / "test", per_class=2, classes=("red", "blue"))
    ds = discover(tmp_path / "d")
    splits, how = assign_splits(ds.samples)
    assert "carved" in how and Counter(splits)["val"] >= 2 and Counter(splits)["test"] == 4


def test_split_is_stratified_seeded_and_deterministic():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    s0, s0b, s1 = make_split(labels, seed=0), make_split(labels, seed=0), make_split(labels, seed=1)
    assert s0 == s0b and s0 != s1
    counts = Counter(zip(labels, s0))
    assert counts[("a", "test")] == 5 and counts[("b", "test")] == 3 and counts[("c", "val")] == 2


def test_class_too_small_to_split_is_a_clear_error():
    with pytest.raises(HeadstartError, match="class 'tiny' has 2 usable"):
        make_split(["big"] * 10 + ["tiny"] * 2)


def test_empty_folder_and_wrong_path_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HeadstartError, match="no labelled images"):
        discover(tmp_path / "empty")
    with pytest.raises(HeadstartError, match="not found"):
        discover(tmp_path / "nope")


def test_symlink_loop_does_not_hang(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=2, classes=("red", "blue"))
    (root / "red" / "loop").symlink_to(root / "red", target_is_directory=True)
    ds = discover(root)
    assert ds.class_counts() == {"blue": 2, "red": 2}
    assert any("loop" in r for _, r in ds.ignored)
