"""Retrieval metrics of raw pixels on a dataset's held-out test classes.

The reference point that a trained embedding has to beat: every test image is flattened
to a vector of its pixels, and neighbours are found by cosine similarity (Euclidean
distance between L2-normalised vectors), with the same evaluation code as training.

    python tools/pixel_baseline.py --dataset=fashion_mnist
"""

import json
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hdml_tf import data as data_lib  # noqa: E402
from hdml_tf import evaluation  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "fashion_mnist", sorted(data_lib.DATASETS), "Dataset whose test split is evaluated.")
flags.DEFINE_string("data_dir", None, "Folder with the dataset's files.")
flags.DEFINE_integer("image_size", 32, "Side images are resized to before flattening (file-based datasets only).")
flags.DEFINE_list("recall_ks", ["1", "2", "4", "8"], "K values of Recall@K.")
flags.DEFINE_string("output", None, "Optional path of a JSON file for the metrics.")


def pixel_vectors(split, image_size):
    """Return one float32 row of pixels per image of the split."""
    if split.images is not None:
        return split.images.reshape(len(split), -1).astype(np.float32)
    embeddings, _ = _embed_files(split, image_size)
    return embeddings


def _embed_files(split, image_size):
    import tensorflow as tf

    dataset = data_lib.make_eval_dataset(split, image_size, batch_size=256)
    rows, labels = [], []
    for images, batch_labels in dataset:
        rows.append(tf.reshape(images, [tf.shape(images)[0], -1]).numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(rows), np.concatenate(labels)


def main(argv):
    del argv
    splits = data_lib.load_dataset(FLAGS.dataset, data_dir=FLAGS.data_dir)
    vectors = pixel_vectors(splits.test, FLAGS.image_size)
    recall_ks = tuple(int(k) for k in FLAGS.recall_ks)
    metrics = evaluation.evaluate_embeddings(vectors, splits.test.labels, recall_ks=recall_ks)
    print(f"Raw pixels, {FLAGS.dataset} test split ({len(vectors)} images):")
    print(evaluation.format_metrics_table(metrics))
    if FLAGS.output:
        with open(FLAGS.output, "w") as stream:
            json.dump(metrics, stream, indent=2, sort_keys=True)


if __name__ == "__main__":
    app.run(main)
