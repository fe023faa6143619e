"""Multi-worker training over two local processes, and mixed precision on the CPU."""

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="apt-get install dataset-fashion-mnist"
)
RUN_FLAGS = ["--dataset=fashion_mnist", "--image_size=64", "--embedding_size=16", "--eval_max_images=300",
             "--eval_batch_size=100", "--log_every_steps=1", "--deterministic"]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def checkpoint_values(path):
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path) if name.startswith("model/")}


def test_two_workers_match_each_other_and_one_process(tmp_path):
    flags = [*RUN_FLAGS, "--batch_size=8", "--max_steps=3"]
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        command = [sys.executable, "-m", "hdml_tf.train", *flags, "--strategy=multi_worker",
                   f"--model_dir={tmp_path / 'multi'}"]
        workers.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True))
    for worker in workers:
        _, stderr = worker.communicate(timeout=900)
        assert worker.returncode == 0, stderr[-3000:]

    single = subprocess.run([sys.executable, "-m", "hdml_tf.train", *flags, "--cpu_replicas=2",
                             f"--model_dir={tmp_path / 'single'}"], cwd=REPO, capture_output=True, text=True,
                            timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]

    chief = checkpoint_values(str(tmp_path / "multi" / "ckpt-3"))
    worker = checkpoint_values(str(tmp_path / "multi" / "workers" / "worker_1" / "ckpt-3"))
    reference = checkpoint_values(str(tmp_path / "single" / "ckpt-3"))
    assert chief.keys() == worker.keys() == reference.keys()
    for name, value in chief.items():
        # BatchNorm's moving statistics are per replica (Keras' BatchNormalization is not
        # synchronised); they are read at evaluation only, which the chief runs.
        if "moving_" not in name:
            np.testing.assert_array_equal(worker[name], value, err_msg=name)
        # Same global batches and replica slices; only the all-reduce implementation differs.
        np.testing.assert_allclose(value, reference[name], rtol=1e-4, atol=5e-6, err_msg=name)
    assert not (tmp_path / "multi" / "workers" / "worker_1" / "metrics.json").exists()
    assert json.loads((tmp_path / "multi" / "metrics.json").read_text())["step"] == 3


def _train(model_dir, *extra):
    result = subprocess.run([sys.executable, "-m", "hdml_tf.train", *RUN_FLAGS, f"--model_dir={model_dir}",
                             "--loss=triplet", "--batch_size=12", "--max_steps=12", "--lr=3e-4", *extra],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def test_bfloat16_training_is_finite_and_close_to_float32(tmp_path):
    log = _train(tmp_path / "bf16", "--precision=mixed_bfloat16")
    _train(tmp_path / "fp32")
    losses = [float(value) for value in re.findall(r"j_metric=(\S+)", log)]
    assert len(losses) == 12
    assert np.all(np.isfinite(losses))

    reader = tf.train.load_checkpoint(str(tmp_path / "bf16" / "ckpt-12"))
    dtypes = reader.get_variable_to_dtype_map()
    schedule = [name for name in dtypes if "j_avg" in name or "j_gen_avg" in name]
    assert len(schedule) == 8
    assert all(dtypes[name] in (tf.float32, tf.int64) for name in schedule)
    assert all(dtypes[name] == tf.float32 for name in dtypes if name.endswith("kernel/.ATTRIBUTES/VARIABLE_VALUE"))

    bf16 = json.loads((tmp_path / "bf16" / "metrics.json").read_text())
    fp32 = json.loads((tmp_path / "fp32" / "metrics.json").read_text())
    # 12 steps from the same initialisation on the same batches: bfloat16's 8-bit
    # mantissa moves R@1 on 300 test images by a few hundredths at most.
    assert abs(bf16["recall@1"] - fp32["recall@1"]) <= 0.05
