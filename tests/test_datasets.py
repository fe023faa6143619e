"""Dataset loaders on miniature copies of the official CUB-200-2011, Cars196 and SOP layouts."""

import gzip
import io
import logging
import os
import shutil
import tarfile
import time
import zipfile

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from PIL import Image

import miniature_datasets as mini
from hdml_tf import data as data_lib
from hdml_tf.data import cars196, cub, fashion_mnist, files, image_folder, sop, tfds_export
from hdml_tf.data.pipeline import make_eval_dataset

# JPEG compression and resizing move a solid color by a few levels; this allows for it.
COLOR_TOLERANCE = 12


def _split_records(records, is_train):
    return [record for record in records if is_train(record.class_id)], [
        record for record in records if not is_train(record.class_id)
    ]


def _assert_split_matches(split, records):
    """Check paths, 0-based contiguous labels in sorted class-id order, and class counts."""
    assert sorted(split.paths) == sorted(record.path for record in records)
    class_ids = sorted({record.class_id for record in records})
    expected_labels = {record.path: class_ids.index(record.class_id) for record in records}
    assert [expected_labels[path] for path in split.paths] == split.labels.tolist()
    assert split.num_classes == len(class_ids)
    assert sorted(set(split.labels.tolist())) == list(range(split.num_classes))


def _decode(split):
    images, labels = [], []
    for image_batch, label_batch in make_eval_dataset(split, image_size=64, batch_size=8):
        images.append(image_batch.numpy())
        labels.append(label_batch.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _assert_decodes_to_colors(split, colors_by_path):
    images, labels = _decode(split)
    assert images.shape == (len(split), 64, 64, 3)
    np.testing.assert_array_equal(labels, split.labels)
    for image, path in zip(images, split.paths):
        mean_color = image.reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(mean_color, colors_by_path[path], atol=COLOR_TOLERANCE, err_msg=path)


def _warnings(caplog):
    return "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING)


@pytest.fixture(autouse=True)
def no_tfds_download(monkeypatch):
    """Fail any test that reaches tensorflow-datasets, which would use the network."""

    def reject_download(*args, **kwargs):
        raise AssertionError("a test reached tensorflow-datasets")

    monkeypatch.setattr(tfds_export, "_tfds_examples", reject_download)


def _small_counts(train_images, train_classes, test_images, test_classes):
    return {
        "train": files.ExpectedCounts(train_images, train_classes),
        "test": files.ExpectedCounts(test_images, test_classes),
    }


# === Cheap image checks ===


def _check_bytes(tmp_path, data, name="image"):
    path = tmp_path / name
    path.write_bytes(data)
    return files.check_image_file(str(path), os.path.realpath(tmp_path))


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "BMP", "GIF"])
def test_check_accepts_valid_images(tmp_path, image_format):
    assert _check_bytes(tmp_path, mini.encode_image((10, 200, 30), image_format)) is None


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "BMP", "GIF"])
def test_check_rejects_truncated_images(tmp_path, image_format):
    data = mini.encode_image((10, 200, 30), image_format, size=64)
    reason = _check_bytes(tmp_path, data[: len(data) * 2 // 3])
    assert reason is not None
    assert "truncated" in reason


def test_check_accepts_jpeg_with_trailing_data(tmp_path):
    data = mini.encode_image((10, 200, 30)) + bytes(range(256)) * 12
    assert len(data) - data.rindex(b"\xff\xd9") > files.TAIL_WINDOW_BYTES
    assert _check_bytes(tmp_path, data) is None


def test_check_rejects_jpeg_without_scan_end(tmp_path):
    data = mini.encode_image((10, 200, 30), size=64)
    truncated = data[: data.rindex(b"\xff\xd9")]
    assert not files.jpeg_has_end_marker(truncated)
    assert files.jpeg_has_end_marker(data)
    assert "no end-of-image marker" in _check_bytes(tmp_path, truncated)


def test_check_rejects_empty_and_unknown_files(tmp_path):
    assert _check_bytes(tmp_path, b"", "empty.jpg") == "empty file"
    assert "not a JPEG, PNG, BMP or GIF image" in _check_bytes(tmp_path, b"<html>not found</html>", "page.jpg")
    assert files.check_image_file(str(tmp_path / "absent.jpg"), os.path.realpath(tmp_path)) == "file not found"


def test_unsafe_path_reasons():
    assert files.unsafe_path_reason("001.Bird/a.jpg") is None
    assert files.unsafe_path_reason("/etc/passwd") == "absolute path"
    assert files.unsafe_path_reason("a/../../b.jpg") == "path contains '..'"
    assert files.unsafe_path_reason("a\\..\\b.jpg") == "path contains '..'"
    assert files.unsafe_path_reason("") == "empty path"
    with pytest.raises(files.BadImageError, match="absolute path"):
        files.safe_join("/data", "/etc/passwd")


# === Archives ===


def _tar_with(path, name, member_type=tarfile.REGTYPE, link_target=""):
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo(name)
        info.type = member_type
        info.linkname = link_target
        payload = b"escaped" if member_type == tarfile.REGTYPE else b""
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))


