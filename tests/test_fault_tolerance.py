"""Crash, pre-emption, NaN and disk failures of real training runs on Fashion-MNIST."""

import fcntl
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from hdml_tf import callbacks, model, trainer
from hdml_tf import train as train_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="apt-get install dataset-fashion-mnist"
)
RUN_FLAGS = ["--dataset=fashion_mnist", "--image_size=64", "--embedding_size=16", "--batch_size=4",
             "--block_size=4", "--eval_every_steps=1000", "--eval_max_images=100", "--eval_batch_size=100",
             "--log_every_steps=1", "--deterministic"]
SCHEDULE_KEY = "model/{}/value/.ATTRIBUTES/VARIABLE_VALUE"


def train_command(model_dir, *extra):
    return [sys.executable, "-m", "hdml_tf.train", *RUN_FLAGS, f"--model_dir={model_dir}", *extra]


def run_to_end(command):
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def wait_for(path, process, timeout=300, exists=os.path.exists):
    deadline = time.time() + timeout
    while not exists(path):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def model_variables(checkpoint_path):
    reader = tf.train.load_checkpoint(checkpoint_path)
    names = [name for name, _ in tf.train.list_variables(checkpoint_path) if name.startswith("model/")]
    return {name: reader.get_tensor(name) for name in names}


def test_sigkill_then_rerun_matches_uninterrupted_run(tmp_path):
    steps = ["--max_steps=12", "--checkpoint_every_steps=4"]
    run_to_end(train_command(tmp_path / "reference", *steps))

    crashed_dir = tmp_path / "crashed"
    process = subprocess.Popen(train_command(crashed_dir, *steps), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    # The checkpoint counts once the `checkpoint` state file names it, after its data files.
    wait_for(str(crashed_dir), process, exists=tf.train.latest_checkpoint)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert not (crashed_dir / "ckpt-12.index").exists(), "the run finished before it could be killed"

    resumed = run_to_end(train_command(crashed_dir, *steps))
    match = re.search(r"Resumed from (\S+) at step (\d+) with j_avg=(\S+), j_gen_avg=(\S+)", resumed.stderr)
    assert match, resumed.stderr[-3000:]
    checkpoint_path, step = match.group(1), int(match.group(2))
    assert step in (4, 8)
    reader = tf.train.load_checkpoint(checkpoint_path)
    assert float(match.group(3)) == float(reader.get_tensor(SCHEDULE_KEY.format("j_avg")))
    assert float(match.group(4)) == float(reader.get_tensor(SCHEDULE_KEY.format("j_gen_avg")))

    # Bitwise equality is expected with --deterministic on one CPU; the tolerance only
    # absorbs differences in summation order should the thread pool schedule differently.
    reference = model_variables(str(tmp_path / "reference" / "ckpt-12"))
    got = model_variables(str(crashed_dir / "ckpt-12"))
    assert reference.keys() == got.keys()
    for name, value in reference.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_sigterm_saves_checkpoint_and_exits(tmp_path):
    model_dir = tmp_path / "run"
    process = subprocess.Popen(train_command(model_dir, "--max_steps=100000", "--checkpoint_every_steps=1000"),
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(model_dir / "train", process)  # TensorBoard folder: training has started
    time.sleep(3)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    match = re.search(r"received SIGTERM: saved a checkpoint at step (\d+)", stderr)
    assert match, stderr[-3000:]
    step = int(match.group(1))
    assert tf.train.latest_checkpoint(str(model_dir)).endswith(f"ckpt-{step}")
    assert not (model_dir / "metrics.json").exists()


def _parse_flags(argv):
    train_cli.FLAGS.unparse_flags()
    train_cli.FLAGS(["hdml_tf.train", *argv])
    return train_cli.validate_flags()


@pytest.fixture
def nan_at_step_3(monkeypatch):
    original = model.HDMLModel.compute_hdml_losses

    def poisoned(self, images, labels, training=True):
        values = original(self, images, labels, training=training)
        poison = tf.where(self.step_counter == 2, np.nan, 0.0)  # the 3rd step
        values["j_metric"] = values["j_metric"] + poison
        return values

    monkeypatch.setattr(model.HDMLModel, "compute_hdml_losses", poisoned)
    yield
    train_cli.FLAGS.unparse_flags()


def test_nan_stop_keeps_last_good_checkpoint(tmp_path, nan_at_step_3):
    recall_ks, decay = _parse_flags([*RUN_FLAGS, f"--model_dir={tmp_path}", "--max_steps=6",
                                     "--checkpoint_every_steps=2"])
    with pytest.raises(callbacks.NonFiniteLossError, match=r"step 3: j_metric=nan"):
        trainer.run(train_cli.FLAGS, recall_ks, decay)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")
    for name, value in model_variables(str(tmp_path / "ckpt-2")).items():
        assert np.all(np.isfinite(value)), name


def test_nan_skip_step_goes_on(tmp_path, nan_at_step_3, caplog):
    recall_ks, decay = _parse_flags([*RUN_FLAGS, f"--model_dir={tmp_path}", "--max_steps=5",
                                     "--checkpoint_every_steps=5", "--nan_policy=skip_step"])
    trainer.run(train_cli.FLAGS, recall_ks, decay)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-5")
    for name, value in model_variables(str(tmp_path / "ckpt-5")).items():
        assert np.all(np.isfinite(value)), name
    assert (tmp_path / "metrics.json").exists()


def test_checkpoint_write_failure_keeps_previous(tmp_path, monkeypatch):
    original_save = tf.train.CheckpointManager.save
    calls = []

    def failing_save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
        return original_save(self, *args, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", failing_save)
    recall_ks, decay = _parse_flags([*RUN_FLAGS, f"--model_dir={tmp_path}", "--max_steps=6",
                                     "--checkpoint_every_steps=2"])
    try:
        with pytest.raises(callbacks.CheckpointWriteError, match="No space left on device.*ckpt-2 is intact"):
            trainer.run(train_cli.FLAGS, recall_ks, decay)
    finally:
        train_cli.FLAGS.unparse_flags()
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")
    tf.train.load_checkpoint(str(tmp_path / "ckpt-2"))


def test_unwritable_model_dir_is_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = subprocess.run(train_command(blocker / "run", "--max_steps=1"), cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"--model_dir={blocker / 'run'} cannot be written" in result.stderr


def test_second_process_on_same_model_dir_is_rejected(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / ".lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242\n")
        lock.flush()
        result = subprocess.run(train_command(tmp_path, "--max_steps=1"), cwd=REPO, capture_output=True,
                                text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "in use by another training process (pid 4242)" in result.stderr
