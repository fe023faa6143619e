"""Timing helpers shared by the TensorFlow benchmarks: a model, a fixed batch, a timed step.

Every benchmark times the real `HDMLModel.train_step` on one in-memory batch, so input
decoding and augmentation are excluded: the numbers are the cost of the step itself.
"""

import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The number of classes only sizes the HDML softmax classifier.
NUM_CLASSES = 100


def configure_threads(intra_op, inter_op):
    """Set TensorFlow's thread pools (0 keeps TensorFlow's default); call before any op runs."""
    import tensorflow as tf

    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)


def make_batch(loss, batch_size, image_size, seed=0):
    """Return (images, labels) in the loss's batch layout: RGB 0-255 float32 images."""
    group_size = 3 if loss == "triplet" else 2
    if batch_size % group_size:
        raise ValueError(f"batch_size={batch_size} must be divisible by {group_size} for loss={loss}")
    groups = batch_size // group_size
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 255.0, size=(batch_size, image_size, image_size, 3)).astype(np.float32)
    if loss == "triplet":
        labels = np.concatenate([np.arange(groups), np.arange(groups), np.arange(groups) + groups])
    else:
        labels = np.tile(np.arange(groups), group_size)
    return images, labels.astype(np.int32)


def build_tiny_backbone(image_size):
    """Build a stand-in backbone with GoogLeNet's 1024-d output and almost no cost.

    With it, the HDML step and the baseline step differ only by the HDML part (synthesis,
    generator, second pass through the head, classifier and their gradients), so the
    difference of their step times measures that part alone.
    """
    import keras

    images = keras.Input(shape=(image_size, image_size, 3), name="images")
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(images)
    features = keras.layers.Dense(1024, name="features")(pooled)
    return keras.Model(images, features, name="tiny_backbone")


def make_step(hdml, loss, image_size, embedding_size=64, jit_compile=False, seed=0, backbone="googlenet"):
    """Build an HDMLModel and return (model, compiled train-step function).

    `backbone` is "googlenet" or "tiny" (see `build_tiny_backbone`).
    """
    import keras
    import tensorflow as tf

    from hdml_tf.backbones import build_backbone
    from hdml_tf.model import HDMLConfig, HDMLModel

    keras.utils.set_random_seed(seed)
    config = HDMLConfig(num_classes=NUM_CLASSES, loss=loss, hdml=hdml, embedding_size=embedding_size)
    network = build_tiny_backbone(image_size) if backbone == "tiny" else build_backbone(backbone, image_size)
    model = HDMLModel(network, config)
    model.compile()
    step = tf.function(model.train_step, jit_compile=jit_compile, reduce_retracing=True)
    return model, step


def time_call(function, *args):
    """Run function(*args), wait for every returned value, and return the seconds taken."""
    started = time.perf_counter()
    outputs = function(*args)
    if isinstance(outputs, dict):
        for value in outputs.values():
            value.numpy()
    elif outputs is not None:
        outputs.numpy()
    return time.perf_counter() - started


def median(values):
    return statistics.median(values) if values else float("nan")
