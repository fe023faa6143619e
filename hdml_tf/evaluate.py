"""Evaluate an embedder on a dataset split: `python -m hdml_tf.evaluate --model=PATH`.

--model is a training run directory (its latest checkpoint), an exported SavedModel
(a version folder or the folder holding the versions) or an ONNX file. The command prints
a table of Recall@K, NMI, F1, MAP@R and R-Precision, writes them as JSON, and draws a
retrieval grid PNG: sample queries with their nearest results, framed green when the
result shares the query's class and red when it does not.

For a training run, --dataset, --data_dir and --test_class_fraction default to the values
in its run_config.json, where recorded. Usage errors end the command with one line
`hdml_tf.evaluate: error: ...` and exit code 2; flags are checked before the dataset and
the model are loaded.
"""

import json
import math
import os

import numpy as np
from absl import app, flags, logging

from hdml_tf import data as data_lib
from hdml_tf import export

PROGRAM = "hdml_tf.evaluate"
# Recall@K and the other metrics need at least one neighbour besides each query.
MIN_IMAGES = 2
MODEL_CHOICES = "pass a training run directory, a SavedModel folder or an .onnx file"

FLAGS = flags.FLAGS


def define_flags():
    """Define the command's flags; called only when it runs, so importing this module defines none."""
    flags.DEFINE_string("model", None, "Training run directory, SavedModel folder or .onnx file.")
    flags.DEFINE_enum("dataset", None, sorted(data_lib.DATASETS), "Dataset; defaults to the run's dataset.")
    flags.DEFINE_string("data_dir", None, "Folder with the dataset's files; defaults to the run's --data_dir.")
    flags.DEFINE_bool(
        "download", False, "Fetch the dataset through tensorflow-datasets when its files are not in --data_dir."
    )
    flags.DEFINE_enum("split", "test", ["test", "train"], "Split to evaluate; test holds the unseen classes.")
    flags.DEFINE_bool("allow_partial_dataset", False, "Accept image and class counts other than the official ones.")
    flags.DEFINE_bool(
        "skip_bad_images", False, "Skip unreadable or missing images (counted in the log) instead of failing."
    )
    flags.DEFINE_float(
        "test_class_fraction", 0.5,
        "image_folder only: fraction of the sorted classes held out; defaults to the run's value when it is recorded.",
    )
    flags.DEFINE_list("recall_ks", ["1", "2", "4", "8"], "K values of Recall@K.")
    flags.DEFINE_integer("batch_size", 64, "Images per inference batch.")
    flags.DEFINE_integer("max_images", None, f"Evaluate the first this many images only (at least {MIN_IMAGES}).")
    flags.DEFINE_integer("seed", 0, "Seed of k-means and of the choice of grid queries.")
    flags.DEFINE_string("output", None, "Metrics JSON file; default: metrics_<dataset>_<split>.json beside --model.")
    flags.DEFINE_string("grid", None, "Retrieval grid PNG; default: the --output path with .png.")
    flags.DEFINE_integer("grid_queries", 8, "Queries shown in the retrieval grid (0: no grid).")
    flags.DEFINE_integer("grid_k", 5, "Results shown per query in the retrieval grid.")


class EvaluateError(ValueError):
    """A flag or file that cannot work; the message names it and the fix."""


class OutputWriteError(OSError):
    """Error for a failed write of the metrics JSON or the retrieval grid after the evaluation."""


# === Flags and model ===


def _resolve_model(path):
    """Return (kind, path) of --model: kind "run", "saved_model" (path: the version folder) or "onnx"."""
    import tensorflow as tf

    from hdml_tf import runs

    if os.path.isfile(path):
        if path.lower().endswith(".onnx"):
            return "onnx", path
        if os.path.basename(path) == "saved_model.pb":
            raise EvaluateError(f"--model={path} is a file: pass the SavedModel folder {os.path.dirname(path) or '.'}")
        raise EvaluateError(f"--model={path} is a file but not an .onnx file: {MODEL_CHOICES}")
    if os.path.isfile(os.path.join(path, runs.RUN_CONFIG)):
        if tf.train.latest_checkpoint(path) is None:
            raise EvaluateError(f"--model={path} is a training run without a checkpoint: train the model first")
        return "run", path
    if os.path.isdir(path):
        try:
            return export.resolve_model(path)
        except export.ExportError:
            raise EvaluateError(
                f"--model={path} contains no {runs.RUN_CONFIG}, no saved_model.pb and no version folder with one: "
                f"{MODEL_CHOICES}"
            ) from None
    raise EvaluateError(f"--model={path} not found: {MODEL_CHOICES}")