@pytest.mark.parametrize(
    "name, member_type, problem",
    [
        ("../escape.txt", tarfile.REGTYPE, "contains '..'"),
        ("CUB_200_2011/../../escape.txt", tarfile.REGTYPE, "contains '..'"),
        ("/tmp/hdml_escape_absolute.txt", tarfile.REGTYPE, "absolute path"),
        ("CUB_200_2011/link", tarfile.SYMTYPE, "link or special file"),
    ],
)
def test_extract_rejects_unsafe_tar_members(tmp_path, name, member_type, problem):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    archive = data_dir / "CUB_200_2011.tgz"
    _tar_with(archive, name, member_type, link_target="/etc/passwd")
    with pytest.raises(files.UnsafeArchiveError, match=problem):
        files.extract_archive(str(archive), str(data_dir))
    assert not (tmp_path / "escape.txt").exists()
    assert not os.path.exists("/tmp/hdml_escape_absolute.txt")
    assert sorted(os.listdir(data_dir)) == ["CUB_200_2011.tgz"]


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/escape.txt"])
def test_extract_rejects_unsafe_zip_members(tmp_path, name):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    archive = data_dir / "Stanford_Online_Products.zip"
    with zipfile.ZipFile(archive, "w") as stream:
        stream.writestr("Stanford_Online_Products/Ebay_train.txt", "image_id class_id super_class_id path\n")
        stream.writestr(name, "escaped")
    with pytest.raises(files.UnsafeArchiveError):
        sop.load_sop(str(data_dir), allow_partial_dataset=True)
    assert not (tmp_path / "escape.txt").exists()
    assert sorted(os.listdir(data_dir)) == ["Stanford_Online_Products.zip"]


def test_truncated_archive_leaves_nothing(tmp_path):
    mini.write_cub(tmp_path)
    archive = mini.make_tar(tmp_path, "CUB_200_2011.tgz", ["CUB_200_2011"])
    shutil.rmtree(tmp_path / "CUB_200_2011")
    data = open(archive, "rb").read()
    with open(archive, "wb") as stream:
        stream.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="failed to extract .*CUB_200_2011.tgz"):
        cub.load_cub(str(tmp_path), allow_partial_dataset=True)
    assert sorted(os.listdir(tmp_path)) == ["CUB_200_2011.tgz"]


def test_unsafe_archive_stops_loader(tmp_path):
    _tar_with(tmp_path / "CUB_200_2011.tgz", "../escape.txt")
    with pytest.raises(files.UnsafeArchiveError, match="escape.txt"):
        cub.load_cub(str(tmp_path))


# === CUB-200-2011 ===


def _cub_archive(tmp_path):
    records = mini.write_cub(tmp_path)
    mini.make_tar(tmp_path, "CUB_200_2011.tgz", ["CUB_200_2011"])
    shutil.rmtree(tmp_path / "CUB_200_2011")
    return records


def test_cub_archive_gives_class_disjoint_splits(tmp_path):
    records = _cub_archive(tmp_path)
    splits = cub.load_cub(str(tmp_path), allow_partial_dataset=True)

    train_records, test_records = _split_records(records, lambda class_id: class_id <= 100)
    assert splits.name == "cub"
    _assert_split_matches(splits.train, train_records)
    _assert_split_matches(splits.test, test_records)
    assert splits.train.class_names == ["001.Bird_1", "002.Bird_2", "100.Bird_100"]
    assert splits.test.class_names == ["101.Bird_101", "150.Bird_150", "200.Bird_200"]
    assert not set(splits.train.class_names) & set(splits.test.class_names)
    assert sorted(os.listdir(tmp_path)) == ["CUB_200_2011", "CUB_200_2011.tgz"]


def test_cub_extracts_archive_once(tmp_path):
    _cub_archive(tmp_path)
    first = cub.load_cub(str(tmp_path), allow_partial_dataset=True)
    os.remove(tmp_path / "CUB_200_2011.tgz")
    second = cub.load_cub(str(tmp_path), allow_partial_dataset=True)
    assert second.train.paths.tolist() == first.train.paths.tolist()
    assert second.test.labels.tolist() == first.test.labels.tolist()


def test_cub_reads_extracted_folder_as_data_dir(tmp_path):
    records = mini.write_cub(tmp_path)
    splits = cub.load_cub(str(tmp_path / "CUB_200_2011"), allow_partial_dataset=True)
    _assert_split_matches(splits.test, [record for record in records if record.class_id > 100])


def test_cub_count_mismatch_raises(tmp_path):
    mini.write_cub(tmp_path)
    with pytest.raises(data_lib.DatasetCountError) as error:
        cub.load_cub(str(tmp_path))
    message = str(error.value)
    assert "6 images in 3 classes" in message
    assert "5,864 images in 100 classes" in message
    assert "--allow_partial_dataset" in message


def test_cub_partial_dataset_logs_warning(tmp_path, caplog):
    mini.write_cub(tmp_path)
    with caplog.at_level(logging.WARNING):
        cub.load_cub(str(tmp_path), allow_partial_dataset=True)
    warnings = _warnings(caplog)
    assert "5,864 images in 100 classes" in warnings
    assert "5,924 images in 100 classes" in warnings


def test_cub_matching_counts_pass(tmp_path, monkeypatch):
    mini.write_cub(tmp_path)
    monkeypatch.setattr(cub, "EXPECTED_COUNTS", _small_counts(6, 3, 6, 3))
    splits = cub.load_cub(str(tmp_path))
    assert (len(splits.train), len(splits.test)) == (6, 6)

    monkeypatch.setattr(cub, "EXPECTED_COUNTS", _small_counts(6, 3, 7, 3))
    with pytest.raises(data_lib.DatasetCountError, match="7 images in 3 classes"):
        cub.load_cub(str(tmp_path))


def test_cub_not_found_is_fast_and_explains(tmp_path):
    started = time.perf_counter()
    with pytest.raises(data_lib.DatasetNotFoundError) as error:
        cub.load_cub(str(tmp_path))
    assert time.perf_counter() - started < 5
    message = str(error.value)
    assert "place CUB_200_2011.tgz" in message
    assert str(tmp_path) in message
    assert "images.txt, image_class_labels.txt, classes.txt" in message
    assert "--download" in message


