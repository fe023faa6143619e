"""The training run behind `python -m hdml_tf.train`: data, strategy, model, fit, evaluation."""

import json
import os
import time

import keras
import tensorflow as tf
from absl import logging

from hdml_tf import callbacks as callbacks_lib
from hdml_tf import data as data_lib
from hdml_tf import evaluation, runs
from hdml_tf.backbones.pretrained import PretrainedWeightsError
from hdml_tf.distribute import cluster_role, make_strategy
from hdml_tf.inference import embed_dataset
from hdml_tf.model import HDMLConfig
from hdml_tf.run_lock import RunDirectoryBusyError, RunDirectoryLock


class ModelDirError(OSError):
    """Raised when --model_dir cannot be created or written."""


TrainingInterrupted = callbacks_lib.TrainingInterrupted

# Errors caused by flags, input files or diverging training: reported as one line
# without a traceback. Other exceptions are bugs and keep their traceback.
USER_ERRORS = (
    data_lib.BadImageError,
    data_lib.BatchLayoutError,
    data_lib.DatasetCountError,
    data_lib.DatasetFileError,
    data_lib.DatasetNotFoundError,
    data_lib.UnsafeArchiveError,
    runs.RunConfigError,
    RunDirectoryBusyError,
    ModelDirError,
    PretrainedWeightsError,
    callbacks_lib.CheckpointWriteError,
    callbacks_lib.NonFiniteLossError,
)


def _prepare_model_dir(model_dir):
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ModelDirError(f"--model_dir={model_dir} is a file, not a folder: choose a folder path")
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, ".write_test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise ModelDirError(
            f"--model_dir={model_dir} cannot be written ({error.strerror or error}): choose a writable folder"
        ) from None


def _model_config(flags_values, num_classes, lr_decay_steps):
    return HDMLConfig(
        num_classes=num_classes,
        loss=flags_values.loss,
        hdml=flags_values.hdml,
        embedding_size=flags_values.embedding_size,
        alpha=flags_values.alpha,
        beta=flags_values.beta,
        gen_lambda=flags_values.gen_lambda,
        softmax_factor=flags_values.softmax_factor,
        l2_reg=flags_values.l2_reg,
        weight_decay=flags_values.weight_decay,
        margin=flags_values.margin,
        block_size=flags_values.block_size,
        lr=flags_values.lr,
        lr_gen=flags_values.lr_gen,
        lr_cls=flags_values.lr_cls,
        lr_decay_steps=lr_decay_steps,
        lr_decay_factor=flags_values.lr_decay_factor,
        nan_policy=flags_values.nan_policy,
        precision=flags_values.precision,
    )


def _log_split(name, split):
    counts = split.class_counts()
    logging.info(
        "%s split: %d images in %d classes (%d to %d images per class)",
        name, len(split), split.num_classes, counts.min(), counts.max(),
    )


class Evaluator:
    """Embed the test split, compute the metrics and write them to the run directory."""

    def __init__(self, model, strategy, test_split, flags_values, recall_ks):
        self.model = model
        self.strategy = strategy
        self.test_split = test_split
        self.dataset = data_lib.make_eval_dataset(
            test_split, flags_values.image_size, flags_values.eval_batch_size, limit=flags_values.eval_max_images
        )
        self.recall_ks = recall_ks
        self.seed = flags_values.seed
        self.model_dir = flags_values.model_dir
        self.writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "eval"))

    def __call__(self, step):
        started = time.perf_counter()
        try:
            with self.strategy.scope():
                embeddings, labels = embed_dataset(self.model.embed, self.dataset)
        except tf.errors.InvalidArgumentError as error:
            # An image passed the load-time check but does not decode, so find and name it.
            data_lib.raise_undecodable_image_error(self.test_split, error, split_name="test")
        metrics = evaluation.evaluate_embeddings(embeddings, labels, recall_ks=self.recall_ks, seed=self.seed)
        record = {"step": int(step), **{name: float(value) for name, value in metrics.items()}}
        callbacks_lib.write_json_atomic(os.path.join(self.model_dir, "metrics.json"), record)
        with open(os.path.join(self.model_dir, "metrics_history.jsonl"), "a") as stream:
            stream.write(json.dumps(record, sort_keys=True) + "\n")
        with self.writer.as_default(step=int(step)):
            for name, value in metrics.items():
                tf.summary.scalar(f"eval/{name}", value)
        self.writer.flush()
        logging.info(
            "Evaluation at step %d on %d test images (%.1f s):\n%s",
            step, len(labels), time.perf_counter() - started, evaluation.format_metrics_table(metrics),
        )
        return record


