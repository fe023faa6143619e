"""Datasets, samplers and input pipelines.

Every dataset loader takes `data_dir` and keyword options and returns a `DatasetSplits`
of class-disjoint train and test splits with 0-based contiguous labels. Register new
loaders in `DATASETS`.
"""

from hdml_tf.data.cars196 import load_cars196
from hdml_tf.data.cub import load_cub
from hdml_tf.data.decode_check import find_undecodable_images, raise_undecodable_image_error
from hdml_tf.data.errors import DatasetFileError, DatasetNotFoundError
from hdml_tf.data.fashion_mnist import load_fashion_mnist
from hdml_tf.data.files import BadImageError, DatasetCountError, UnsafeArchiveError
from hdml_tf.data.image_folder import load_image_folder
from hdml_tf.data.pipeline import cache_resized, make_eval_dataset, make_train_dataset
from hdml_tf.data.samplers import BatchLayoutError, make_sampler
from hdml_tf.data.sop import load_sop
from hdml_tf.data.splits import DatasetSplits, Split

DATASETS = {
    "fashion_mnist": load_fashion_mnist,
    "cub": load_cub,
    "cars196": load_cars196,
    "sop": load_sop,
    "image_folder": load_image_folder,
}


def load_dataset(name, data_dir=None, **options):
    """Load dataset `name` (a key of DATASETS) with the loader's keyword options."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](data_dir=data_dir, **options)


__all__ = [
    "DATASETS",
    "BadImageError",
    "BatchLayoutError",
    "DatasetCountError",
    "DatasetFileError",
    "DatasetNotFoundError",
    "DatasetSplits",
    "Split",
    "UnsafeArchiveError",
    "cache_resized",
    "find_undecodable_images",
    "load_dataset",
    "make_eval_dataset",
    "make_sampler",
    "make_train_dataset",
    "raise_undecodable_image_error",
]
