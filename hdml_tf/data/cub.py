"""CUB-200-2011 (Wah et al., 2011) with the class-disjoint protocol: classes 1-100 train, 101-200 test.

The official train_test_split.txt divides images, not classes, and is not used. Files
are read from `data_dir` in this order:

1. the extracted folder CUB_200_2011/ (or `data_dir` itself when it contains images.txt);
2. the official archive CUB_200_2011.tgz, extracted once into `data_dir`;
3. caltech_birds2011_images/, written by an earlier `download=True` run;
4. with `download=True` only, the tensorflow-datasets builder caltech_birds2011, whose
   images are exported to caltech_birds2011_images/.
"""

import os

from absl import logging

from hdml_tf.data import files, tfds_export
from hdml_tf.data.errors import DatasetNotFoundError

DATASET = "CUB-200-2011"
FOLDER = "CUB_200_2011"
ARCHIVE = "CUB_200_2011.tgz"
TFDS_BUILDER = "caltech_birds2011"
DOWNLOAD_PAGE = "https://data.caltech.edu/records/65de6-vp158"
LAST_TRAIN_CLASS = 100
EXPECTED_COUNTS = {
    "train": files.ExpectedCounts(images=5864, classes=100),
    "test": files.ExpectedCounts(images=5924, classes=100),
}
ANNOTATION_FILES = ("images.txt", "image_class_labels.txt", "classes.txt")


def _is_train_class(class_id):
    return class_id <= LAST_TRAIN_CLASS


def _read_id_map(path, value_type):
    values = {}
    for line_number, (key, value) in files.read_table(path, 2):
        try:
            values[int(key)] = value_type(value)
        except ValueError as error:
            raise ValueError(f"{path}, line {line_number}: invalid entry {key!r} {value!r}: {error}") from error
    return values


def read_official_folder(folder):
    """Read the annotation files of an extracted CUB_200_2011 folder.

    Returns:
        (ImageList of all 11,788 images in images.txt order, {class id: class name}).
    """
    for name in ANNOTATION_FILES:
        if not os.path.isfile(os.path.join(folder, name)):
            raise DatasetNotFoundError(
                f"{os.path.join(folder, name)} not found: {folder} must contain {', '.join(ANNOTATION_FILES)} "
                f"and images/, as extracted from {ARCHIVE}"
            )
    image_paths = _read_id_map(os.path.join(folder, "images.txt"), str)
    image_classes = _read_id_map(os.path.join(folder, "image_class_labels.txt"), int)
    class_names = _read_id_map(os.path.join(folder, "classes.txt"), str)

    unlabelled = sorted(set(image_paths) - set(image_classes))
    if unlabelled:
        raise ValueError(
            f"{len(unlabelled)} image ids of images.txt have no class in image_class_labels.txt "
            f"(in {folder}), first {unlabelled[:5]}"
        )
    unknown = sorted(set(image_classes.values()) - set(class_names))
    if unknown:
        raise ValueError(f"class ids {unknown[:5]} of image_class_labels.txt are missing from classes.txt in {folder}")

    image_ids = sorted(image_paths)
    images = files.ImageList(
        root=os.path.join(folder, "images"),
        relative_paths=[image_paths[image_id] for image_id in image_ids],
        class_ids=[image_classes[image_id] for image_id in image_ids],
        list_file=os.path.join(folder, "images.txt"),
    )
    return images, class_names


def _describe_tfds_example(unused_info, example):
    # tfds labels are the class ids minus 1; the file's folder is the official class name.
    filename = example["image/filename"].decode("utf-8")
    return int(example["label"]) + 1, filename.split("/")[-2]


def _instructions(folder):
    return (
        f"place {ARCHIVE} (from {DOWNLOAD_PAGE}) or the {FOLDER}/ folder extracted from it "
        f"(with {', '.join(ANNOTATION_FILES)} and images/) in {folder}, "
        f"or pass --download to fetch it with the tensorflow-datasets builder {TFDS_BUILDER}"
    )


def _find_images(data_dir, download):
    """Return (ImageList of all images, class names, source folder), extracting or downloading if needed."""
    if os.path.isfile(os.path.join(data_dir, "images.txt")):
        return (*read_official_folder(data_dir), data_dir)

    sources = [files.Source(f"{FOLDER}/images.txt", ARCHIVE)]
    if not files.missing_sources(data_dir, sources):
        files.prepare_sources(data_dir, sources)
        folder = os.path.join(data_dir, FOLDER)
        return (*read_official_folder(folder), folder)

    export = tfds_export.export_folder(data_dir, TFDS_BUILDER)
    if not os.path.isfile(os.path.join(export, tfds_export.INDEX_FILE)):
        if not download:
            raise DatasetNotFoundError(f"{DATASET} not found in {data_dir}: {_instructions(data_dir)}")
        logging.info("%s not found in %s; fetching it because download is set", DATASET, data_dir)
        tfds_export.download_and_export(TFDS_BUILDER, data_dir, _describe_tfds_example)
    return (*tfds_export.read_export(export)[:2], export)


def load_cub(
    data_dir=None,
    download=False,
    allow_partial_dataset=False,
    skip_bad_images=False,
    **unused_options,
):
    """Load the class-disjoint CUB-200-2011 splits (5,864 train / 5,924 test images).

    Args:
        data_dir: folder with CUB_200_2011.tgz or the CUB_200_2011/ folder extracted from
            it, or that extracted folder itself.
        download: fetch the dataset with tensorflow-datasets when no local files are found.
        allow_partial_dataset: accept image and class counts other than the official ones.
        skip_bad_images: leave out missing or unreadable images instead of raising.

    Raises:
        DatasetNotFoundError: no files found and `download` not set.
        BadImageError: an image is missing, unreadable or outside the dataset folder.
        DatasetCountError: the counts differ from the official ones.
    """
    files.require_data_dir(data_dir, DATASET, _instructions("that folder"))
    images, class_names, source = _find_images(data_dir, download)
    train, test = files.partition_by_class(images, _is_train_class)
    return files.make_dataset_splits(
        "cub", DATASET, train, test, class_names, EXPECTED_COUNTS, source,
        skip_bad_images=skip_bad_images, allow_partial_dataset=allow_partial_dataset,
    )
