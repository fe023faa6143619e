"""Training cost of HDML: images/s of the HDML step against the baseline step, side by side.

Both models use the same GoogLeNet backbone, embedding size, loss, batch and image size;
the baseline is `HDMLConfig(hdml=False)`, which trains J_m alone. After warm-up, timed
steps of the two models alternate, so load from other processes falls on both alike, and
the medians give the overhead ratio. The forward pass alone (`compute_hdml_losses`) is
timed the same way, to tell forward from backward cost.

    nice -n 10 python bench/bench_train_step.py --configs=64:32,227:32,227:128 --repeats=5

Results are printed and written as JSON to --output.
"""

import time

from absl import app, flags, logging

import records
import tf_step

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "configs", ["64:32", "227:32"], "IMAGE_SIZE:BATCH_SIZE or IMAGE_SIZE:BATCH_SIZE:REPEATS to measure, in this order."
)
flags.DEFINE_enum("loss", "npair", ["npair", "triplet"], "Metric loss of both models.")
flags.DEFINE_integer("embedding_size", 64, "Embedding dimension d.")
flags.DEFINE_enum(
    "backbone", "googlenet", ["googlenet", "tiny"],
    "Backbone of both models; `tiny` costs almost nothing, so the HDML-minus-baseline time is the HDML part alone.",
)
flags.DEFINE_integer("warmup", 2, "Untimed steps per model before timing (the first one traces the graph).")
flags.DEFINE_integer("repeats", 5, "Timed steps per model unless a config gives its own; the median is reported.")
flags.DEFINE_bool("forward", True, "Also time the forward pass alone.")
flags.DEFINE_bool("jit_compile", False, "Compile both train steps with XLA.")
flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow intra-op threads (0: TensorFlow's default).")
flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow inter-op threads (0: TensorFlow's default).")
flags.DEFINE_string("output", "bench/results/train_step.json", "JSON file for the results.")


def measure(image_size, batch_size, repeats):
    """Return the timings of one image size and batch size."""
    import keras
    import tensorflow as tf

    images, labels = tf_step.make_batch(FLAGS.loss, batch_size, image_size)
    images = tf.constant(images)
    labels = tf.constant(labels)
    steps = {}
    forwards = {}
    models = {}
    for method, hdml in (("hdml", True), ("baseline", False)):
        model, step = tf_step.make_step(
            hdml, FLAGS.loss, image_size, FLAGS.embedding_size, FLAGS.jit_compile, backbone=FLAGS.backbone
        )
        models[method] = model
        steps[method] = step
        forwards[method] = tf.function(
            lambda model=model: model.compute_hdml_losses(images, labels, training=True)["j_metric"],
            jit_compile=FLAGS.jit_compile,
        )

    # Warm-up runs only after every model exists and alternates like the timed loop. When
    # each model was warmed up right after its own build, its first timed step took 25 s
    # against 0.5 s for later steps.
    started = time.perf_counter()
    for _ in range(FLAGS.warmup):
        for method in steps:
            tf_step.time_call(steps[method], (images, labels))
            if FLAGS.forward:
                tf_step.time_call(forwards[method])
    logging.info("%d px, batch %d: warm-up took %.1f s", image_size, batch_size, time.perf_counter() - started)

    step_times = {method: [] for method in steps}
    forward_times = {method: [] for method in steps}
    for repeat in range(repeats):
        for method in steps:
            step_times[method].append(tf_step.time_call(steps[method], (images, labels)))
        if FLAGS.forward:
            for method in steps:
                forward_times[method].append(tf_step.time_call(forwards[method]))
        logging.info(
            "%d px, batch %d, repeat %d: step hdml %.3f s, baseline %.3f s (traces: %s)",
            image_size, batch_size, repeat, step_times["hdml"][-1], step_times["baseline"][-1],
            {method: step.experimental_get_tracing_count() for method, step in steps.items()},
        )

    result = {"image_size": image_size, "batch_size": batch_size, "repeats": repeats, "step_seconds": step_times}
    medians = {method: tf_step.median(times) for method, times in step_times.items()}
    result["images_per_second"] = {method: batch_size / seconds for method, seconds in medians.items()}
    result["step_overhead"] = medians["hdml"] / medians["baseline"] - 1.0
    # Paired by repeat, so a slow spell from other processes affects both members of a pair.
    differences = [hdml - baseline for hdml, baseline in zip(step_times["hdml"], step_times["baseline"])]
    result["median_paired_difference_seconds"] = tf_step.median(differences)
    if FLAGS.forward:
        result["forward_seconds"] = forward_times
        forward_medians = {method: tf_step.median(times) for method, times in forward_times.items()}
        result["forward_overhead"] = forward_medians["hdml"] / forward_medians["baseline"] - 1.0
    del models, steps, forwards
    keras.backend.clear_session()
    return result


def main(argv):
    del argv
    tf_step.configure_threads(FLAGS.intra_op_threads, FLAGS.inter_op_threads)
    import tensorflow as tf

    results = []
    for config in FLAGS.configs:
        values = [int(value) for value in config.split(":")]
        if len(values) not in (2, 3):
            raise ValueError(f"--configs entry {config!r} is invalid: use IMAGE_SIZE:BATCH_SIZE[:REPEATS]")
        image_size, batch_size = values[:2]
        repeats = values[2] if len(values) == 3 else FLAGS.repeats
        result = measure(image_size, batch_size, repeats)
        results.append(result)
        line = (
            f"{image_size} px, batch {batch_size}: HDML {result['images_per_second']['hdml']:.1f} images/s, "
            f"baseline {result['images_per_second']['baseline']:.1f} images/s, "
            f"step overhead {100 * result['step_overhead']:+.1f} %, "
            f"median paired difference {1000 * result['median_paired_difference_seconds']:.1f} ms"
        )
        if FLAGS.forward:
            line += f", forward overhead {100 * result['forward_overhead']:+.1f} %"
        print(line, flush=True)

    record = {
        **records.machine_fields(),
        "tensorflow": tf.__version__,
        "loss": FLAGS.loss,
        "backbone": FLAGS.backbone,
        "embedding_size": FLAGS.embedding_size,
        "warmup": FLAGS.warmup,
        "jit_compile": FLAGS.jit_compile,
        "intra_op_threads": FLAGS.intra_op_threads,
        "inter_op_threads": FLAGS.inter_op_threads,
        "results": results,
    }
    records.write_record(FLAGS.output, record)


if __name__ == "__main__":
    app.run(main)