@pytest.mark.parametrize("load", [cub.load_cub, cars196.load_cars196, sop.load_sop, image_folder.load_image_folder])
def test_loaders_need_data_dir(load):
    with pytest.raises(data_lib.DatasetNotFoundError, match="--data_dir"):
        load(None)


def test_cub_grayscale_and_cmyk_decode(tmp_path):
    records = mini.write_cub(tmp_path)
    images_dir = tmp_path / "CUB_200_2011" / "images"
    gray = (120, 120, 120)
    cmyk_color = (200, 40, 60)
    mini.write_image(str(images_dir / "001.Bird_1" / "gray.jpg"), gray, mode="L")
    mini.write_image(str(images_dir / "002.Bird_2" / "cmyk.jpg"), cmyk_color, mode="CMYK")
    assert Image.open(images_dir / "002.Bird_2" / "cmyk.jpg").mode == "CMYK"
    assert Image.open(images_dir / "001.Bird_1" / "gray.jpg").mode == "L"
    mini.append_cub_entry(tmp_path, "001.Bird_1/gray.jpg", 1)
    mini.append_cub_entry(tmp_path, "002.Bird_2/cmyk.jpg", 2)

    splits = cub.load_cub(str(tmp_path), allow_partial_dataset=True)
    assert len(splits.train) == 8
    colors = {record.path: record.color for record in records}
    colors[str(images_dir / "001.Bird_1" / "gray.jpg")] = gray
    colors[str(images_dir / "002.Bird_2" / "cmyk.jpg")] = cmyk_color
    _assert_decodes_to_colors(splits.train, colors)
    _assert_decodes_to_colors(splits.test, colors)


# --- Bad entries and files ---

OUTSIDE_IMAGE = "outside.jpg"


