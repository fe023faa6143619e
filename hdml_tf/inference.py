"""Embedding a whole dataset with a trained model."""

import numpy as np
import tensorflow as tf
from absl import logging


def embed_dataset(embed_fn, dataset, log_every_batches=50):
    """Run `embed_fn` over a dataset of (images, labels) batches.

    Args:
        embed_fn: callable from a float32 image batch to a [b, D] embedding batch.
        dataset: `tf.data.Dataset` of (images, labels).
        log_every_batches: log progress every this many batches.

    Returns:
        (embeddings float32 [n, D], labels int32 [n]) as NumPy arrays.
    """
    compiled = tf.function(embed_fn, reduce_retracing=True)
    embeddings, labels = [], []
    for batch_number, (images, batch_labels) in enumerate(dataset, start=1):
        embeddings.append(np.asarray(compiled(images), dtype=np.float32))
        labels.append(batch_labels.numpy())
        if batch_number % log_every_batches == 0:
            logging.info("Embedded %d images", sum(len(b) for b in labels))
    if not embeddings:
        raise ValueError("the evaluation dataset is empty")
    return np.concatenate(embeddings), np.concatenate(labels).astype(np.int32)
