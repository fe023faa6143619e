"""Fashion-MNIST (Xiao et al., 2017) with a class-disjoint protocol: classes 0-4 train, 5-9 test.

Training images are the classes 0-4 of the official training file; test images are the
classes 5-9 of the official test file, so no test image or class is seen in training.
The IDX files are read from `data_dir`, from the Debian package `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist), or, when `download` is set, through
tensorflow-datasets.
"""

import gzip
import math
import os
import zlib

import numpy as np
from absl import logging

from hdml_tf.data.errors import DatasetFileError, DatasetNotFoundError
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
# Ends every error about a damaged or mismatched file.
_REPLACE_ADVICE = (
    "Replace it with the official Fashion-MNIST file, or run `apt-get install --reinstall dataset-fashion-mnist` "
    "if it came from that package."
)


def read_idx(path):
    """Read an IDX file of unsigned bytes, gzip-compressed when its name ends in .gz, into a NumPy array.

    Raises:
        DatasetFileError: the file cannot be read, is not valid gzip data (for a .gz name),
            is not an IDX file of unsigned bytes, or is shorter or longer than its header
            declares. The message names the file.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            data = stream.read()
    except gzip.BadGzipFile as error:
        raise DatasetFileError(f"{path} is not a valid gzip file ({error}). {_REPLACE_ADVICE}") from error
    except EOFError as error:
        raise DatasetFileError(f"{path} is a truncated gzip file ({error}). {_REPLACE_ADVICE}") from error
    except zlib.error as error:
        raise DatasetFileError(f"{path} has damaged gzip data ({error}). {_REPLACE_ADVICE}") from error
    except OSError as error:
        raise DatasetFileError(
            f"reading {path} failed ({error.strerror or error}): check that it is a readable file"
        ) from error

    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetFileError(
            f"{path} is not an IDX file of unsigned bytes: it starts with "
            f"{data[:4].hex(' ') or 'nothing'} instead of 00 00 08. {_REPLACE_ADVICE}"
        )
    num_dims = data[3]
    offset = 4 + 4 * num_dims
    if len(data) < offset:
        raise DatasetFileError(
            f"{path} is truncated or corrupt: its header declares {num_dims} dimensions but the file has only "
            f"{len(data)} bytes. {_REPLACE_ADVICE}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims))
    expected = math.prod(shape)
    if len(data) - offset != expected:
        raise DatasetFileError(
            f"{path} is truncated or corrupt: its header declares shape {shape}, which is {expected} bytes of "
            f"data, but the file has {len(data) - offset}. {_REPLACE_ADVICE}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _find_file(directory, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def check_image_label_pair(images, labels, images_path, labels_path):
    """Check that an image file and its label file fit together.

    Args:
        images: array read from `images_path`, expected uint8 [n, rows, columns].
        labels: array read from `labels_path`, expected uint8 [n] with values 0-9.
        images_path: image file, for messages.
        labels_path: label file, for messages.

    Raises:
        DatasetFileError: an array has the wrong number of dimensions, the counts of
            images and labels differ, or a label lies outside 0-9. The message names both files.
    """
    if images.ndim != 3:
        raise DatasetFileError(
            f"{images_path} has shape {images.shape}, but an image file has 3 dimensions (images, rows, columns). "
            f"Check that it is not a label file. {_REPLACE_ADVICE}"
        )
    if labels.ndim != 1:
        raise DatasetFileError(
            f"{labels_path} has shape {labels.shape}, but a label file has 1 dimension. "
            f"Check that it is not an image file. {_REPLACE_ADVICE}"
        )
    if len(images) != len(labels):
        raise DatasetFileError(
            f"{images_path} has {len(images):,} images but {labels_path} has {len(labels):,} labels, "
            f"so the two files do not belong together (for example, a test file copied over a training file). "
            f"Replace the wrong one with the official Fashion-MNIST file."
        )
    if len(labels) and labels.max() >= len(CLASS_NAMES):
        raise DatasetFileError(
            f"{labels_path} contains the label {labels.max()}, but Fashion-MNIST labels lie in 0-9. {_REPLACE_ADVICE}"
        )


def _load_idx_files(directory):
    """Read the four IDX files from `directory`, or return None when any is missing."""
    paths = {key: _find_file(directory, stem) for key, stem in FILES.items()}
    if any(path is None for path in paths.values()):
        return None
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = f"{split}_images", f"{split}_labels"
        check_image_label_pair(arrays[images], arrays[labels], paths[images], paths[labels])
    return arrays


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
        DatasetFileError: a file is damaged, or an image file and its label file do not
            fit together. The message names the file or files.
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
