"""Cars196 (Krause et al., 2013) with the class-disjoint protocol: classes 1-98 train, 99-196 test.

The official train and test files divide images, not classes, so both are merged and
re-split by class. Two official layouts are read from `data_dir`, each extracted or as
its archives (extracted once into `data_dir`):

- car_ims/ (car_ims.tgz) and cars_annos.mat, whose `annotations` struct array has the
  fields relative_im_path, class and test, and whose `class_names` cell array has the
  196 names;
- cars_train/ (cars_train.tgz), cars_test/ (cars_test.tgz), devkit/ (car_devkit.tgz,
  with cars_meta.mat and cars_train_annos.mat) and cars_test_annos_withlabels.mat, in
  `data_dir` or in devkit/. The annotation files have the fields fname and class.

Failing these, the images exported by an earlier `download=True` run (cars196_images/)
are read, and with `download=True` the tensorflow-datasets builder cars196 is used.
"""

import os

import numpy as np
import scipy.io
from absl import logging

from hdml_tf.data import files, tfds_export
from hdml_tf.data.errors import DatasetNotFoundError

DATASET = "Cars196"
TFDS_BUILDER = "cars196"
LAST_TRAIN_CLASS = 98
EXPECTED_COUNTS = {
    "train": files.ExpectedCounts(images=8054, classes=98),
    "test": files.ExpectedCounts(images=8131, classes=98),
}
TEST_ANNOTATIONS = "cars_test_annos_withlabels.mat"


def _is_train_class(class_id):
    return class_id <= LAST_TRAIN_CLASS


def _car_ims_sources():
    return [files.Source("car_ims", "car_ims.tgz"), files.Source("cars_annos.mat")]


def _devkit_sources(data_dir):
    test_annotations = f"devkit/{TEST_ANNOTATIONS}"
    if not os.path.isfile(os.path.join(data_dir, test_annotations)):
        test_annotations = TEST_ANNOTATIONS
    return [
        files.Source("cars_train", "cars_train.tgz"),
        files.Source("cars_test", "cars_test.tgz"),
        files.Source("devkit/cars_train_annos.mat", "car_devkit.tgz"),
        files.Source(test_annotations),
    ]


def load_mat(path, variables):
    """Read `variables` from a MATLAB v5 file with scipy.io.loadmat, squeezing unit dimensions."""
    try:
        contents = scipy.io.loadmat(path, squeeze_me=True, variable_names=list(variables))
    except NotImplementedError as error:
        raise ValueError(f"{path} is a MATLAB v7.3 file, but the official Cars196 files are v5: {error}") from error
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path} is not a valid MATLAB file: {error}") from error
    missing = [name for name in variables if name not in contents]
    if missing:
        raise ValueError(f"{path} is missing the variables {missing}")
    return contents


def read_annotations(path, fields):
    """Return {field: list of values} of the `annotations` struct array in a .mat file."""
    annotations = np.atleast_1d(load_mat(path, ["annotations"])["annotations"])
    names = annotations.dtype.names or ()
    missing = [field for field in fields if field not in names]
    if missing:
        raise ValueError(f"the annotations struct in {path} is missing the fields {missing} (found {list(names)})")
    return {field: list(annotations[field]) for field in fields}


def read_class_names(path):
    """Return {class id: name} from the `class_names` cell array of a .mat file (ids from 1)."""
    names = np.atleast_1d(load_mat(path, ["class_names"])["class_names"])
    return {class_id: str(name) for class_id, name in enumerate(names, start=1)}


def read_car_ims_layout(data_dir):
    """Read car_ims/ and cars_annos.mat into (ImageList of all images, class names)."""
    annotations_path = os.path.join(data_dir, "cars_annos.mat")
    annotations = read_annotations(annotations_path, ("relative_im_path", "class"))
    images = files.ImageList(
        root=data_dir,
        relative_paths=[str(path) for path in annotations["relative_im_path"]],
        class_ids=[int(class_id) for class_id in annotations["class"]],
        list_file=annotations_path,
    )
    return images, read_class_names(annotations_path)


