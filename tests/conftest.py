"""Test configuration: two logical CPU devices, so multi-replica code runs without GPUs."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from hdml_tf.distribute import configure_cpu_replicas  # noqa: E402

configure_cpu_replicas(2)
