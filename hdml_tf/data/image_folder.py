"""Any folder of images with one subfolder per class, split into train and test classes.

Two layouts of `data_dir` are read:

- train/<class>/ and test/<class>/: the given split. Class names found in both are
  reported in the log, because the splits are then not class-disjoint.
- <class>/ only: the class folders in sorted name order are split, and the last
  `test_class_fraction` of them (rounded, at least one, at most all but one) are the
  test classes.

A class folder is searched recursively for files ending in .jpg, .jpeg, .png, .bmp or
.gif, in any letter case. Files and folders whose names start with "." are ignored;
other files and linked subfolders are not read, and their number is logged.
"""

import math
import os

from absl import logging

from hdml_tf.data import files
from hdml_tf.data.errors import DatasetFileError, DatasetNotFoundError

DATASET = "image folder"
SPLIT_FOLDERS = ("train", "test")


def _is_hidden(name):
    return name.startswith(".")


def list_class_folders(folder):
    """Return the sorted names of the non-hidden subfolders of `folder`."""
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir() and not _is_hidden(entry.name))


def list_images(class_folder):
    """Return (sorted image paths relative to `class_folder`, number of other entries not read)."""
    images = []
    not_read = 0
    for current, folders, names in os.walk(class_folder):
        linked = [name for name in folders if os.path.islink(os.path.join(current, name))]
        not_read += len(linked)
        folders[:] = sorted(name for name in folders if not _is_hidden(name) and name not in linked)
        relative_folder = os.path.relpath(current, class_folder)
        for name in names:
            if _is_hidden(name):
                continue
            if os.path.splitext(name)[1].lower() not in files.IMAGE_EXTENSIONS:
                not_read += 1
                continue
            images.append(name if relative_folder == "." else os.path.join(relative_folder, name))
    return sorted(images), not_read


def _collect(data_dir, prefix, class_names, class_ids):
    """Return an ImageList of the class folders `class_names` under data_dir/prefix."""
    relative_paths = []
    image_class_ids = []
    not_read = 0
    for name in class_names:
        relative_folder = os.path.join(prefix, name) if prefix else name
        images, skipped = list_images(os.path.join(data_dir, relative_folder))
        not_read += skipped
        if not images:
            logging.warning("Class folder %s has no images and is left out", os.path.join(data_dir, relative_folder))
        relative_paths += [os.path.join(relative_folder, image) for image in images]
        image_class_ids += [class_ids[name]] * len(images)
    if not_read:
        logging.info(
            "Did not read %d entries under %s: files with extensions other than %s, and linked folders",
            not_read, os.path.join(data_dir, prefix), ", ".join(files.IMAGE_EXTENSIONS),
        )
    return files.ImageList(data_dir, relative_paths, image_class_ids, list_file=data_dir)


def split_classes(class_names, test_class_fraction, data_dir=None):
    """Return (train classes, test classes): the last `test_class_fraction` of the sorted names are test classes.

    `data_dir`, the folder that contains the class folders, is named in the error for a single class.
    """
    if not 0 < test_class_fraction < 1:
        raise ValueError(f"--test_class_fraction={test_class_fraction} is invalid: it must lie strictly between 0 and 1")
    if len(class_names) == 1 and data_dir:
        raise DatasetFileError(
            f"{data_dir} has only one class folder, {class_names[0]}/, but a class-disjoint split needs at least "
            f"2 class folders: add a folder for every class, or give train/ and test/ folders of class folders"
        )
    if len(class_names) < 2:
        raise DatasetFileError(f"a class-disjoint split needs at least 2 class folders, found {len(class_names)}")
    names = sorted(class_names)
    num_test = math.floor(len(names) * test_class_fraction + 0.5)
    num_test = min(max(num_test, 1), len(names) - 1)
    return names[: len(names) - num_test], names[len(names) - num_test :]


def load_image_folder(
    data_dir=None,
    download=False,
    allow_partial_dataset=False,
    skip_bad_images=False,
    test_class_fraction=0.5,
    **unused_options,
):
    """Load an image folder's class-disjoint splits.

    Args:
        data_dir: folder of class folders, or with train/ and test/ folders of class folders.
        download: unused, because there is nothing to download.
        allow_partial_dataset: unused, because an image folder has no official counts.
        skip_bad_images: leave out unreadable images instead of raising.
        test_class_fraction: fraction of the classes held out for testing when `data_dir`
            has no train/ and test/ folders.

    Raises:
        DatasetNotFoundError: `data_dir` is missing or has no class folders.
        DatasetFileError: only one of train/ and test/ exists, or `data_dir` has a single
            class folder.
        BadImageError: an image is unreadable or resolves outside `data_dir`.
        ValueError: `test_class_fraction` is invalid.
    """
    del download, allow_partial_dataset
    files.require_data_dir(data_dir, DATASET, "pass a folder with one subfolder of images per class")
    top_level = list_class_folders(data_dir)
    present = [name for name in SPLIT_FOLDERS if name in top_level]

    if len(present) == 2:
        train_names = list_class_folders(os.path.join(data_dir, "train"))
        test_names = list_class_folders(os.path.join(data_dir, "test"))
        shared = sorted(set(train_names) & set(test_names))
        if shared:
            logging.warning(
                "%d class folders are in both train/ and test/ of %s (first %s), so the splits are not class-disjoint",
                len(shared), data_dir, shared[:5],
            )
        prefixes = ("train", "test")
    elif len(present) == 1:
        missing = "test" if present[0] == "train" else "train"
        raise DatasetFileError(
            f"{data_dir} has a {present[0]}/ folder but no {missing}/ folder: add {missing}/ with its own class "
            f"folders, or put all class folders directly in {data_dir} to have them split by --test_class_fraction"
        )
    elif not top_level:
        raise DatasetNotFoundError(f"no class folders found in {data_dir}: put each class's images in a subfolder")
    else:
        train_names, test_names = split_classes(top_level, test_class_fraction, data_dir)
        prefixes = ("", "")
    if not train_names or not test_names:
        raise DatasetNotFoundError(f"no class folders found in the train and test folders of {data_dir}")

    all_names = sorted(set(train_names) | set(test_names))
    class_ids = {name: class_id for class_id, name in enumerate(all_names)}
    train = _collect(data_dir, prefixes[0], train_names, class_ids)
    test = _collect(data_dir, prefixes[1], test_names, class_ids)
    return files.make_dataset_splits(
        "image_folder", DATASET, train, test, dict(enumerate(all_names)), None, data_dir,
        skip_bad_images=skip_bad_images, bad_image_advice="Remove or replace these files",
    )
