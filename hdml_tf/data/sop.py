"""Stanford Online Products (Oh Song et al., 2016) with its official class-disjoint split.

Ebay_train.txt lists the training images (classes 1-11,318) and Ebay_test.txt the test
images (classes 11,319-22,634), one "image_id class_id super_class_id path" row per
image after a header, with paths relative to the Stanford_Online_Products folder. Files
are read from `data_dir` in this order:

1. the extracted folder Stanford_Online_Products/ (or `data_dir` itself when it contains
   Ebay_train.txt);
2. the official archive Stanford_Online_Products.zip, extracted once into `data_dir`;
3. stanford_online_products_images/, written by an earlier `download=True` run;
4. with `download=True` only, the tensorflow-datasets builder stanford_online_products,
   whose train and test splits are the official ones.
"""

import os

from absl import logging

from hdml_tf.data import files, tfds_export
from hdml_tf.data.errors import DatasetNotFoundError

DATASET = "Stanford Online Products"
FOLDER = "Stanford_Online_Products"
ARCHIVE = "Stanford_Online_Products.zip"
TFDS_BUILDER = "stanford_online_products"
LIST_FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}
LIST_COLUMNS = ("image_id", "class_id", "super_class_id", "path")
EXPECTED_COUNTS = {
    "train": files.ExpectedCounts(images=59551, classes=11318),
    "test": files.ExpectedCounts(images=60502, classes=11316),
}


def read_list_file(folder, split_name):
    """Read Ebay_train.txt or Ebay_test.txt of `folder` into an ImageList."""
    path = os.path.join(folder, LIST_FILES[split_name])
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"{path} not found: {folder} must contain {' and '.join(LIST_FILES.values())}")
    rows = files.read_table(path, len(LIST_COLUMNS))
    if not rows or tuple(rows[0][1]) != LIST_COLUMNS:
        found = rows[0][1] if rows else "an empty file"
        raise ValueError(f"{path} must start with the header {' '.join(LIST_COLUMNS)!r}, found {found}")

    relative_paths = []
    class_ids = []
    for line_number, (_, class_id, _, relative_path) in rows[1:]:
        try:
            class_ids.append(int(class_id))
        except ValueError as error:
            raise ValueError(f"{path}, line {line_number}: invalid class_id {class_id!r}") from error
        relative_paths.append(relative_path)
    return files.ImageList(root=folder, relative_paths=relative_paths, class_ids=class_ids, list_file=path)


def _check_disjoint(train, test):
    shared = sorted(set(train.class_ids) & set(test.class_ids))
    if shared:
        raise ValueError(
            f"{len(shared)} class ids appear in both {train.list_file} and {test.list_file} "
            f"(first {shared[:5]}), but the protocol needs class-disjoint splits"
        )


def _describe_tfds_example(unused_info, example):
    # tfds class ids are the official ones minus 1.
    class_id = int(example["class_id"]) + 1
    return class_id, str(class_id)


def _split_export(folder):
    images, class_names, tfds_splits = tfds_export.read_export(folder)
    lists = []
    for split_name in ("train", "test"):
        keep = [index for index, name in enumerate(tfds_splits) if name == split_name]
        lists.append(
            files.ImageList(
                root=images.root,
                relative_paths=[images.relative_paths[index] for index in keep],
                class_ids=[images.class_ids[index] for index in keep],
                list_file=images.list_file,
            )
        )
    return (*lists, class_names)


def _instructions(folder):
    return (
        f"place {ARCHIVE} (from http://cvgl.stanford.edu/projects/lifted_struct/) or the {FOLDER}/ folder "
        f"extracted from it (with {' and '.join(LIST_FILES.values())} and the image folders) in {folder}, "
        f"or pass --download to fetch it with the tensorflow-datasets builder {TFDS_BUILDER}"
    )


def _find_lists(data_dir, download):
    """Return (train ImageList, test ImageList, class names, source), extracting or downloading if needed."""
    folder = None
    if os.path.isfile(os.path.join(data_dir, LIST_FILES["train"])):
        folder = data_dir
    else:
        sources = [files.Source(f"{FOLDER}/{LIST_FILES['train']}", ARCHIVE)]
        if not files.missing_sources(data_dir, sources):
            files.prepare_sources(data_dir, sources)
            folder = os.path.join(data_dir, FOLDER)
    if folder is not None:
        train = read_list_file(folder, "train")
        test = read_list_file(folder, "test")
        class_names = {class_id: str(class_id) for class_id in set(train.class_ids) | set(test.class_ids)}
        return train, test, class_names, folder

    export = tfds_export.export_folder(data_dir, TFDS_BUILDER)
    if not os.path.isfile(os.path.join(export, tfds_export.INDEX_FILE)):
        if not download:
            raise DatasetNotFoundError(f"{DATASET} not found in {data_dir}: {_instructions(data_dir)}")
        # NOTE: tensorflow-datasets 4.9.10 fetches this archive from an FTP address at
        # cs.stanford.edu, and whether that server is still reachable was not checked.
        logging.info("%s not found in %s; fetching it because download is set", DATASET, data_dir)
        tfds_export.download_and_export(TFDS_BUILDER, data_dir, _describe_tfds_example)
    return (*_split_export(export), export)


def load_sop(
    data_dir=None,
    download=False,
    allow_partial_dataset=False,
    skip_bad_images=False,
    **unused_options,
):
    """Load the official Stanford Online Products splits (59,551 train / 60,502 test images).

    Args:
        data_dir: folder with Stanford_Online_Products.zip or the Stanford_Online_Products/
            folder extracted from it, or that extracted folder itself.
        download: fetch the dataset with tensorflow-datasets when no local files are found.
        allow_partial_dataset: accept image and class counts other than the official ones.
        skip_bad_images: leave out missing or unreadable images instead of raising.

    Raises:
        DatasetNotFoundError: no files found and `download` not set.
        BadImageError: an image is missing, unreadable or outside the dataset folder.
        DatasetCountError: the counts differ from the official ones.
        ValueError: a class id is in both list files.
    """
    files.require_data_dir(data_dir, DATASET, _instructions("that folder"))
    train, test, class_names, source = _find_lists(data_dir, download)
    _check_disjoint(train, test)
    return files.make_dataset_splits(
        "sop", DATASET, train, test, class_names, EXPECTED_COUNTS, source,
        skip_bad_images=skip_bad_images, allow_partial_dataset=allow_partial_dataset,
    )
