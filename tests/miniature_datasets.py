"""Miniature copies of the official CUB-200-2011, Cars196 and SOP layouts for tests.

Each writer puts a few tiny images (12x12 px) and annotation files in the official
formats into a folder, as if extracted. `make_tar` and `make_zip` pack such folders into
the official archive names. Every writer returns the records it wrote, so tests can
compare a loader's output with what is on disk.
"""

import dataclasses
import io
import os
import tarfile
import zipfile

import numpy as np
import scipy.io
from PIL import Image

IMAGE_SIZE = 12


@dataclasses.dataclass
class Record:
    """One image written by a miniature writer."""

    path: str  # Absolute path of the file.
    class_id: int  # The dataset's own (1-based) class id.
    color: tuple  # RGB color of the solid image.


def color_for(index):
    """Return a distinct, saturated RGB color for image number `index`."""
    rng = np.random.default_rng(index)
    return tuple(int(value) for value in rng.integers(20, 236, size=3))


def encode_image(color, image_format="JPEG", mode="RGB", size=IMAGE_SIZE):
    """Encode a solid `color` image in `mode` ("RGB", "L" or "CMYK") and `image_format`."""
    image = Image.new("RGB", (size, size), color).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **({"quality": 95} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def write_image(path, color, image_format="JPEG", mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as stream:
        stream.write(encode_image(color, image_format, mode))


def make_tar(data_dir, archive_name, top_level_names):
    """Pack the folders `top_level_names` of `data_dir` into data_dir/archive_name (gzip)."""
    archive_path = os.path.join(data_dir, archive_name)
    with tarfile.open(archive_path, "w:gz") as archive:
        for name in top_level_names:
            archive.add(os.path.join(data_dir, name), arcname=name)
    return archive_path


def make_zip(data_dir, archive_name, top_level_name):
    """Pack the folder data_dir/top_level_name into data_dir/archive_name."""
    archive_path = os.path.join(data_dir, archive_name)
    top = os.path.join(data_dir, top_level_name)
    with zipfile.ZipFile(archive_path, "w") as archive:
        for current, _, names in os.walk(top):
            for name in sorted(names):
                path = os.path.join(current, name)
                archive.write(path, os.path.relpath(path, data_dir))
    return archive_path


# === CUB-200-2011 ===

CUB_CLASSES = (2, 100, 1, 200, 101, 150)  # Not sorted, so label order is tested.


def cub_class_name(class_id):
    return f"{class_id:03d}.Bird_{class_id}"


def write_cub(data_dir, class_ids=CUB_CLASSES, images_per_class=2):
    """Write CUB_200_2011/ with images.txt, image_class_labels.txt, classes.txt,
    train_test_split.txt and images/<class>/<name>.jpg into `data_dir`.

    classes.txt names all 200 classes, like the real file.
    """
    folder = os.path.join(data_dir, "CUB_200_2011")
    records = []
    image_lines, label_lines, split_lines = [], [], []
    image_id = 0
    for class_id in class_ids:
        for number in range(images_per_class):
            image_id += 1
            relative_path = f"{cub_class_name(class_id)}/Bird_{class_id}_{number:04d}_{image_id}.jpg"
            color = color_for(image_id)
            write_image(os.path.join(folder, "images", relative_path), color)
            records.append(Record(os.path.join(folder, "images", relative_path), class_id, color))
            image_lines.append(f"{image_id} {relative_path}")
            label_lines.append(f"{image_id} {class_id}")
            split_lines.append(f"{image_id} {number % 2}")
    with open(os.path.join(folder, "images.txt"), "w") as stream:
        stream.write("\n".join(image_lines) + "\n")
    with open(os.path.join(folder, "image_class_labels.txt"), "w") as stream:
        stream.write("\n".join(label_lines) + "\n")
    with open(os.path.join(folder, "train_test_split.txt"), "w") as stream:
        stream.write("\n".join(split_lines) + "\n")
    with open(os.path.join(folder, "classes.txt"), "w") as stream:
        stream.write("".join(f"{class_id} {cub_class_name(class_id)}\n" for class_id in range(1, 201)))
    return records


def append_cub_entry(data_dir, relative_path, class_id):
    """Add an images.txt entry (and its label) to a miniature CUB folder; return its image id."""
    folder = os.path.join(data_dir, "CUB_200_2011")
    with open(os.path.join(folder, "images.txt")) as stream:
        image_id = len(stream.read().splitlines()) + 1
    with open(os.path.join(folder, "images.txt"), "a") as stream:
        stream.write(f"{image_id} {relative_path}\n")
    with open(os.path.join(folder, "image_class_labels.txt"), "a") as stream:
        stream.write(f"{image_id} {class_id}\n")
    return image_id


# === Cars196 ===

CARS_CLASSES = (1, 2, 98, 99, 150, 196)


def cars_class_name(class_id):
    return f"Make{class_id} Model {2000 + class_id % 13}"


def _class_names_cell():
    return np.array([cars_class_name(class_id) for class_id in range(1, 197)], dtype=object).reshape(1, -1)


def struct_array(rows, fields):
    """Build a 1 x n MATLAB struct array from dicts, with uint8/uint16 numbers and char strings."""
    array = np.zeros((1, len(rows)), dtype=[(field, object) for field in fields])
    for index, row in enumerate(rows):
        values = []
        for field in fields:
            value = row[field]
            if isinstance(value, str):
                values.append(np.array([value]))
            else:
                values.append(np.array([[value]], dtype=np.uint16 if value > 255 else np.uint8))
        array[0, index] = tuple(values)
    return array


def _bbox(index):
    return {"bbox_x1": 1 + index % 3, "bbox_y1": 2, "bbox_x2": 10, "bbox_y2": 11}


def write_cars_devkit(data_dir, class_ids=CARS_CLASSES, images_per_class=2, test_annotations_in_devkit=False):
    """Write cars_train/, cars_test/, devkit/ (cars_meta.mat, cars_train_annos.mat,
    cars_test_annos.mat) and cars_test_annos_withlabels.mat into `data_dir`.

    Every class gets `images_per_class` images in cars_train/ and as many in cars_test/,
    like the official image-wise split.
    """
    records = []
    for folder in ("cars_train", "cars_test"):
        rows = []
        for class_id in class_ids:
            for _ in range(images_per_class):
                fname = f"{len(rows) + 1:05d}.jpg"
                color = color_for(len(records) + 1000)
                path = os.path.join(data_dir, folder, fname)
                write_image(path, color)
                records.append(Record(path, class_id, color))
                rows.append({**_bbox(len(rows)), "class": class_id, "fname": fname})
        fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
        os.makedirs(os.path.join(data_dir, "devkit"), exist_ok=True)
        if folder == "cars_train":
            scipy.io.savemat(
                os.path.join(data_dir, "devkit", "cars_train_annos.mat"), {"annotations": struct_array(rows, fields)}
            )
        else:
            unlabelled = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "fname")
            scipy.io.savemat(
                os.path.join(data_dir, "devkit", "cars_test_annos.mat"), {"annotations": struct_array(rows, unlabelled)}
            )
            labelled_folder = os.path.join(data_dir, "devkit") if test_annotations_in_devkit else data_dir
            scipy.io.savemat(
                os.path.join(labelled_folder, "cars_test_annos_withlabels.mat"),
                {"annotations": struct_array(rows, fields)},
            )
    scipy.io.savemat(os.path.join(data_dir, "devkit", "cars_meta.mat"), {"class_names": _class_names_cell()})
    return records


def write_cars_annos(data_dir, class_ids=CARS_CLASSES, images_per_class=4, extra_paths=()):
    """Write car_ims/NNNNNN.jpg and cars_annos.mat into `data_dir`.

    `extra_paths` are (relative_im_path, class id) annotations added without an image.
    """
    records = []
    rows = []
    for class_id in class_ids:
        for number in range(images_per_class):
            relative_path = f"car_ims/{len(rows) + 1:06d}.jpg"
            color = color_for(len(rows) + 2000)
            write_image(os.path.join(data_dir, relative_path), color)
            records.append(Record(os.path.join(data_dir, relative_path), class_id, color))
            rows.append({"relative_im_path": relative_path, **_bbox(len(rows)), "class": class_id, "test": number % 2})
    for relative_path, class_id in extra_paths:
        rows.append({"relative_im_path": relative_path, **_bbox(len(rows)), "class": class_id, "test": 0})
    fields = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
    scipy.io.savemat(
        os.path.join(data_dir, "cars_annos.mat"),
        {"annotations": struct_array(rows, fields), "class_names": _class_names_cell()},
    )
    return records


# === Stanford Online Products ===

SOP_SUPER_CLASSES = ("bicycle", "cabinet", "chair")
SOP_TRAIN_CLASSES = (1, 2, 3, 11318)
SOP_TEST_CLASSES = (11319, 11320, 22634)


def write_sop(data_dir, train_classes=SOP_TRAIN_CLASSES, test_classes=SOP_TEST_CLASSES, images_per_class=2):
    """Write Stanford_Online_Products/ with Ebay_train.txt, Ebay_test.txt, Ebay_info.txt and
    <super class>_final/<product>_<n>.JPG images into `data_dir`."""
    folder = os.path.join(data_dir, "Stanford_Online_Products")
    records = {"train": [], "test": []}
    lines = {"train": [], "test": []}
    image_id = 0
    for split_name, class_ids in (("train", train_classes), ("test", test_classes)):
        for class_id in class_ids:
            super_class_id = class_id % len(SOP_SUPER_CLASSES) + 1
            for number in range(images_per_class):
                image_id += 1
                relative_path = f"{SOP_SUPER_CLASSES[super_class_id - 1]}_final/{100000 + class_id}_{number}.JPG"
                color = color_for(image_id + 3000)
                write_image(os.path.join(folder, relative_path), color)
                records[split_name].append(Record(os.path.join(folder, relative_path), class_id, color))
                lines[split_name].append(f"{image_id} {class_id} {super_class_id} {relative_path}")
    header = "image_id class_id super_class_id path"
    for split_name, file_name in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        with open(os.path.join(folder, file_name), "w") as stream:
            stream.write("\n".join([header, *lines[split_name]]) + "\n")
    with open(os.path.join(folder, "Ebay_info.txt"), "w") as stream:
        stream.write("\n".join([header, *lines["train"], *lines["test"]]) + "\n")
    return records


def write_damaged_jpeg(path):
    """Write a noisy JPEG to `path` and overwrite part of its entropy-coded data, keeping SOI and EOI.

    The overwritten bytes end in FF 82, a marker that libjpeg rejects inside the scan.
    """
    pixels = np.random.default_rng(7).integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    start_of_scan = data.index(b"\xff\xda")
    scan_data = start_of_scan + 2 + int.from_bytes(data[start_of_scan + 2 : start_of_scan + 4], "big")
    end_of_image = data.rindex(b"\xff\xd9")
    middle = (scan_data + end_of_image) // 2
    data[middle : middle + 16] = b"\xff" * 15 + b"\x82"
    with open(path, "wb") as stream:
        stream.write(bytes(data))