def _break_cub(tmp_path, case, victim):
    """Make one CUB entry bad; return (the name the error must show, the reason text)."""
    images_dir = tmp_path / "CUB_200_2011" / "images"
    victim_path = images_dir / victim
    outside = tmp_path / OUTSIDE_IMAGE
    mini.write_image(str(outside), (1, 2, 3))
    if case == "corrupt":
        victim_path.write_bytes(os.urandom(300).replace(b"\xff", b"\x00"))
        return str(victim_path), "not a JPEG, PNG, BMP or GIF image"
    if case == "truncated":
        data = mini.encode_image((50, 60, 70), size=64)
        victim_path.write_bytes(data[: len(data) // 2])
        return str(victim_path), "truncated JPEG"
    if case == "empty":
        victim_path.write_bytes(b"")
        return str(victim_path), "empty file"
    if case == "missing":
        os.remove(victim_path)
        return str(victim_path), "file not found"
    if case == "symlink":
        os.remove(victim_path)
        os.symlink(outside, victim_path)
        return str(victim_path), "outside the dataset folder"
    if case == "absolute":
        mini.append_cub_entry(tmp_path, str(outside), 1)
        return str(outside), "absolute path"
    if case == "dotdot":
        mini.append_cub_entry(tmp_path, f"001.Bird_1/../../../{OUTSIDE_IMAGE}", 1)
        return f"../../../{OUTSIDE_IMAGE}", "path contains '..'"
    raise ValueError(case)


BAD_CASES = ["corrupt", "truncated", "empty", "missing", "symlink", "absolute", "dotdot"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_cub_bad_entry_raises_naming_file(tmp_path, case):
    records = mini.write_cub(tmp_path)
    victim = os.path.relpath(records[1].path, tmp_path / "CUB_200_2011" / "images")
    name, reason = _break_cub(tmp_path, case, victim)
    with pytest.raises(data_lib.BadImageError) as error:
        cub.load_cub(str(tmp_path), allow_partial_dataset=True)
    message = str(error.value)
    assert name in message
    assert reason in message
    assert "1 of the" in message
    assert "Replace these files with the ones from the official archive, or pass --skip_bad_images" in message
    assert "skip_bad_images=True" not in message


@pytest.mark.parametrize("case", BAD_CASES)
def test_cub_bad_entry_skipped_and_logged(tmp_path, case, caplog, monkeypatch):
    records = mini.write_cub(tmp_path)
    victim = os.path.relpath(records[1].path, tmp_path / "CUB_200_2011" / "images")
    name, reason = _break_cub(tmp_path, case, victim)
    opened = []

    def recording_open(path, *args, **kwargs):
        opened.append(os.path.realpath(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(files, "open", recording_open, raising=False)

    with caplog.at_level(logging.WARNING):
        splits = cub.load_cub(str(tmp_path), allow_partial_dataset=True, skip_bad_images=True)

    warnings = _warnings(caplog)
    assert "Skipped 1 of the" in warnings
    assert name in warnings
    assert reason in warnings
    outside = os.path.realpath(tmp_path / OUTSIDE_IMAGE)
    assert len(opened) >= 11
    assert outside not in opened
    assert outside not in splits.train.paths.tolist()
    kept = [record for record in records if record.class_id <= 100]
    if case not in ("absolute", "dotdot"):
        kept = [record for record in kept if record.path != records[1].path]
    _assert_split_matches(splits.train, kept)
    assert len(splits.test) == 6


def test_skipped_images_still_fail_count_check(tmp_path, monkeypatch):
    records = mini.write_cub(tmp_path)
    os.remove(records[0].path)
    monkeypatch.setattr(cub, "EXPECTED_COUNTS", _small_counts(6, 3, 6, 3))
    with pytest.raises(data_lib.DatasetCountError, match="5 images in 3 classes"):
        cub.load_cub(str(tmp_path), skip_bad_images=True)


def test_class_losing_all_images_keeps_labels_contiguous(tmp_path):
    records = mini.write_cub(tmp_path)
    for record in records:
        if record.class_id == 2:
            os.remove(record.path)
    splits = cub.load_cub(str(tmp_path), allow_partial_dataset=True, skip_bad_images=True)
    assert splits.train.class_names == ["001.Bird_1", "100.Bird_100"]
    assert splits.train.labels.tolist() == [1, 1, 0, 0]  # images.txt lists class 100 before class 1.


# === Cars196 ===


def test_cars_devkit_archives_merge_and_resplit(tmp_path):
    records = mini.write_cars_devkit(tmp_path)
    mini.make_tar(tmp_path, "cars_train.tgz", ["cars_train"])
    mini.make_tar(tmp_path, "cars_test.tgz", ["cars_test"])
    mini.make_tar(tmp_path, "car_devkit.tgz", ["devkit"])
    for folder in ("cars_train", "cars_test", "devkit"):
        shutil.rmtree(tmp_path / folder)

    splits = cars196.load_cars196(str(tmp_path), allow_partial_dataset=True)

    train_records, test_records = _split_records(records, lambda class_id: class_id <= 98)
    _assert_split_matches(splits.train, train_records)
    _assert_split_matches(splits.test, test_records)
    assert splits.train.class_names == [mini.cars_class_name(class_id) for class_id in (1, 2, 98)]
    assert splits.test.class_names == [mini.cars_class_name(class_id) for class_id in (99, 150, 196)]
    # Each split takes images of both official image-wise halves.
    for split in (splits.train, splits.test):
        assert {os.path.basename(os.path.dirname(path)) for path in split.paths} == {"cars_train", "cars_test"}


def test_cars_devkit_test_annotations_in_devkit_folder(tmp_path):
    records = mini.write_cars_devkit(tmp_path, test_annotations_in_devkit=True)
    splits = cars196.load_cars196(str(tmp_path), allow_partial_dataset=True)
    _assert_split_matches(splits.test, [record for record in records if record.class_id > 98])


def test_cars_annos_layout_from_archive(tmp_path):
    records = mini.write_cars_annos(tmp_path)
    mini.make_tar(tmp_path, "car_ims.tgz", ["car_ims"])
    shutil.rmtree(tmp_path / "car_ims")

    splits = cars196.load_cars196(str(tmp_path), allow_partial_dataset=True)

    train_records, test_records = _split_records(records, lambda class_id: class_id <= 98)
    _assert_split_matches(splits.train, train_records)
    _assert_split_matches(splits.test, test_records)
    assert splits.test.class_names[-1] == mini.cars_class_name(196)


def test_cars_count_mismatch_raises(tmp_path):
    mini.write_cars_annos(tmp_path)
    with pytest.raises(data_lib.DatasetCountError, match="8,054 images in 98 classes"):
        cars196.load_cars196(str(tmp_path))


@pytest.mark.parametrize(
    "entry, reason",
    [
        ("car_ims/999999.jpg", "file not found"),
        ("/etc/hostname", "absolute path"),
        ("car_ims/../../escape.jpg", "path contains '..'"),
    ],
)
def test_cars_bad_annotation_entries(tmp_path, entry, reason):
    mini.write_cars_annos(tmp_path, extra_paths=[(entry, 5)])
    with pytest.raises(data_lib.BadImageError) as error:
        cars196.load_cars196(str(tmp_path), allow_partial_dataset=True)
    assert entry in str(error.value)
    assert reason in str(error.value)
    assert "cars_annos.mat" in str(error.value)

    splits = cars196.load_cars196(str(tmp_path), allow_partial_dataset=True, skip_bad_images=True)
    assert len(splits.train) == 12


def test_cars_devkit_absolute_fname_is_rejected(tmp_path):
    mini.write_cars_devkit(tmp_path)
    annotations = cars196.read_annotations(str(tmp_path / "devkit" / "cars_train_annos.mat"), ("fname", "class"))
    assert annotations["fname"][0] == "00001.jpg"
    assert int(annotations["class"][0]) == 1
    rows = [{"bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 5, "bbox_y2": 5, "class": 1, "fname": "/etc/hostname"}]
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    scipy.io.savemat(str(tmp_path / "devkit" / "cars_train_annos.mat"), {"annotations": mini.struct_array(rows, fields)})
    with pytest.raises(data_lib.BadImageError, match="'/etc/hostname'.*absolute path"):
        cars196.load_cars196(str(tmp_path), allow_partial_dataset=True)


def test_cars_not_found_names_both_layouts(tmp_path):
    with pytest.raises(data_lib.DatasetNotFoundError) as error:
        cars196.load_cars196(str(tmp_path))
    message = str(error.value)
    for name in ("car_ims.tgz", "cars_annos.mat", "cars_train.tgz", "cars_test.tgz", "car_devkit.tgz",
                 "cars_test_annos_withlabels.mat", "--download", str(tmp_path)):
        assert name in message
    assert "Found part" not in message


def test_cars_partial_layout_names_missing_file(tmp_path):
    mini.write_cars_devkit(tmp_path)
    os.remove(tmp_path / "cars_test_annos_withlabels.mat")
    with pytest.raises(data_lib.DatasetNotFoundError) as error:
        cars196.load_cars196(str(tmp_path))
    assert "Found part of the cars_train/, cars_test/ and devkit/ layout; missing: cars_test_annos_withlabels.mat" in (
        str(error.value)
    )


# === Stanford Online Products ===


def test_sop_zip_gives_official_splits(tmp_path):
    records = mini.write_sop(tmp_path)
    mini.make_zip(tmp_path, "Stanford_Online_Products.zip", "Stanford_Online_Products")
    shutil.rmtree(tmp_path / "Stanford_Online_Products")

    splits = sop.load_sop(str(tmp_path), allow_partial_dataset=True)

    _assert_split_matches(splits.train, records["train"])
    _assert_split_matches(splits.test, records["test"])
    assert splits.train.class_names == ["1", "2", "3", "11318"]
    assert splits.test.class_names == ["11319", "11320", "22634"]
    assert all(path.endswith(".JPG") for path in splits.train.paths)


def test_sop_extracted_folder_as_data_dir(tmp_path):
    records = mini.write_sop(tmp_path)
    splits = sop.load_sop(str(tmp_path / "Stanford_Online_Products"), allow_partial_dataset=True)
    _assert_split_matches(splits.test, records["test"])


def test_sop_count_mismatch_raises(tmp_path):
    mini.write_sop(tmp_path)
    with pytest.raises(data_lib.DatasetCountError, match="59,551 images in 11,318 classes"):
        sop.load_sop(str(tmp_path))


def test_sop_shared_classes_raise(tmp_path):
    mini.write_sop(tmp_path, train_classes=(1, 2), test_classes=(2, 3))
    with pytest.raises(ValueError, match="class ids appear in both"):
        sop.load_sop(str(tmp_path), allow_partial_dataset=True)


def test_sop_invalid_header_raises(tmp_path):
    mini.write_sop(tmp_path)
    path = tmp_path / "Stanford_Online_Products" / "Ebay_test.txt"
    path.write_text("\n".join(path.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(ValueError, match="must start with the header"):
        sop.load_sop(str(tmp_path), allow_partial_dataset=True)


def test_sop_dotdot_entry_rejected(tmp_path):
    mini.write_sop(tmp_path)
    path = tmp_path / "Stanford_Online_Products" / "Ebay_train.txt"
    with open(path, "a") as stream:
        stream.write("999 3 1 bicycle_final/../../outside.JPG\n")
    with pytest.raises(data_lib.BadImageError, match=r"outside\.JPG.*'\.\.'"):
        sop.load_sop(str(tmp_path), allow_partial_dataset=True)


def test_sop_not_found_explains(tmp_path):
    with pytest.raises(data_lib.DatasetNotFoundError) as error:
        sop.load_sop(str(tmp_path))
    assert "Stanford_Online_Products.zip" in str(error.value)
    assert "Ebay_train.txt and Ebay_test.txt" in str(error.value)


# === Image folders ===


def _write_class_folders(root, names, per_class=2, start=0):
    colors = {}
    extensions = (".jpg", ".JPG", ".png", ".jpeg")
    for class_index, name in enumerate(names):
        for number in range(per_class):
            extension = extensions[(class_index + number) % len(extensions)]
            path = os.path.join(root, name, f"image{number}{extension}")
            color = mini.color_for(start + class_index * per_class + number)
            mini.write_image(path, color, "PNG" if extension == ".png" else "JPEG")
            colors[path] = color
    return colors


def test_image_folder_splits_sorted_classes(tmp_path):
    colors = _write_class_folders(str(tmp_path), ["e", "b", "a", "d", "c"])
    (tmp_path / "a" / ".hidden.jpg").write_bytes(b"not an image")
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    (tmp_path / ".cache").mkdir()
    mini.write_image(str(tmp_path / ".cache" / "x.jpg"), (1, 1, 1))
    mini.write_image(str(tmp_path / "b" / "nested" / "deep.BMP"), (9, 99, 199), "BMP")
    colors[str(tmp_path / "b" / "nested" / "deep.BMP")] = (9, 99, 199)

    splits = image_folder.load_image_folder(str(tmp_path), test_class_fraction=0.4)

    assert splits.train.class_names == ["a", "b", "c"]
    assert splits.test.class_names == ["d", "e"]
    assert splits.train.labels.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert splits.test.labels.tolist() == [0, 0, 1, 1]
    assert str(tmp_path / "b" / "nested" / "deep.BMP") in splits.train.paths.tolist()
    assert not any("/." in path for path in splits.train.paths)
    _assert_decodes_to_colors(splits.train, colors)


def test_image_folder_train_test_layout(tmp_path):
    _write_class_folders(str(tmp_path / "train"), ["cat", "ant"])
    _write_class_folders(str(tmp_path / "test"), ["dog", "bee", "eel"], per_class=1, start=10)
    splits = image_folder.load_image_folder(str(tmp_path), test_class_fraction=0.9)
    assert splits.train.class_names == ["ant", "cat"]
    assert splits.test.class_names == ["bee", "dog", "eel"]
    assert splits.train.labels.tolist() == [0, 0, 1, 1]
    assert splits.test.labels.tolist() == [0, 1, 2]
    assert all("/train/" in path for path in splits.train.paths)


@pytest.mark.parametrize("present, missing", [("train", "test"), ("test", "train")])
def test_image_folder_one_split_folder_raises(tmp_path, present, missing):
    _write_class_folders(str(tmp_path / present), ["cat", "ant"])
    with pytest.raises(data_lib.DatasetFileError) as error:
        image_folder.load_image_folder(str(tmp_path))
    message = str(error.value)
    assert f"{tmp_path} has a {present}/ folder but no {missing}/ folder" in message
    assert f"add {missing}/ with its own class folders" in message


def test_image_folder_single_class_raises(tmp_path):
    _write_class_folders(str(tmp_path), ["cat"])
    with pytest.raises(data_lib.DatasetFileError) as error:
        image_folder.load_image_folder(str(tmp_path))
    message = str(error.value)
    assert f"{tmp_path} has only one class folder, cat/" in message
    assert "needs at least 2" in message


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5])
def test_image_folder_invalid_fraction_raises(tmp_path, fraction):
    _write_class_folders(str(tmp_path), ["a", "b", "c"])
    with pytest.raises(ValueError, match="--test_class_fraction"):
        image_folder.load_image_folder(str(tmp_path), test_class_fraction=fraction)


def test_split_classes_rounds_and_keeps_both_sides():
    assert image_folder.split_classes(["a", "b", "c", "d"], 0.5) == (["a", "b"], ["c", "d"])
    assert image_folder.split_classes(["a", "b", "c"], 0.01) == (["a", "b"], ["c"])
    assert image_folder.split_classes(["a", "b", "c"], 0.99) == (["a"], ["b", "c"])
    with pytest.raises(data_lib.DatasetFileError, match="at least 2 class folders"):
        image_folder.split_classes(["a"], 0.5)


def test_image_folder_corrupt_image(tmp_path):
    _write_class_folders(str(tmp_path), ["a", "b", "c", "d"])
    (tmp_path / "c" / "image0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(data_lib.BadImageError) as error:
        image_folder.load_image_folder(str(tmp_path))
    message = str(error.value)
    assert f"{tmp_path / 'c' / 'image0.png'}: truncated PNG" in message
    assert "Remove or replace these files, or pass --skip_bad_images to leave them out." in message
    assert "official" not in message
    splits = image_folder.load_image_folder(str(tmp_path), skip_bad_images=True)
    assert len(splits.test) == 3


def test_image_folder_without_classes_not_found(tmp_path):
    with pytest.raises(data_lib.DatasetNotFoundError, match="no class folders"):
        image_folder.load_image_folder(str(tmp_path))


# === Decoding through the input pipeline ===


def _cars_devkit(tmp_path):
    records = mini.write_cars_devkit(tmp_path)
    return cars196.load_cars196(str(tmp_path), allow_partial_dataset=True), records


def _cars_annos(tmp_path):
    records = mini.write_cars_annos(tmp_path)
    return cars196.load_cars196(str(tmp_path), allow_partial_dataset=True), records


def _cub(tmp_path):
    records = mini.write_cub(tmp_path)
    return cub.load_cub(str(tmp_path), allow_partial_dataset=True), records


def _sop(tmp_path):
    records = mini.write_sop(tmp_path)
    return sop.load_sop(str(tmp_path), allow_partial_dataset=True), records["train"] + records["test"]


@pytest.mark.parametrize("make", [_cub, _cars_devkit, _cars_annos, _sop])
def test_loaded_images_decode_in_pipeline(tmp_path, make):
    splits, records = make(tmp_path)
    colors = {record.path: record.color for record in records}
    _assert_decodes_to_colors(splits.train, colors)
    _assert_decodes_to_colors(splits.test, colors)


# === Damaged image data, found only by decoding ===


def _folder_with_damaged_jpegs(tmp_path, damaged_names):
    """Write an image folder of classes a-d, then a damaged JPEG at each relative path of `damaged_names`.

    Classes c and d become the test classes. Returns the loaded splits and the damaged paths.
    """
    _write_class_folders(str(tmp_path), ["a", "b", "c", "d"], per_class=3)
    damaged = []
    for name in damaged_names:
        path = str(tmp_path / name)
        mini.write_damaged_jpeg(path)
        damaged.append(path)
    return image_folder.load_image_folder(str(tmp_path)), damaged


def _pipeline_error(split):
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        _decode(split)
    return error.value


def test_damaged_jpeg_fails_only_decoding(tmp_path):
    mini.write_damaged_jpeg(str(tmp_path / "damaged.jpg"))
    assert files.check_image_file(str(tmp_path / "damaged.jpg"), os.path.realpath(tmp_path)) is None
    with pytest.raises(tf.errors.InvalidArgumentError, match="jpeg::Uncompress failed"):
        tf.io.decode_image(tf.io.read_file(str(tmp_path / "damaged.jpg")), channels=3, expand_animations=False)


def test_find_undecodable_names_damaged_file(tmp_path):
    splits, damaged = _folder_with_damaged_jpegs(tmp_path, ["c/damaged0.jpg"])
    assert data_lib.find_undecodable_images(splits.train) == {}
    failures = data_lib.find_undecodable_images(splits.test)
    assert list(failures) == damaged
    assert failures[damaged[0]].startswith("jpeg::Uncompress failed")
    assert "{{function_node" not in failures[damaged[0]]
    assert "[Op:" not in failures[damaged[0]]


def test_find_undecodable_limit_keeps_split_order(tmp_path):
    splits, damaged = _folder_with_damaged_jpegs(tmp_path, ["d/damaged2.jpg", "c/damaged0.jpg"])
    ordered = sorted(damaged, key=splits.test.paths.tolist().index)
    assert list(data_lib.find_undecodable_images(splits.test)) == ordered
    assert list(data_lib.find_undecodable_images(splits.test, limit=1)) == ordered[:1]
    with pytest.raises(ValueError, match="limit=0 is invalid"):
        data_lib.find_undecodable_images(splits.test, limit=0)


def test_find_undecodable_lists_deleted_file(tmp_path):
    splits, _ = _folder_with_damaged_jpegs(tmp_path, [])
    deleted = splits.train.paths[1]
    os.remove(deleted)
    failures = data_lib.find_undecodable_images(splits.train)
    assert list(failures) == [deleted]
    assert deleted in failures[deleted]


def test_find_undecodable_in_memory_split_is_empty():
    split = data_lib.Split(labels=[0, 1], class_names=["a", "b"], images=np.zeros((2, 4, 4, 1), np.uint8))
    assert data_lib.find_undecodable_images(split) == {}


def test_pipeline_error_becomes_bad_image_error(tmp_path):
    splits, damaged = _folder_with_damaged_jpegs(tmp_path, ["c/damaged0.jpg"])
    pipeline_error = _pipeline_error(splits.test)
    assert damaged[0] not in str(pipeline_error)

    with pytest.raises(data_lib.BadImageError) as error:
        data_lib.raise_undecodable_image_error(splits.test, pipeline_error, split_name="test")
    message = str(error.value)
    assert "1 image file of the test split fails to decode" in message
    assert f"{damaged[0]}: jpeg::Uncompress failed" in message
    assert "--skip_bad_images does not leave them out. Remove or replace them." in message
    assert "more may follow" not in message
    assert error.value.__cause__ is pipeline_error


def test_bad_image_error_stops_at_limit(tmp_path):
    splits, damaged = _folder_with_damaged_jpegs(tmp_path, ["c/damaged0.jpg", "c/damaged1.jpg", "d/damaged0.jpg"])
    with pytest.raises(data_lib.BadImageError) as error:
        data_lib.raise_undecodable_image_error(splits.test, _pipeline_error(splits.test), limit=2)
    message = str(error.value)
    assert "2 image files fail to decode" in message
    assert sum(path in message for path in damaged) == 2
    assert "The search stopped after 2 files, so more may follow." in message


def test_pipeline_error_reraised_when_files_decode(tmp_path):
    splits, _ = _folder_with_damaged_jpegs(tmp_path, [])
    other_error = tf.errors.InvalidArgumentError(None, None, "shapes do not match")
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        data_lib.raise_undecodable_image_error(splits.train, other_error)
    assert error.value is other_error

    in_memory = data_lib.Split(labels=[0], class_names=["a"], images=np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        data_lib.raise_undecodable_image_error(in_memory, other_error)
    assert error.value is other_error


# === tensorflow-datasets export (with a stand-in for the builder) ===


class _FakeLabel:
    def __init__(self, names):
        self.names = names

    def int2str(self, index):
        return self.names[index]


class _FakeInfo:
    def __init__(self, label_names):
        self.features = {"label": _FakeLabel(label_names)}


def _fake_examples(examples_by_split, label_names=()):
    info = _FakeInfo(list(label_names))

    def examples(builder_name, tfds_data_dir):
        for split, examples_of_split in examples_by_split.items():
            for example in examples_of_split:
                yield info, split, example

    return examples


def test_cub_download_exports_and_reloads_offline(tmp_path, monkeypatch):
    def example(class_id, number):
        filename = f"CUB_200_2011/images/{mini.cub_class_name(class_id)}/Bird_{class_id}_{number}.jpg"
        return {
            "image": mini.encode_image(mini.color_for(class_id * 10 + number)),
            "image/filename": filename.encode(),
            "label": np.int64(class_id - 1),
        }

    # tfds splits CUB by image, so a class can have images in both tfds splits.
    examples = {
        "test": [example(1, 0), example(101, 0), example(200, 0)],
        "train": [example(1, 1), example(101, 1), example(200, 1), example(50, 0)],
    }
    monkeypatch.setattr(tfds_export, "_tfds_examples", _fake_examples(examples))

    with pytest.raises(data_lib.DatasetNotFoundError):
        cub.load_cub(str(tmp_path), allow_partial_dataset=True)
    splits = cub.load_cub(str(tmp_path), download=True, allow_partial_dataset=True)

    assert splits.train.class_names == ["001.Bird_1", "050.Bird_50"]
    assert splits.test.class_names == ["101.Bird_101", "200.Bird_200"]
    assert splits.train.labels.tolist() == [0, 0, 1]
    assert splits.test.labels.tolist() == [0, 1, 0, 1]
    assert os.path.isfile(tmp_path / "caltech_birds2011_images" / "index.tsv")
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]
    images, _ = _decode(splits.test)
    np.testing.assert_allclose(images[0].reshape(-1, 3).mean(0), mini.color_for(1010), atol=COLOR_TOLERANCE)

    monkeypatch.setattr(tfds_export, "_tfds_examples", _fake_examples({}))
    again = cub.load_cub(str(tmp_path), allow_partial_dataset=True)
    assert again.train.paths.tolist() == splits.train.paths.tolist()


def test_cars_download_resplits_by_class(tmp_path, monkeypatch):
    names = [mini.cars_class_name(class_id) for class_id in range(1, 197)]

    def example(class_id, color_index):
        return {"image": mini.encode_image(mini.color_for(color_index)), "label": np.int64(class_id - 1)}

    examples = {"train": [example(98, 0), example(99, 1)], "test": [example(98, 2), example(196, 3)]}
    monkeypatch.setattr(tfds_export, "_tfds_examples", _fake_examples(examples, names))
    splits = cars196.load_cars196(str(tmp_path), download=True, allow_partial_dataset=True)
    assert splits.train.class_names == [mini.cars_class_name(98)]
    assert len(splits.train) == 2
    assert splits.test.class_names == [mini.cars_class_name(99), mini.cars_class_name(196)]


def test_sop_download_keeps_official_split(tmp_path, monkeypatch):
    def example(class_id, color_index):
        return {"image": mini.encode_image(mini.color_for(color_index)), "class_id": np.int64(class_id - 1)}

    examples = {"train": [example(1, 0), example(2, 1), example(2, 2)], "test": [example(11319, 3)]}
    monkeypatch.setattr(tfds_export, "_tfds_examples", _fake_examples(examples))
    splits = sop.load_sop(str(tmp_path), download=True, allow_partial_dataset=True)
    assert splits.train.class_names == ["1", "2"]
    assert splits.train.labels.tolist() == [0, 1, 1]
    assert splits.test.class_names == ["11319"]


# === Fashion-MNIST files ===


def _idx_bytes(array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _fashion_path(folder, key, suffix=".gz"):
    return str(folder / (fashion_mnist.FILES[key] + suffix))


def _write_gzip(path, data):
    with gzip.open(path, "wb") as stream:
        stream.write(data)


def _write_fashion_mnist(folder, num_train=30, num_test=20):
    """Write the four IDX files, gzip-compressed, with random 4x5 images and labels 0-9 in turn."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in (("train", num_train), ("test", num_test)):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(count, 4, 5), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 10).astype(np.uint8)
    for key, array in arrays.items():
        _write_gzip(_fashion_path(folder, key), _idx_bytes(array))
    return arrays


def test_fashion_mnist_reads_class_disjoint_splits(tmp_path):
    arrays = _write_fashion_mnist(tmp_path)
    splits = data_lib.load_dataset("fashion_mnist", data_dir=str(tmp_path))

    train_keep = arrays["train_labels"] < 5
    np.testing.assert_array_equal(splits.train.images[..., 0], arrays["train_images"][train_keep])
    np.testing.assert_array_equal(splits.train.labels, arrays["train_labels"][train_keep])
    assert splits.train.class_names == ["t-shirt/top", "trouser", "pullover", "dress", "coat"]

    test_keep = arrays["test_labels"] >= 5
    np.testing.assert_array_equal(splits.test.images[..., 0], arrays["test_images"][test_keep])
    np.testing.assert_array_equal(splits.test.labels, arrays["test_labels"][test_keep] - 5)
    assert splits.test.class_names == ["sandal", "shirt", "sneaker", "bag", "ankle boot"]


def _damage_fashion_mnist(folder, case):
    """Damage one file of a miniature Fashion-MNIST folder in the way named by `case`.

    Returns the paths that the error message must name and a part of the message.
    """
    images = _fashion_path(folder, "train_images")
    labels = _fashion_path(folder, "train_labels")

    if case == "random_bytes":
        with open(images, "wb") as stream:
            stream.write(np.random.default_rng(1).integers(0, 256, size=500, dtype=np.uint8).tobytes())
        return [images], "is not a valid gzip file"

    if case == "truncated_gzip":
        with open(images, "rb") as stream:
            data = stream.read()
        with open(images, "wb") as stream:
            stream.write(data[: len(data) // 2])
        return [images], "is a truncated gzip file"

    if case == "damaged_gzip":
        with open(images, "rb") as stream:
            data = bytearray(stream.read())
        data[20:40] = b"\xff" * 20
        with open(images, "wb") as stream:
            stream.write(bytes(data))
        return [images], "has damaged gzip data"

    if case == "not_idx":
        _write_gzip(images, b"<html>404 Not Found</html>")
        return [images], "is not an IDX file of unsigned bytes: it starts with 3c 68 74 6d"

    if case == "header_only":
        _write_gzip(images, bytes([0, 0, 0x08, 3, 0, 0]))
        return [images], "header declares 3 dimensions but the file has only 6 bytes"

    if case == "truncated_idx":
        with gzip.open(images, "rb") as stream:
            data = stream.read()
        _write_gzip(images, data[:-7])
        return [images], "is truncated or corrupt: its header declares shape (30, 4, 5), which is 600 bytes"

    if case == "truncated_plain":
        with gzip.open(images, "rb") as stream:
            data = stream.read()
        os.remove(images)
        plain = _fashion_path(folder, "train_images", suffix="")
        with open(plain, "wb") as stream:
            stream.write(data[:-7])
        return [plain], "is truncated or corrupt"

    if case == "test_labels_copied":
        shutil.copyfile(_fashion_path(folder, "test_labels"), labels)
        return [images, labels], "has 30 images but"

    if case == "labels_as_images":
        shutil.copyfile(labels, images)
        return [images], "has shape (30,), but an image file has 3 dimensions"

    if case == "label_out_of_range":
        _write_gzip(labels, _idx_bytes(np.full(30, 12, dtype=np.uint8)))
        return [labels], "contains the label 12, but Fashion-MNIST labels lie in 0-9"

    raise ValueError(case)


FASHION_MNIST_DAMAGE = [
    "random_bytes", "truncated_gzip", "damaged_gzip", "not_idx", "header_only", "truncated_idx", "truncated_plain",
    "test_labels_copied", "labels_as_images", "label_out_of_range",
]


@pytest.mark.parametrize("case", FASHION_MNIST_DAMAGE)
def test_fashion_mnist_damaged_file_names_it(tmp_path, case):
    _write_fashion_mnist(tmp_path)
    named_paths, problem = _damage_fashion_mnist(tmp_path, case)
    with pytest.raises(data_lib.DatasetFileError) as error:
        data_lib.load_dataset("fashion_mnist", data_dir=str(tmp_path))
    message = str(error.value)
    for path in named_paths:
        assert path in message
    assert problem in message
    assert "Replace" in message
    assert "\n" not in message


def test_fashion_mnist_count_mismatch_names_both_files(tmp_path):
    _write_fashion_mnist(tmp_path)
    _damage_fashion_mnist(tmp_path, "test_labels_copied")
    with pytest.raises(data_lib.DatasetFileError) as error:
        fashion_mnist.load_fashion_mnist(str(tmp_path))
    images = _fashion_path(tmp_path, "train_images")
    labels = _fashion_path(tmp_path, "train_labels")
    assert f"{images} has 30 images but {labels} has 20 labels" in str(error.value)


def test_fashion_mnist_missing_file_not_found(tmp_path):
    _write_fashion_mnist(tmp_path)
    os.remove(_fashion_path(tmp_path, "test_labels"))
    with pytest.raises(data_lib.DatasetNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        data_lib.load_dataset("fashion_mnist", data_dir=str(tmp_path))


# === Registry ===


def test_registry_lists_and_loads_datasets(tmp_path):
    assert {"cub", "cars196", "sop", "image_folder"} <= set(data_lib.DATASETS)
    mini.write_cub(tmp_path)
    splits = data_lib.load_dataset("cub", data_dir=str(tmp_path), allow_partial_dataset=True, test_class_fraction=0.3)
    assert splits.train.num_classes == 3
