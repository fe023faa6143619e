"""Evaluate an embedder on a dataset split: `python -m hdml_tf.evaluate --model=PATH`.

--model is a training run directory (its latest checkpoint), an exported SavedModel
(a version folder or the folder holding the versions) or an ONNX file. The command prints
a table of Recall@K, NMI, F1, MAP@R and R-Precision, writes them as JSON, and draws a
retrieval grid PNG: sample queries with their nearest results, framed green when the
result shares the query's class and red when it does not.
"""

import json
import os
import sys

import numpy as np
from absl import app, flags, logging

from hdml_tf import data as data_lib

FLAGS = flags.FLAGS


def define_flags():
    """Define the command's flags; called only when it runs, so importing this module defines none."""
    flags.DEFINE_string("model", None, "Training run directory, SavedModel folder or .onnx file.")
    flags.DEFINE_enum("dataset", None, sorted(data_lib.DATASETS), "Dataset; defaults to the run's dataset.")
    flags.DEFINE_string("data_dir", None, "Folder with the dataset's files.")
    flags.DEFINE_enum("split", "test", ["test", "train"], "Split to evaluate; test holds the unseen classes.")
    flags.DEFINE_bool("allow_partial_dataset", False, "Accept image and class counts other than the official ones.")
    flags.DEFINE_float("test_class_fraction", 0.5, "image_folder only: fraction of the sorted classes held out.")
    flags.DEFINE_list("recall_ks", ["1", "2", "4", "8"], "K values of Recall@K.")
    flags.DEFINE_integer("batch_size", 64, "Images per inference batch.")
    flags.DEFINE_integer("max_images", None, "Evaluate the first this many images only.")
    flags.DEFINE_integer("seed", 0, "Seed of k-means and of the choice of grid queries.")
    flags.DEFINE_string("output", None, "Metrics JSON file; default: metrics_<dataset>_<split>.json beside --model.")
    flags.DEFINE_string("grid", None, "Retrieval grid PNG; default: the --output path with .png.")
    flags.DEFINE_integer("grid_queries", 8, "Queries shown in the retrieval grid (0: no grid).")
    flags.DEFINE_integer("grid_k", 5, "Results shown per query in the retrieval grid.")


class EvaluateError(ValueError):
    """A flag or file that cannot work; the message names it and the fix."""


def _model_kind(path):
    if os.path.isfile(path) and path.lower().endswith(".onnx"):
        return "onnx"
    if os.path.isfile(os.path.join(path, "run_config.json")):
        return "run"
    if os.path.isdir(path):
        return "saved_model"
    raise EvaluateError(f"--model={path} not found: pass a training run directory, a SavedModel folder or an .onnx file")


def _embedder(kind, path):
    """Return (embed function on float image batches, image size, run config or None)."""
    import tensorflow as tf

    from hdml_tf import export, runs

    if kind == "run":
        model, run_config, _ = runs.load_trained_model(path)
        return model.embed, run_config["image_size"], run_config
    if kind == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        model_input = session.get_inputs()[0]
        return (lambda images: session.run(None, {model_input.name: np.asarray(images)})[0]), model_input.shape[1], None
    _, folder = export.resolve_model(path)
    loaded = tf.saved_model.load(folder)
    signature = loaded.signatures[export.FLOAT_SIGNATURE]
    image_size = signature.structured_input_signature[1][export.IMAGES_INPUT].shape[1]

    def embed_images(images):
        return signature(**{export.IMAGES_INPUT: tf.convert_to_tensor(images)})[export.EMBEDDING_OUTPUT]

    embed_images.loaded = loaded  # Keeps the SavedModel's variables alive.
    return embed_images, image_size, None


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


def run():
    from hdml_tf import evaluation

    if not FLAGS.model:
        raise EvaluateError("--model is required: a training run directory, a SavedModel folder or an .onnx file")
    kind = _model_kind(FLAGS.model)
    try:
        recall_ks = tuple(int(k) for k in FLAGS.recall_ks)
    except ValueError:
        raise EvaluateError(f"--recall_ks={','.join(FLAGS.recall_ks)} must be integers") from None
    embed_fn, image_size, run_config = _embedder(kind, FLAGS.model)
    dataset_name = FLAGS.dataset or (run_config or {}).get("dataset")
    if not dataset_name:
        raise EvaluateError(f"--dataset is required with a {kind} model: it has no record of its training data")

    splits = data_lib.load_dataset(
        dataset_name, data_dir=FLAGS.data_dir, allow_partial_dataset=FLAGS.allow_partial_dataset,
        test_class_fraction=FLAGS.test_class_fraction,
    )
    split = getattr(splits, FLAGS.split)
    dataset = data_lib.make_eval_dataset(split, image_size, FLAGS.batch_size, limit=FLAGS.max_images)
    embeddings, labels = _embed(embed_fn, dataset)
    metrics = evaluation.evaluate_embeddings(embeddings, labels, recall_ks=recall_ks, seed=FLAGS.seed)
    print(f"{dataset_name} {FLAGS.split} split, {len(labels)} images, {split.num_classes} classes:")
    print(evaluation.format_metrics_table(metrics))

    base = FLAGS.model if kind == "run" else os.path.dirname(os.path.abspath(FLAGS.model.rstrip("/")))
    output = FLAGS.output or os.path.join(base, f"metrics_{dataset_name}_{FLAGS.split}.json")
    with open(output, "w") as stream:
        json.dump({name: float(value) for name, value in metrics.items()}, stream, indent=2, sort_keys=True)
    logging.info("Wrote %s", output)
    if FLAGS.grid_queries > 0:
        grid = FLAGS.grid or os.path.splitext(output)[0] + ".png"
        draw_grid(split, embeddings, image_size, grid, FLAGS.grid_queries, FLAGS.grid_k, FLAGS.seed)
        print(f"Retrieval grid: {grid}")
    return metrics


def main(argv):
    del argv
    from hdml_tf import export, runs, trainer

    try:
        run()
    except (EvaluateError, export.ExportError, runs.RunConfigError, *trainer.USER_ERRORS) as error:
        print(f"hdml_tf.evaluate: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
