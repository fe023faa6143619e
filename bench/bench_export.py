"""Inference speed of the exported embedder: SavedModel in TensorFlow against ONNX in ONNX Runtime.

GoogLeNet with a 128-d embedding head at 227 px, with untrained weights (speed does not
depend on their values), is exported once by `hdml_tf.export` to a SavedModel and to ONNX
in a temporary folder. Both are then timed in this process on the same random images:

- TensorFlow: `tf.saved_model.load(...).signatures["serving_default"]`, the function
  TensorFlow Serving runs, on a float32 batch [b, 227, 227, 3].
- ONNX Runtime: an `InferenceSession` with the CPU provider and default session options
  (its default thread count is the number of physical cores).
- ONNX Runtime without spinning: the same with `session.intra_op.allow_spinning` set to 0,
  so idle worker threads sleep instead of busy-waiting. This matters on a CPU shared with
  other processes.

For each batch size, every repetition embeds --images_per_repeat images in ceil(n / b)
calls, TensorFlow and ONNX Runtime taking turns; --warmup repetitions are discarded and
the median of --repeats is reported as images/s. Decoding is not included: both take
preprocessed float images.

Usage, from the repository root:
    python bench/bench_export.py
    python bench/bench_export.py --batch_sizes=1,32 --repeats=7 --output_json=/tmp/bench_export.json
"""

import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 227, "Side of the square input images, in pixels.")
flags.DEFINE_integer("embedding_size", 128, "Embedding dimension.")
flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes to time.")
flags.DEFINE_integer("images_per_repeat", 32, "Images embedded in one timed repetition.")
flags.DEFINE_integer("warmup", 2, "Untimed repetitions before the timed ones, per batch size and runtime.")
flags.DEFINE_integer("repeats", 7, "Timed repetitions; their median is reported.")
flags.DEFINE_integer("opset", 17, "ONNX opset of the converted model.")
flags.DEFINE_string("output_json", None, "Optional file for the results as JSON.")


def cpu_model():
    """Return the CPU model name from /proc/cpuinfo, or platform.processor() elsewhere."""
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average():
    try:
        return os.getloadavg()
    except OSError:
        return None


def time_side_by_side(embed_fns, images, batch_size):
    """Return {name: images/s of each timed repetition} for every function in `embed_fns`.

    The runtimes take turns within each repetition, so that a change in the machine's load
    affects both alike.
    """
    calls = math.ceil(FLAGS.images_per_repeat / batch_size)
    batch = images[:batch_size]
    rates = {name: [] for name in embed_fns}
    for repetition in range(FLAGS.warmup + FLAGS.repeats):
        for name, embed_fn in embed_fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                embed_fn(batch)
            elapsed = time.perf_counter() - start
            if repetition >= FLAGS.warmup:
                rates[name].append(calls * batch_size / elapsed)
    return rates


def main(argv):
    del argv
    import onnxruntime
    import tensorflow as tf

    from hdml_tf import export, runs

    batch_sizes = [int(value) for value in FLAGS.batch_sizes]
    run_config = {
        "backbone": "googlenet",
        "image_size": FLAGS.image_size,
        "embedding_size": FLAGS.embedding_size,
        "num_classes": 2,
    }
    embedder = runs.build_model(run_config).build_embedder()

    with tempfile.TemporaryDirectory() as folder:
        saved_model_path = os.path.join(folder, "1")
        export.build_export_archive(embedder, FLAGS.image_size).write_out(saved_model_path, verbose=False)
        serve_images, _ = export.build_serving_functions(embedder, FLAGS.image_size)
        onnx_path = os.path.join(folder, "embedder.onnx")
        export.convert_to_onnx(serve_images, FLAGS.image_size, onnx_path, FLAGS.opset)

        signature = tf.saved_model.load(saved_model_path).signatures[export.FLOAT_SIGNATURE]
        session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        options = onnxruntime.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sleeping_session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])

        def run_tensorflow(batch):
            return signature(images=tf.constant(batch))[export.EMBEDDING_OUTPUT].numpy()

        def run_onnx(batch):
            return session.run([export.EMBEDDING_OUTPUT], {export.IMAGES_INPUT: batch})[0]

        def run_onnx_without_spinning(batch):
            return sleeping_session.run([export.EMBEDDING_OUTPUT], {export.IMAGES_INPUT: batch})[0]

        images = np.random.default_rng(0).uniform(
            0, 255, (max(batch_sizes), FLAGS.image_size, FLAGS.image_size, 3)
        ).astype(np.float32)
        difference = float(np.max(np.abs(run_tensorflow(images) - run_onnx(images))))

        load_before = load_average()
        results = []
        for batch_size in batch_sizes:
            runtimes = {
                "tensorflow": run_tensorflow,
                "onnxruntime": run_onnx,
                "onnxruntime_no_spinning": run_onnx_without_spinning,
            }
            rates = time_side_by_side(runtimes, images, batch_size)
            row = {"batch_size": batch_size}
            for name in runtimes:
                row[f"{name}_images_per_s"] = statistics.median(rates[name])
                row[f"{name}_repeats"] = rates[name]
            results.append(row)
        load_after = load_average()

    report = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "tensorflow": tf.__version__,
        "onnxruntime": onnxruntime.__version__,
        "image_size": FLAGS.image_size,
        "embedding_size": FLAGS.embedding_size,
        "opset": FLAGS.opset,
        "images_per_repeat": FLAGS.images_per_repeat,
        "warmup": FLAGS.warmup,
        "repeats": FLAGS.repeats,
        "max_abs_difference": difference,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    print()
    print("| batch | TensorFlow SavedModel | ONNX Runtime | ONNX Runtime, no spinning |")
    print("|---:|---:|---:|---:|")
    for row in results:
        print(f"| {row['batch_size']} | {row['tensorflow_images_per_s']:.1f} | "
              f"{row['onnxruntime_images_per_s']:.1f} | {row['onnxruntime_no_spinning_images_per_s']:.1f} |")
    if FLAGS.output_json:
        with open(FLAGS.output_json, "w") as stream:
            json.dump(report, stream, indent=2)


if __name__ == "__main__":
    app.run(main)