def _parse_recall_ks(values):
    message = f"--recall_ks={','.join(values)} is invalid: give positive integers such as 1,2,4,8"
    try:
        recall_ks = tuple(int(value) for value in values)
    except ValueError:
        raise EvaluateError(message) from None
    if not recall_ks or min(recall_ks) < 1:
        raise EvaluateError(message)
    return recall_ks


def check_flags():
    """Check every flag that can be checked without the dataset or the model's weights.

    Returns:
        (model kind, model path, recall Ks): see `_resolve_model`.

    Raises:
        EvaluateError: naming the first invalid flag.
    """
    if not FLAGS.model:
        raise EvaluateError(f"--model is required: {MODEL_CHOICES}")
    recall_ks = _parse_recall_ks(FLAGS.recall_ks)
    if FLAGS.batch_size < 1:
        raise EvaluateError(f"--batch_size={FLAGS.batch_size} is invalid: give a positive integer")
    if FLAGS.max_images is not None and FLAGS.max_images < MIN_IMAGES:
        raise EvaluateError(
            f"--max_images={FLAGS.max_images} is invalid: evaluation needs at least {MIN_IMAGES} images"
        )
    if FLAGS.grid_queries < 0:
        raise EvaluateError(f"--grid_queries={FLAGS.grid_queries} is invalid: give 0 (no grid) or more")
    if FLAGS.grid_k < 1:
        raise EvaluateError(f"--grid_k={FLAGS.grid_k} is invalid: give a positive integer")
    if FLAGS.seed < 0:
        raise EvaluateError(f"--seed={FLAGS.seed} is invalid: give 0 or more")
    if not 0 < FLAGS.test_class_fraction < 1:
        raise EvaluateError(
            f"--test_class_fraction={FLAGS.test_class_fraction} is invalid: it must lie strictly between 0 and 1"
        )
    if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
        raise EvaluateError(f"--data_dir={FLAGS.data_dir} does not exist or is not a folder")
    kind, path = _resolve_model(FLAGS.model)
    return kind, path, recall_ks


def resolve_data_settings(run_config, dataset_name, model_path):
    """Return (data_dir, test_class_fraction) for loading `dataset_name`.

    When --model is a training run of `dataset_name`, the data_dir and test_class_fraction
    in its run_config.json replace the flags that were not given, so the test split contains
    the classes that the run held out. Runs written before these keys existed lack them.
    """
    data_dir, fraction = FLAGS.data_dir, FLAGS.test_class_fraction
    if run_config is None or run_config.get("dataset") != dataset_name:
        return data_dir, fraction
    from hdml_tf import runs

    config_path = os.path.join(model_path, runs.RUN_CONFIG)

    recorded_dir = run_config.get("data_dir")
    if recorded_dir and not FLAGS["data_dir"].present:
        if not os.path.isdir(recorded_dir):
            raise EvaluateError(
                f"the data_dir {recorded_dir} recorded in {config_path} does not exist or is not a folder: "
                f"pass --data_dir"
            )
        data_dir = recorded_dir
        logging.info("Reading %s from %s, the run's data_dir", dataset_name, data_dir)

    if dataset_name == "image_folder":
        recorded_fraction = run_config.get("test_class_fraction")
        if recorded_fraction is None:
            logging.warning(
                "%s records no test_class_fraction, so the held-out classes are those of --test_class_fraction=%g "
                "and may differ from the run's",
                config_path, fraction,
            )
        elif not FLAGS["test_class_fraction"].present:
            fraction = recorded_fraction
        elif not math.isclose(fraction, recorded_fraction):
            logging.warning(
                "--test_class_fraction=%g differs from the run's %g, so the held-out classes differ from those "
                "the run held out",
                fraction, recorded_fraction,
            )
    return data_dir, fraction


