"""Keras callbacks of a training run: progress, TensorBoard, checkpoints and evaluation."""

import json
import os
import signal
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

# Values of the train_step logs that are not losses.
SCHEDULE_KEYS = ("lambda", "real_weight", "j_avg", "j_gen_avg", "lr")


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or infinite under --nan_policy=stop."""


class CheckpointWriteError(OSError):
    """Raised when a checkpoint cannot be written; earlier checkpoints stay intact."""


class TrainingInterrupted(Exception):
    """Raised after SIGTERM or SIGINT stopped training at a step boundary with a checkpoint."""

    def __init__(self, signal_number, step):
        self.signal_number = signal_number
        self.step = step
        super().__init__(
            f"received {signal.Signals(signal_number).name}: saved a checkpoint at step {step} and stopped; "
            f"rerun the same command to resume"
        )


def _current_step(model):
    return int(model.step_counter.numpy())


def write_json_atomic(path, data):
    """Write JSON to a temporary file, then rename it over `path`."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as stream:
        json.dump(data, stream, indent=2, sort_keys=True)
        stream.write("\n")
    os.replace(temporary, path)


class TrainingMonitor(keras.callbacks.Callback):
    """Check every step's losses, report progress and write TensorBoard scalars.

    A non-finite loss is handled first, before any checkpoint of that step: the step's
    update was already skipped by the model; with nan_policy "stop" training ends with
    `NonFiniteLossError`, with "skip_step" it goes on and the skipped steps are counted.
    """

    def __init__(self, max_steps, batch_size, log_dir, log_every_steps=20, nan_policy="stop"):
        super().__init__()
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.log_every_steps = log_every_steps
        self.nan_policy = nan_policy
        self.writer = tf.summary.create_file_writer(log_dir)
        self.skipped_steps = 0
        self.error = None
        self.progress_bar = None
        self._interval_start = None
        self._interval_steps = 0

    def on_train_begin(self, logs=None):
        self._interval_start = time.perf_counter()
        if sys.stdout.isatty():
            self.progress_bar = keras.utils.Progbar(self.max_steps, unit_name="step")

    def _handle_non_finite(self, step, logs):
        bad = {name: value for name, value in logs.items() if not np.isfinite(value)}
        description = ", ".join(f"{name}={value}" for name, value in sorted(bad.items()))
        if self.nan_policy == "skip_step":
            self.skipped_steps += 1
            logging.warning(
                "Skipped the update of step %d: non-finite %s (%d step(s) skipped so far)",
                step, description, self.skipped_steps,
            )
            return
        self.error = NonFiniteLossError(
            f"non-finite loss at step {step}: {description}; the update was not applied and the latest "
            f"checkpoint is the last good one (rerun with --nan_policy=skip_step to skip such steps)"
        )
        self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        logs = {name: float(np.asarray(value).reshape(-1)[0]) for name, value in (logs or {}).items()}
        step = _current_step(self.model)
        if logs.get("finite", 1.0) == 0.0:
            self._handle_non_finite(step, logs)
            if self.error is not None:
                return
        self._interval_steps += 1
        values = {name: value for name, value in logs.items() if name != "finite"}
        if self.progress_bar is not None:
            self.progress_bar.update(step, [(name, values[name]) for name in ("j_metric", "j_gen") if name in values])
        if step % self.log_every_steps == 0 or step == self.max_steps:
            elapsed = time.perf_counter() - self._interval_start
            images_per_second = self._interval_steps * self.batch_size / max(elapsed, 1e-9)
            self._interval_start = time.perf_counter()
            self._interval_steps = 0
            loss_text = " ".join(f"{name}={value:.4g}" for name, value in sorted(values.items()) if name not in SCHEDULE_KEYS)
            schedule_text = " ".join(f"{name}={values[name]:.4g}" for name in SCHEDULE_KEYS if name in values)
            logging.info(
                "step %d/%d | %s | %s | %.1f images/s",
                step, self.max_steps, loss_text, schedule_text, images_per_second,
            )
            with self.writer.as_default(step=step):
                for name, value in values.items():
                    tf.summary.scalar(f"train/{name}", value)
                tf.summary.scalar("train/images_per_second", images_per_second)
            self.writer.flush()


class PeriodicCheckpoint(keras.callbacks.Callback):
    """Save a checkpoint every `every_steps` steps and at the end of training."""

    def __init__(self, manager, every_steps, monitor):
        super().__init__()
        self.manager = manager
        self.every_steps = every_steps
        self.monitor = monitor
        self.last_saved_step = None

    def save(self, step):
        if self.monitor.error is not None or step == self.last_saved_step:
            return
        try:
            path = self.manager.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as error:
            message = getattr(error, "message", None) or str(error)
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {step} to {self.manager.directory}: {message}; "
                f"the previous checkpoint {self.manager.latest_checkpoint} is intact. Free disk space or fix the "
                f"folder's permissions, then rerun to resume"
            ) from error
        self.last_saved_step = step
        logging.info("Saved checkpoint %s", path)

    def on_train_batch_end(self, batch, logs=None):
        step = _current_step(self.model)
        if step % self.every_steps == 0:
            self.save(step)

    def on_train_end(self, logs=None):
        self.save(_current_step(self.model))


class PeriodicEvaluation(keras.callbacks.Callback):
    """Evaluate on the held-out split every `every_steps` steps and at the end.

    Args:
        evaluate_fn: callable(step) returning a flat metrics dict.
        every_steps: evaluation period in steps.
        monitor: the run's `TrainingMonitor`; no evaluation follows a fatal error.
    """

    def __init__(self, evaluate_fn, every_steps, monitor):
        super().__init__()
        self.evaluate_fn = evaluate_fn
        self.every_steps = every_steps
        self.monitor = monitor
        self.last_step = None

    def run(self, step):
        if self.monitor.error is not None or self.model.stop_training or step == self.last_step:
            return
        self.evaluate_fn(step)
        self.last_step = step

    def on_train_batch_end(self, batch, logs=None):
        step = _current_step(self.model)
        if self.every_steps and step % self.every_steps == 0:
            self.run(step)

    def on_train_end(self, logs=None):
        self.run(_current_step(self.model))


class GracefulStop(keras.callbacks.Callback):
    """Turn SIGTERM and SIGINT into a checkpoint at the next step boundary and a clean stop.

    The handlers are installed for the duration of `fit` and the previous ones restored
    afterwards. After the stop, `trainer.run` raises `TrainingInterrupted`.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, checkpoint_callback):
        super().__init__()
        self.checkpoint_callback = checkpoint_callback
        self.signal_number = None
        self.stopped_at_step = None
        self._previous_handlers = {}

    def _handle(self, signal_number, frame):
        del frame
        if self.signal_number is None:
            logging.warning(
                "Received %s: stopping after the current step", signal.Signals(signal_number).name
            )
        self.signal_number = signal_number

    def on_train_begin(self, logs=None):
        for signal_number in self.SIGNALS:
            self._previous_handlers[signal_number] = signal.signal(signal_number, self._handle)

    def on_train_batch_end(self, batch, logs=None):
        if self.signal_number is None or self.stopped_at_step is not None:
            return
        step = _current_step(self.model)
        self.checkpoint_callback.save(step)
        self.stopped_at_step = step
        self.model.stop_training = True

    def on_train_end(self, logs=None):
        for signal_number, handler in self._previous_handlers.items():
            signal.signal(signal_number, handler)
        self._previous_handlers = {}
