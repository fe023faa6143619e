"""Choice of the tf.distribute strategy for training."""

import json
import os

import tensorflow as tf
from absl import logging

STRATEGIES = ("mirrored", "one_device", "multi_worker")


def configure_cpu_replicas(num_replicas):
    """Split the physical CPU into `num_replicas` logical devices (before TensorFlow starts).

    This lets multi-replica code run and be tested without accelerators.
    """
    if num_replicas <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(num_replicas)]
    )


def make_strategy(name="mirrored", cpu_replicas=1):
    """Create the distribution strategy.

    Args:
        name: "mirrored" (every local GPU, or `cpu_replicas` CPU devices when there is no
            GPU), "one_device" (the first GPU, else the CPU) or "multi_worker" (cluster from
            the TF_CONFIG environment variable).
        cpu_replicas: number of logical CPU replicas when no GPU is present.
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy={name} is not valid; choose one of {', '.join(STRATEGIES)}")
    gpus = tf.config.list_physical_devices("GPU")
    if name == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "one_device":
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    elif gpus:
        strategy = tf.distribute.MirroredStrategy()
    else:
        configure_cpu_replicas(cpu_replicas)
        devices = [f"/cpu:{i}" for i in range(max(cpu_replicas, 1))]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    logging.info(
        "Strategy %s with %d replica(s); GPUs: %s",
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
        [gpu.name for gpu in gpus] or "none",
    )
    return strategy


def cluster_role(strategy_name):
    """Return (is_chief, task_id) of this process from TF_CONFIG.

    Outside multi-worker training the process is the chief. In a cluster the chief is the
    task of type "chief", or worker 0 when the cluster has no chief task. Only the chief
    writes checkpoints to --model_dir, evaluates and writes metrics.
    """
    if strategy_name != "multi_worker":
        return True, "chief"
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from None
    task = tf_config.get("task", {})
    cluster = tf_config.get("cluster", {})
    if not task or not cluster:
        raise ValueError(
            "--strategy=multi_worker needs TF_CONFIG with 'cluster' and 'task', for example "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
        )
    task_type, index = task.get("type"), int(task.get("index", 0))
    is_chief = task_type == "chief" or (task_type == "worker" and index == 0 and "chief" not in cluster)
    return is_chief, f"{task_type}_{index}"
