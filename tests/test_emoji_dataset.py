"""Tests of tools/build_emoji_dataset.py on a fake npm package layout (no npm needed)."""

import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool():
    spec = importlib.util.spec_from_file_location("build_emoji_dataset", os.path.join(REPO, "tools", "build_emoji_dataset.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


def _write_png(path, rgba):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(np.asarray(rgba, dtype=np.uint8)))


def _fake_package(npm_dir, package, vendor, entries, present):
    """Write emoji.json with `entries` and a 4x4 RGBA image for each unified code in `present`."""
    root = os.path.join(npm_dir, "node_modules", package)
    os.makedirs(os.path.join(root, "img", vendor, "64"), exist_ok=True)
    with open(os.path.join(root, "emoji.json"), "w") as stream:
        json.dump(entries, stream)
    with open(os.path.join(root, "package.json"), "w") as stream:
        json.dump({"name": package, "version": "9.9.9"}, stream)
    for entry in entries:
        if entry["unified"] in present:
            # Left half opaque red, right half fully transparent (stored as transparent black).
            image = np.zeros((4, 4, 4), np.uint8)
            image[:, :2] = [255, 0, 0, 255]
            _write_png(os.path.join(root, "img", vendor, "64", entry["image"]), image)


def _entry(unified, skin_tones=False):
    entry = {"unified": unified, "image": f"{unified.lower()}.png"}
    if skin_tones:
        variation = f"{unified}-1F3FB"
        entry["skin_variations"] = {"1F3FB": {"unified": variation, "image": f"{variation.lower()}.png"}}
    return entry


@pytest.fixture
def npm_dir(tmp_path):
    entries = [_entry("1F600"), _entry("1F601"), _entry("1F385", skin_tones=True), _entry("2764"), _entry("1F602")]
    all_codes = {entry["unified"] for entry in entries}
    # Twemoji lacks 1F602, so that emoji has one image only and is dropped.
    _fake_package(tmp_path / "npm", "emoji-datasource-google", "google", entries, all_codes)
    _fake_package(tmp_path / "npm", "emoji-datasource-twitter", "twitter", entries, all_codes - {"1F602"})
    # A skin-tone image on disk must still not become a class.
    _write_png(
        str(tmp_path / "npm" / "node_modules" / "emoji-datasource-google" / "img" / "google" / "64" / "1f385-1f3fb.png"),
        np.full((4, 4, 4), 255, np.uint8),
    )
    return str(tmp_path / "npm")


def test_build_splits_sorted_classes_in_half(npm_dir, tmp_path):
    output = str(tmp_path / "data")
    summary = tool.build(npm_dir, output)

    assert summary == {"train": 2, "test": 2, "missing": {"google": 0, "twitter": 1}}
    assert sorted(os.listdir(os.path.join(output, "train"))) == ["1F385", "1F600"]
    assert sorted(os.listdir(os.path.join(output, "test"))) == ["1F601", "2764"]
    for split in ("train", "test"):
        for name in os.listdir(os.path.join(output, split)):
            assert sorted(os.listdir(os.path.join(output, split, name))) == ["google.png", "twitter.png"]


def test_build_drops_single_vendor_and_skin_tones(npm_dir, tmp_path):
    output = str(tmp_path / "data")
    tool.build(npm_dir, output)

    classes = set(os.listdir(os.path.join(output, "train"))) | set(os.listdir(os.path.join(output, "test")))
    assert "1F602" not in classes
    assert "1F385-1F3FB" not in classes


def test_build_composites_onto_white(npm_dir, tmp_path):
    output = str(tmp_path / "data")
    tool.build(npm_dir, output)

    image = tf.io.decode_png(tf.io.read_file(os.path.join(output, "train", "1F600", "google.png"))).numpy()
    assert image.shape == (4, 4, 3)
    np.testing.assert_array_equal(image[:, :2], np.broadcast_to([255, 0, 0], (4, 2, 3)))
    np.testing.assert_array_equal(image[:, 2:], np.full((4, 2, 3), 255))


def test_build_writes_attribution(npm_dir, tmp_path):
    output = str(tmp_path / "data")
    tool.build(npm_dir, output)

    with open(os.path.join(output, "ATTRIBUTION.md")) as stream:
        text = stream.read()
    assert "Apache License 2.0" in text
    assert "CC-BY-4.0" in text
    assert "emoji-datasource-twitter 9.9.9" in text


def test_build_rejects_existing_output(npm_dir, tmp_path):
    output = str(tmp_path / "data")
    tool.build(npm_dir, output)

    with pytest.raises(FileExistsError, match="--overwrite"):
        tool.build(npm_dir, output)
    tool.build(npm_dir, output, overwrite=True)
    assert len(os.listdir(os.path.join(output, "train"))) == 2


def test_build_reports_missing_package(tmp_path):
    with pytest.raises(tool.EmojiPackageError, match="npm install"):
        tool.build(str(tmp_path / "empty"), str(tmp_path / "data"))


def test_loader_reads_built_dataset(npm_dir, tmp_path):
    from hdml_tf import data as data_lib

    output = str(tmp_path / "data")
    tool.build(npm_dir, output)
    splits = data_lib.load_dataset("image_folder", data_dir=output)

    assert len(splits.train) == 4
    assert len(splits.test) == 4
    assert splits.train.num_classes == 2
    assert splits.test.num_classes == 2