def _load_embedder(kind, path, run_config):
    """Return (embed function on float image batches, image size) of the model at `path`."""
    import tensorflow as tf

    from hdml_tf import runs

    if kind == "run":
        model, _, _ = runs.load_trained_model(path)
        return model.embed, run_config["image_size"]
    if kind == "onnx":
        session, image_size = export.open_onnx_session(path)
        input_name = session.get_inputs()[0].name
        return (lambda images: session.run(None, {input_name: np.asarray(images)})[0]), image_size
    loaded = export.load_saved_model(path)
    if export.FLOAT_SIGNATURE not in loaded.signatures:
        raise EvaluateError(
            f"--model={path} has no {export.FLOAT_SIGNATURE} signature: export it with tools/export_savedmodel.py"
        )
    signature = loaded.signatures[export.FLOAT_SIGNATURE]
    image_size = signature.structured_input_signature[1][export.IMAGES_INPUT].shape[1]

    def embed_images(images):
        return signature(**{export.IMAGES_INPUT: tf.convert_to_tensor(images)})[export.EMBEDDING_OUTPUT]

    embed_images.loaded = loaded  # Keeps the SavedModel's variables alive.
    return embed_images, image_size


def _load_split(dataset_name, data_dir, test_class_fraction):
    try:
        splits = data_lib.load_dataset(
            dataset_name, data_dir=data_dir, download=FLAGS.download, allow_partial_dataset=FLAGS.allow_partial_dataset,
            skip_bad_images=FLAGS.skip_bad_images, test_class_fraction=test_class_fraction,
        )
    except ValueError as error:
        # Besides the errors in trainer.USER_ERRORS, the list-file readers raise plain
        # ValueError for a damaged list file, such as a line with too few fields.
        raise EvaluateError(str(error)) from None
    split = getattr(splits, FLAGS.split)
    if len(split) < MIN_IMAGES:
        raise EvaluateError(
            f"--split={FLAGS.split} of --dataset={dataset_name} contains {len(split)} images, "
            f"but evaluation needs at least {MIN_IMAGES}"
        )
    return split


# === Evaluation ===


def _subset(split, indices):
    if split.images is not None:
        return data_lib.Split(labels=split.labels[indices], class_names=split.class_names, images=split.images[indices])
    return data_lib.Split(labels=split.labels[indices], class_names=split.class_names, paths=split.paths[indices])


def _embed(embed_fn, dataset):
    embeddings, labels = [], []
    for number, (images, batch_labels) in enumerate(dataset, start=1):
        embeddings.append(np.asarray(embed_fn(images.numpy()), dtype=np.float32))
        labels.append(batch_labels.numpy())
        if number % 20 == 0:
            logging.info("Embedded %d images", sum(len(batch) for batch in labels))
    return np.concatenate(embeddings), np.concatenate(labels)


def draw_grid(split, embeddings, image_size, path, num_queries, k, seed):
    """Draw the retrieval grid of `num_queries` random queries, from distinct classes while they last."""
    from hdml_tf.evaluation import draw_retrieval_grid, embeddings_to_neighbours

    k = min(k, len(embeddings) - 1)
    neighbours = embeddings_to_neighbours(embeddings, k)
    rng = np.random.default_rng(seed)
    labels = split.labels[: len(embeddings)]
    classes = rng.permutation(np.unique(labels))[:num_queries]
    queries = [rng.choice(np.flatnonzero(labels == label)) for label in classes]
    others = rng.permutation(np.setdiff1d(np.arange(len(labels)), queries))
    queries = np.array(queries + list(others[: num_queries - len(queries)]))
    queries = queries[np.argsort(labels[queries], kind="stable")]
    shown = np.unique(np.concatenate([queries, neighbours[queries].ravel()]))
    position = {index: row for row, index in enumerate(shown)}
    images = np.concatenate([batch.numpy() for batch, _ in data_lib.make_eval_dataset(_subset(split, shown), image_size)])
    draw_retrieval_grid(
        images[[position[i] for i in queries]],
        labels[queries],
        images,
        labels[shown],
        np.vectorize(position.get)(neighbours[queries]),
        path,
        k=k,
        title=f"Top-{k} results of {len(queries)} queries (green: same class)",
    )


