"""Fashion-MNIST (Xiao et al., 2017) with a class-disjoint protocol: classes 0-4 train, 5-9 test.

Training images are the classes 0-4 of the official training file; test images are the
classes 5-9 of the official test file, so no test image or class is seen in training.
The IDX files are read from `data_dir`, from the Debian package `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist), or, when `download` is set, through
tensorflow-datasets.
"""

import gzip
import os

import numpy as np
from absl import logging

from hdml_tf.data.splits import DatasetSplits, Split, relabel

CLASS_NAMES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
TRAIN_CLASSES = (0, 1, 2, 3, 4)
TEST_CLASSES = (5, 6, 7, 8, 9)
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset's files are missing; the message says what to place where."""


def read_idx(path):
    """Read an IDX file (optionally gzip-compressed) into a NumPy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as stream:
        data = stream.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    num_dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims))
    offset = 4 + 4 * num_dims
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise ValueError(f"{path} is truncated or corrupt: header promises {expected} bytes, found {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _find_file(directory, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _load_idx_files(directory):
    paths = {key: _find_file(directory, stem) for key, stem in FILES.items()}
    if any(path is None for path in paths.values()):
        return None
    return {key: read_idx(path) for key, path in paths.items()}


def _load_tfds():
    import tensorflow_datasets as tfds  # Imported lazily: it is slow to import.

    arrays = {}
    for split in ("train", "test"):
        images, labels = tfds.as_numpy(tfds.load("fashion_mnist", split=split, batch_size=-1, as_supervised=True))
        arrays[f"{split}_images"] = images[..., 0]
        arrays[f"{split}_labels"] = labels
    return arrays


def _subset(images, labels, classes):
    keep = np.isin(labels, classes)
    return Split(
        images=images[keep][..., np.newaxis],
        labels=relabel(labels[keep], classes),
        class_names=[CLASS_NAMES[c] for c in classes],
    )


def load_fashion_mnist(data_dir=None, download=False, **unused_options):
    """Load the class-disjoint Fashion-MNIST splits (30,000 train / 5,000 test images).

    Args:
        data_dir: folder with the four IDX files (gzip-compressed or not); when None, the
            Debian package's folder is used.
        download: fetch the data through tensorflow-datasets if no local files are found.

    Raises:
        DatasetNotFoundError: no files found and `download` not set.
    """
    directory = data_dir or DEBIAN_DIR
    arrays = _load_idx_files(directory) if os.path.isdir(directory) else None
    if arrays is None:
        if not download:
            names = ", ".join(stem + ".gz" for stem in FILES.values())
            raise DatasetNotFoundError(
                f"Fashion-MNIST files not found in {directory}: place {names} there "
                f"(or run `apt-get install dataset-fashion-mnist`), or pass --download "
                f"to fetch them with tensorflow-datasets"
            )
        logging.info("Fashion-MNIST not found in %s; loading it through tensorflow-datasets", directory)
        arrays = _load_tfds()
    else:
        logging.info("Loaded Fashion-MNIST from %s", directory)
    return DatasetSplits(
        name="fashion_mnist",
        train=_subset(arrays["train_images"], arrays["train_labels"], TRAIN_CLASSES),
        test=_subset(arrays["test_images"], arrays["test_labels"], TEST_CLASSES),
    )
