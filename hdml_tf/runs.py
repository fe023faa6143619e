"""A training run's directory: its configuration, checkpoints and the model they restore.

Layout of `model_dir`:
    run_config.json       what is needed to rebuild the model (written at the first start)
    ckpt-<step>.*         checkpoints of the model, the three optimisers and the schedule
    metrics.json          the latest evaluation; metrics_history.jsonl holds all of them
    train/                TensorBoard event files
"""

import dataclasses
import json
import os

import tensorflow as tf
from absl import logging

from hdml_tf.backbones import build_backbone
from hdml_tf.model import HDMLConfig, HDMLModel, precision_policy

RUN_CONFIG = "run_config.json"
# Keys of run_config.json that must not change when a run is resumed.
ARCHITECTURE_KEYS = ("backbone", "embedding_size", "num_classes", "hdml", "loss")


class RunConfigError(ValueError):
    """Raised when a model directory's configuration is missing or conflicts with the flags."""


def make_run_config(config, backbone, image_size, dataset, data_dir=None, test_class_fraction=None):
    """Return the JSON-serialisable description of a run.

    `data_dir` (stored as an absolute path) and `test_class_fraction` let evaluation find
    the run's data and its held-out classes again. None selects the loader's default.
    """
    run_config = dataclasses.asdict(config)
    run_config["lr_decay_steps"] = list(config.lr_decay_steps)
    run_config.update(
        backbone=backbone,
        image_size=image_size,
        dataset=dataset,
        data_dir=os.path.abspath(data_dir) if data_dir else None,
        test_class_fraction=test_class_fraction,
    )
    return run_config


def read_run_config(model_dir):
    path = os.path.join(model_dir, RUN_CONFIG)
    if not os.path.isfile(path):
        raise RunConfigError(f"{path} not found: {model_dir} is not a training run directory of hdml_tf")
    with open(path) as stream:
        return json.load(stream)


def check_resumable(model_dir, run_config):
    """Compare the flags' run configuration with the one stored in `model_dir`.

    Raises:
        RunConfigError: the stored run has another architecture (ARCHITECTURE_KEYS).

    Returns:
        A list of "key: old -> new" strings, one per other key that changed. Settings
        such as --image_size or --alpha may change on resume. The list is empty for a
        new run.
    """
    path = os.path.join(model_dir, RUN_CONFIG)
    if not os.path.isfile(path):
        return []
    previous = read_run_config(model_dir)
    changed = [
        f"{key}: {previous.get(key)!r} in the run, {run_config[key]!r} now"
        for key in ARCHITECTURE_KEYS
        if previous.get(key) != run_config[key]
    ]
    if changed:
        raise RunConfigError(
            f"--model_dir={model_dir} contains a run with another architecture ({'; '.join(changed)}): "
            f"use a new --model_dir or the run's settings"
        )
    return [
        f"{key}: {previous.get(key)!r} -> {value!r}"
        for key, value in run_config.items()
        # Keys missing from runs of older versions are not reported as changes.
        if key in previous and previous[key] != value
    ]


def model_config_from_run(run_config):
    fields = {field.name for field in dataclasses.fields(HDMLConfig)}
    values = {key: value for key, value in run_config.items() if key in fields}
    values["lr_decay_steps"] = tuple(values.get("lr_decay_steps", ()))
    return HDMLConfig(**values)


def build_model(run_config):
    """Build an untrained HDMLModel from a run configuration (call inside a strategy scope)."""
    config = model_config_from_run(run_config)
    with precision_policy(config.precision):
        backbone = build_backbone(run_config["backbone"], run_config.get("image_size"))
    return HDMLModel(backbone, config)


def make_checkpoint(model):
    """Return the tf.train.Checkpoint of everything training needs to resume."""
    objects = {"model": model, "metric_optimizer": model.metric_optimizer}
    if model.config.hdml:
        objects["generator_optimizer"] = model.generator_optimizer
        objects["classifier_optimizer"] = model.classifier_optimizer
    return tf.train.Checkpoint(**objects)


def load_trained_model(model_dir, checkpoint_path=None):
    """Rebuild the model of a run and restore its latest (or the given) checkpoint.

    Returns:
        (model, run_config, checkpoint_path).
    """
    run_config = read_run_config(model_dir)
    model = build_model(run_config)
    checkpoint_path = checkpoint_path or tf.train.latest_checkpoint(model_dir)
    if checkpoint_path is None:
        raise RunConfigError(f"no checkpoint found in {model_dir}: train the model first")
    make_checkpoint(model).restore(checkpoint_path).expect_partial()
    logging.info("Restored %s (step %d)", checkpoint_path, int(model.step_counter.numpy()))
    return model, run_config, checkpoint_path