def _write_outputs(metrics, split, embeddings, image_size, output, grid):
    try:
        with open(output, "w") as stream:
            json.dump({name: float(value) for name, value in metrics.items()}, stream, indent=2, sort_keys=True)
        logging.info("Wrote %s", output)
        if grid:
            draw_grid(split, embeddings, image_size, grid, FLAGS.grid_queries, FLAGS.grid_k, FLAGS.seed)
            print(f"Retrieval grid: {grid}")
    except OSError as error:
        raise OutputWriteError(f"writing {error.filename or output} failed: {error.strerror or error}") from None


def run():
    import tensorflow as tf

    from hdml_tf import evaluation, runs

    # Check the flags, paths and the run's settings before anything slow.
    kind, model_path, recall_ks = check_flags()
    run_config = None
    if kind == "run":
        try:
            run_config = runs.read_run_config(model_path)
        except json.JSONDecodeError as error:
            raise EvaluateError(f"--model={model_path} has a damaged {runs.RUN_CONFIG} ({error})") from None
    dataset_name = FLAGS.dataset or (run_config or {}).get("dataset")
    if not dataset_name:
        raise EvaluateError(f"--dataset is required with a {kind} model: it has no record of its training data")
    data_dir, test_class_fraction = resolve_data_settings(run_config, dataset_name, model_path)

    base = FLAGS.model if kind == "run" else os.path.dirname(os.path.abspath(FLAGS.model.rstrip("/")))
    output = FLAGS.output or os.path.join(base, f"metrics_{dataset_name}_{FLAGS.split}.json")
    export.check_output_file(output, "--output")
    grid = None
    if FLAGS.grid_queries > 0:
        grid = FLAGS.grid or os.path.splitext(output)[0] + ".png"
        export.check_output_file(grid, "--grid")

    # ONNX Runtime opens a file quickly, so a damaged .onnx file is reported
    # before the dataset is read. Runs and SavedModels take longer and are loaded after it.
    embedder = _load_embedder(kind, model_path, run_config) if kind == "onnx" else None
    split = _load_split(dataset_name, data_dir, test_class_fraction)
    if embedder is None:
        embedder = _load_embedder(kind, model_path, run_config)
    embed_fn, image_size = embedder

    dataset = data_lib.make_eval_dataset(split, image_size, FLAGS.batch_size, limit=FLAGS.max_images)
    try:
        embeddings, labels = _embed(embed_fn, dataset)
    except tf.errors.InvalidArgumentError as error:
        # An image passed the load-time check but does not decode, so find and name it.
        data_lib.raise_undecodable_image_error(split, error, split_name=FLAGS.split)
    metrics = evaluation.evaluate_embeddings(embeddings, labels, recall_ks=recall_ks, seed=FLAGS.seed)
    print(f"{dataset_name} {FLAGS.split} split, {len(labels)} images, {split.num_classes} classes:")
    print(evaluation.format_metrics_table(metrics))
    _write_outputs(metrics, split, embeddings, image_size, output, grid)
    return metrics


def main(argv):
    from hdml_tf import runs, trainer

    if len(argv) > 1:
        export.exit_with_error(PROGRAM, f"unexpected arguments {argv[1:]}: pass every setting as a --flag")
    try:
        run()
    except (EvaluateError, export.ExportError, runs.RunConfigError, *trainer.USER_ERRORS) as error:
        export.exit_with_error(PROGRAM, error)
    except OutputWriteError as error:
        export.exit_with_error(PROGRAM, error, exit_code=1)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=export.make_flags_parser(PROGRAM))