def _training_flags_string(flags_values):
    """Return the training command's own flags as "--name=value" lines, without absl's and TensorFlow's."""
    module = flags_values.find_module_defining_flag("model_dir")
    return "\n".join(flag.serialize() for flag in flags_values.get_flags_for_module(module) if flag.value is not None)


def _finished_run(model_dir, manager, evaluator, step, max_steps, is_chief, settings_changed):
    """Finish a run that is already at --max_steps.

    A run without a checkpoint (--max_steps=0) saves its untrained weights, so that they
    can be evaluated and exported. The run is evaluated unless metrics.json already
    contains this step's evaluation and no setting changed since.
    """
    if manager.latest_checkpoint is None:
        manager.save(checkpoint_number=step)
        logging.info("Saved the untrained model as %s", manager.latest_checkpoint)
    if not is_chief:
        return None
    previous = _read_metrics(model_dir)
    if previous is not None and previous.get("step") == step and not settings_changed:
        logging.info(
            "Step %d reached --max_steps=%d and was already evaluated (%s):\n%s",
            step, max_steps, os.path.join(model_dir, "metrics.json"),
            evaluation.format_metrics_table({key: value for key, value in previous.items() if key != "step"}),
        )
        return previous
    logging.info("Step %d reached --max_steps=%d: evaluating only", step, max_steps)
    return evaluator(step)


def _read_metrics(model_dir):
    try:
        with open(os.path.join(model_dir, "metrics.json")) as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return None


def run(flags_values, recall_ks, lr_decay_steps):
    """Train (or resume) the run described by the flags, then evaluate it.

    Holds the lock of --model_dir for the whole run, so a second process on the same
    folder stops with `RunDirectoryBusyError` instead of corrupting it. In multi-worker
    training only the chief uses --model_dir; every other worker writes its checkpoints
    to --model_dir/workers/<task> (a worker must save too, and its copy shows what it holds).
    """
    try:
        is_chief, task_id = cluster_role(flags_values.strategy)
    except ValueError as error:
        raise ModelDirError(str(error)) from None
    own_dir = flags_values.model_dir if is_chief else os.path.join(flags_values.model_dir, "workers", task_id)
    _prepare_model_dir(own_dir)
    with RunDirectoryLock(own_dir):
        return _run_locked(flags_values, recall_ks, lr_decay_steps, is_chief, own_dir)