def read_devkit_layout(data_dir):
    """Read cars_train/, cars_test/ and the devkit annotations into (ImageList, class names)."""
    test_annotations = os.path.join(data_dir, "devkit", TEST_ANNOTATIONS)
    if not os.path.isfile(test_annotations):
        test_annotations = os.path.join(data_dir, TEST_ANNOTATIONS)
    meta_path = os.path.join(data_dir, "devkit", "cars_meta.mat")
    if not os.path.isfile(meta_path):
        raise DatasetNotFoundError(f"{meta_path} not found: extract car_devkit.tgz in {data_dir} again")

    relative_paths = []
    class_ids = []
    for folder, annotations_path in (
        ("cars_train", os.path.join(data_dir, "devkit", "cars_train_annos.mat")),
        ("cars_test", test_annotations),
    ):
        annotations = read_annotations(annotations_path, ("fname", "class"))
        relative_paths += [files.listed_path(folder, str(name)) for name in annotations["fname"]]
        class_ids += [int(class_id) for class_id in annotations["class"]]

    images = files.ImageList(
        root=data_dir,
        relative_paths=relative_paths,
        class_ids=class_ids,
        list_file=f"{os.path.join(data_dir, 'devkit', 'cars_train_annos.mat')} and {test_annotations}",
    )
    return images, read_class_names(meta_path)


def _describe_tfds_example(info, example):
    # tfds labels are the class ids minus 1, named after cars_meta.mat.
    label = int(example["label"])
    return label + 1, info.features["label"].int2str(label)


def _instructions(folder):
    return (
        f"place either car_ims.tgz (or the car_ims/ folder extracted from it) and cars_annos.mat, or "
        f"cars_train.tgz, cars_test.tgz and car_devkit.tgz (or the cars_train/, cars_test/ and devkit/ "
        f"folders extracted from them) and {TEST_ANNOTATIONS}, in {folder}; "
        f"or pass --download to try the tensorflow-datasets builder {TFDS_BUILDER}, whose source files at "
        f"ai.stanford.edu have returned HTTP 404 since 2023"
    )


def _describe_partial_layouts(data_dir, layouts):
    """Name what is missing from each layout of which some files are present."""
    notes = []
    for name, sources, _ in layouts:
        missing = files.missing_sources(data_dir, sources)
        if len(missing) < len(sources):
            notes.append(f". Found part of the {name} layout; missing: {', '.join(source.describe() for source in missing)}")
    return "".join(notes)


def _find_images(data_dir, download):
    """Return (ImageList of all images, class names, source), extracting or downloading if needed."""
    layouts = (
        ("car_ims/ and cars_annos.mat", _car_ims_sources(), read_car_ims_layout),
        ("cars_train/, cars_test/ and devkit/", _devkit_sources(data_dir), read_devkit_layout),
    )

    # A layout that is already extracted wins over one that would need extraction.
    for _, sources, read in layouts:
        if all(os.path.exists(os.path.join(data_dir, source.path)) for source in sources):
            return (*read(data_dir), data_dir)
    for _, sources, read in layouts:
        if not files.missing_sources(data_dir, sources):
            files.prepare_sources(data_dir, sources)
            return (*read(data_dir), data_dir)

    export = tfds_export.export_folder(data_dir, TFDS_BUILDER)
    if not os.path.isfile(os.path.join(export, tfds_export.INDEX_FILE)):
        if not download:
            raise DatasetNotFoundError(
                f"{DATASET} not found in {data_dir}: {_instructions(data_dir)}{_describe_partial_layouts(data_dir, layouts)}"
            )
        # NOTE: tensorflow-datasets 4.9.10 fetches Cars196 from ai.stanford.edu, which has
        # returned HTTP 404 since 2023 (https://github.com/tensorflow/datasets/issues/5053).
        logging.info("%s not found in %s; fetching it because download is set", DATASET, data_dir)
        tfds_export.download_and_export(TFDS_BUILDER, data_dir, _describe_tfds_example)
    return (*tfds_export.read_export(export)[:2], export)


def load_cars196(
    data_dir=None,
    download=False,
    allow_partial_dataset=False,
    skip_bad_images=False,
    **unused_options,
):
    """Load the class-disjoint Cars196 splits (8,054 train / 8,131 test images).

    Args:
        data_dir: folder with one of the two official layouts (see the module docstring).
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
        "cars196", DATASET, train, test, class_names, EXPECTED_COUNTS, source,
        skip_bad_images=skip_bad_images, allow_partial_dataset=allow_partial_dataset,
    )
