"""Containers for a dataset's class-disjoint train and test splits."""

import dataclasses

import numpy as np


@dataclasses.dataclass
class Split:
    """One split: its images, either in memory or as files, with 0-based contiguous labels.

    Exactly one of `images` (uint8 [n, H, W, C], C = 1 or 3) and `paths` (n file names of
    JPEG, PNG, BMP or GIF images) is set.
    """

    labels: np.ndarray
    class_names: list
    images: np.ndarray = None
    paths: np.ndarray = None

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int32)
        if (self.images is None) == (self.paths is None):
            raise ValueError("a Split needs exactly one of images and paths")
        size = len(self.images) if self.images is not None else len(self.paths)
        if size != len(self.labels):
            raise ValueError(f"a Split has {size} images but {len(self.labels)} labels")
        if self.paths is not None:
            self.paths = np.asarray(self.paths, dtype=object)
        if size and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(
                f"labels must lie in [0, {len(self.class_names)}), found [{self.labels.min()}, {self.labels.max()}]"
            )

    def __len__(self):
        return len(self.labels)

    @property
    def num_classes(self):
        return len(self.class_names)

    def class_counts(self):
        """Return the number of images of every class, indexed by label."""
        return np.bincount(self.labels, minlength=self.num_classes)


@dataclasses.dataclass
class DatasetSplits:
    """A dataset's training split and its held-out test split of other classes."""

    name: str
    train: Split
    test: Split


def relabel(labels, class_ids):
    """Map original class ids to 0-based contiguous labels in the order of `class_ids`."""
    index = {class_id: label for label, class_id in enumerate(class_ids)}
    return np.array([index[value] for value in labels], dtype=np.int32)