def _run_locked(flags_values, recall_ks, lr_decay_steps, is_chief, own_dir):
    model_dir = flags_values.model_dir
    if flags_values.deterministic:
        tf.config.experimental.enable_op_determinism()
    logging.info("Training run in %s with flags:\n%s", model_dir, _training_flags_string(flags_values))

    strategy = make_strategy(flags_values.strategy, flags_values.cpu_replicas)
    splits = data_lib.load_dataset(
        flags_values.dataset,
        data_dir=flags_values.data_dir,
        download=flags_values.download,
        allow_partial_dataset=flags_values.allow_partial_dataset,
        skip_bad_images=flags_values.skip_bad_images,
        test_class_fraction=flags_values.test_class_fraction,
    )
    if flags_values.cache_images and splits.train.paths is not None:
        started = time.perf_counter()
        splits.train = data_lib.cache_resized(splits.train, flags_values.image_size)
        logging.info(
            "Cached %d resized training images in memory (%.1f GiB, %.0f s)",
            len(splits.train), splits.train.images.nbytes / 2**30, time.perf_counter() - started,
        )
    _log_split("Training", splits.train)
    _log_split("Test", splits.test)
    sampler = data_lib.make_sampler(
        flags_values.loss,
        splits.train.labels,
        flags_values.batch_size,
        num_replicas=strategy.num_replicas_in_sync,
        seed=flags_values.seed,
    )
    if sampler.excluded_classes:
        logging.warning(
            "Excluded %d training classes with fewer than 2 images from sampling", len(sampler.excluded_classes)
        )

    config = _model_config(flags_values, splits.train.num_classes, lr_decay_steps)
    run_config = runs.make_run_config(
        config,
        flags_values.backbone,
        flags_values.image_size,
        flags_values.dataset,
        data_dir=flags_values.data_dir,
        test_class_fraction=flags_values.test_class_fraction if flags_values.dataset == "image_folder" else None,
    )
    changed_settings = runs.check_resumable(model_dir, run_config)
    if changed_settings:
        logging.warning(
            "Resuming %s with settings that differ from its run_config.json, which is updated to the new ones: %s",
            model_dir, "; ".join(changed_settings),
        )

    with strategy.scope():
        keras.utils.set_random_seed(flags_values.seed)
        model = runs.build_model(run_config)
        model.compile()
        checkpoint = runs.make_checkpoint(model)
        manager = tf.train.CheckpointManager(
            checkpoint, own_dir, max_to_keep=flags_values.keep_checkpoints if is_chief else 1
        )
        # Every worker resumes from the chief's latest checkpoint.
        latest = tf.train.latest_checkpoint(model_dir)
        if latest:
            checkpoint.restore(latest).assert_existing_objects_matched()
            logging.info(
                "Resumed from %s at step %d with j_avg=%r, j_gen_avg=%r",
                latest,
                int(model.step_counter.numpy()),
                float(model.j_avg.value.numpy()),
                float(model.j_gen_avg.value.numpy()),
            )
        elif flags_values.pretrained:
            from hdml_tf.backbones import pretrained  # Imported only when used.

            pretrained.load_pretrained(
                model.backbone, flags_values.backbone, flags_values.pretrained, download=flags_values.download
            )

    run_config_path = os.path.join(model_dir, runs.RUN_CONFIG)
    if is_chief and (changed_settings or not os.path.exists(run_config_path)):
        callbacks_lib.write_json_atomic(run_config_path, run_config)

    evaluator = Evaluator(model, strategy, splits.test, flags_values, recall_ks) if is_chief else None
    start_step = int(model.step_counter.numpy())
    remaining = flags_values.max_steps - start_step
    if remaining <= 0:
        return _finished_run(
            model_dir, manager, evaluator, start_step, flags_values.max_steps, is_chief, bool(changed_settings)
        )

    def dataset_fn(input_context):
        # Each input pipeline (one per worker) feeds its local replicas their contiguous
        # slices of the global batch, one per-replica batch each, in replica order.
        local_replicas = strategy.num_replicas_in_sync // input_context.num_input_pipelines
        first = input_context.input_pipeline_id * local_replicas
        return data_lib.make_train_dataset(
            splits.train, sampler, flags_values.image_size, start_step=start_step, num_steps=remaining,
            seed=flags_values.seed, replica_ids=range(first, first + local_replicas),
        )

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    monitor = callbacks_lib.TrainingMonitor(
        flags_values.max_steps,
        flags_values.batch_size,
        os.path.join(own_dir, "train"),
        log_every_steps=flags_values.log_every_steps,
        nan_policy=flags_values.nan_policy,
    )
    checkpointer = callbacks_lib.PeriodicCheckpoint(manager, flags_values.checkpoint_every_steps, monitor)
    graceful_stop = callbacks_lib.GracefulStop(checkpointer)
    # Order matters: a non-finite step is caught before it could be checkpointed, and a
    # stop request skips the evaluation at the end.
    run_callbacks = [monitor, checkpointer, graceful_stop]
    if is_chief:
        run_callbacks.append(callbacks_lib.PeriodicEvaluation(evaluator, flags_values.eval_every_steps, monitor))
    logging.info("Training from step %d to %d", start_step, flags_values.max_steps)
    try:
        model.fit(dataset, epochs=1, steps_per_epoch=remaining, callbacks=run_callbacks, verbose=0)
    except tf.errors.InvalidArgumentError as error:
        # An image passed the load-time check but does not decode, so find and name it.
        # The latest periodic checkpoint is kept, so the run resumes once the file is fixed.
        data_lib.raise_undecodable_image_error(splits.train, error, split_name="training")
    if monitor.error is not None:
        raise monitor.error
    if graceful_stop.stopped_at_step is not None:
        raise callbacks_lib.TrainingInterrupted(graceful_stop.signal_number, graceful_stop.stopped_at_step)
    logging.info("Training finished at step %d", int(model.step_counter.numpy()))
    return None
