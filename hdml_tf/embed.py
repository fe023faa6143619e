"""Embed a folder of images with an exported model.

    python -m hdml_tf.embed --model=saved_models/cub_hdml/3 --images=photos --output=photos.npz
    python -m hdml_tf.embed --model=cub_hdml.onnx --images=photos --output=photos.npz

Every .jpg, .jpeg and .png file under --images (recursively, in sorted order) is decoded
and preprocessed like evaluation (`preprocess_eval`): with a SavedModel inside the graph of
its `serve_image_bytes` signature, with an ONNX model by TensorFlow before ONNX Runtime.

--output=FILE.npz stores the arrays `embeddings` (float32 [n, d]), `paths` (the file names
relative to --images, with "/" separators, in the order of the rows) and `skipped` (files
left out by --skip_bad_images). --output=FILE.npy stores the embeddings alone and writes
the paths to FILE.txt, one per line.
"""

import os
import re
import time

import numpy as np
from absl import app, flags, logging

from hdml_tf import export

PROGRAM = "hdml_tf.embed"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
OUTPUT_SUFFIXES = (".npz", ".npy")
# Skipped files are logged by name up to this count, then only counted.
MAX_LOGGED_SKIPS = 20

FLAGS = flags.FLAGS


def define_flags():
    """Define the command's flags; called only when it runs, so importing this module defines none."""
    flags.DEFINE_string(
        "model",
        None,
        "SavedModel version folder (or a model folder, whose highest version is used) or .onnx file.",
    )
    flags.DEFINE_string("images", None, "Folder searched recursively for .jpg, .jpeg and .png files.")
    flags.DEFINE_string("output", None, "File to write (replaced if it exists): .npz, or .npy with the paths in a .txt.")
    flags.DEFINE_integer("batch_size", 32, "Number of images per model call.")
    flags.DEFINE_bool("skip_bad_images", False, "Skip unreadable or undecodable images (counted in the log) instead of failing.")
    flags.DEFINE_integer("log_every_batches", 10, "Log progress every this many batches.")


class BadImageError(ValueError):
    """Raised for an image file that cannot be read or decoded."""


# === Inputs ===


def find_images(folder):
    """Return the sorted relative paths ("/"-separated) of the JPEG and PNG files under `folder`."""
    relative_paths = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories.sort()
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                relative = os.path.relpath(os.path.join(directory, name), folder)
                relative_paths.append(relative.replace(os.sep, "/"))
    return sorted(relative_paths)


def check_flags():
    """Return (model kind, model path) after checking every flag, or raise ExportError naming the first bad one."""
    for name in ("model", "images", "output"):
        if not FLAGS[name].value:
            raise export.ExportError(f"--{name} is required (see --help)")
    if FLAGS.batch_size < 1:
        raise export.ExportError(f"--batch_size={FLAGS.batch_size} must be a positive integer")
    if FLAGS.log_every_batches < 1:
        raise export.ExportError(f"--log_every_batches={FLAGS.log_every_batches} must be a positive integer")
    if not os.path.isdir(FLAGS.images):
        raise export.ExportError(f"--images={FLAGS.images} does not exist or is not a folder")
    if not FLAGS.output.lower().endswith(OUTPUT_SUFFIXES):
        raise export.ExportError(f"--output={FLAGS.output} must end in .npz or .npy")
    export.check_output_file(FLAGS.output, "--output")
    return export.resolve_model(FLAGS.model)


# === Models ===


class SavedModelEmbedder:
    """Callable embedder of lists of encoded images, through a SavedModel's `serve_image_bytes` signature."""

    def __init__(self, path):
        import tensorflow as tf

        loaded = export.load_saved_model(path)
        if export.BYTES_SIGNATURE not in loaded.signatures:
            raise export.ExportError(
                f"--model={path} has no {export.BYTES_SIGNATURE} signature: export it with tools/export_savedmodel.py"
            )
        self._loaded = loaded
        self._signature = loaded.signatures[export.BYTES_SIGNATURE]
        self._tf = tf

    def __call__(self, encoded_images):
        outputs = self._signature(**{export.BYTES_INPUT: self._tf.constant(encoded_images, dtype=self._tf.string)})
        return outputs[export.EMBEDDING_OUTPUT].numpy()


class OnnxEmbedder:
    """Callable embedder of lists of encoded images: TensorFlow preprocessing, then ONNX Runtime."""

    def __init__(self, path):
        import tensorflow as tf

        self._session, image_size = export.open_onnx_session(path)
        self._input_name = self._session.get_inputs()[0].name
        self._preprocess = tf.function(
            lambda image_bytes: export.decode_and_preprocess(image_bytes, image_size),
            input_signature=[tf.TensorSpec([None], tf.string)],
        )
        self._tf = tf

    def __call__(self, encoded_images):
        images = self._preprocess(self._tf.constant(encoded_images, dtype=self._tf.string)).numpy()
        (embeddings,) = self._session.run(None, {self._input_name: images})
        return embeddings


def load_embedder(kind, path):
    if kind == "onnx":
        return OnnxEmbedder(path)
    return SavedModelEmbedder(path)


# === Embedding ===


def _read_file(root, relative_path):
    try:
        with open(os.path.join(root, relative_path), "rb") as stream:
            return stream.read()
    except OSError as error:
        raise BadImageError(f"cannot read {os.path.join(root, relative_path)}: {error.strerror}") from None


def _decode_error_reason(error):
    """Return the first line of a TensorFlow error message, without TensorFlow's stack notes."""
    for line in error.message.splitlines():
        line = line.strip()
        if line and not line.startswith(("Graph execution error", "Detected at node", "<stack traces")):
            return re.sub(r"\{\{[^}]*\}\}\s*", "", line).split(" [[")[0]
    return type(error).__name__


def _embed_batch(embedder, root, batch_paths, batch_bytes, rows, embedded_paths, skip):
    """Append the embeddings of one batch to `rows` and their paths to `embedded_paths`.

    Files that fail to decode are passed to `skip` with a BadImageError.
    """
    import tensorflow as tf

    try:
        rows.append(np.asarray(embedder(batch_bytes), dtype=np.float32))
        embedded_paths.extend(batch_paths)
        return
    except tf.errors.InvalidArgumentError:
        pass

    # One undecodable file fails the whole batch, so the batch is retried image by image.
    for relative_path, data in zip(batch_paths, batch_bytes):
        try:
            rows.append(np.asarray(embedder([data]), dtype=np.float32))
            embedded_paths.append(relative_path)
        except tf.errors.InvalidArgumentError as error:
            path = os.path.join(root, relative_path)
            skip(relative_path, BadImageError(f"cannot decode {path} ({_decode_error_reason(error)})"))


def embed_folder(embedder, root, relative_paths, batch_size=32, skip_bad_images=False, log_every_batches=10):
    """Embed the images `relative_paths` under `root` in batches.

    Returns:
        (embeddings float32 [n, d], embedded relative paths, skipped relative paths).

    Raises:
        BadImageError: for the first unreadable or undecodable file, unless `skip_bad_images`.
    """
    rows, embedded_paths, skipped = [], [], []

    def skip(relative_path, error):
        if not skip_bad_images:
            raise error
        skipped.append(relative_path)
        if len(skipped) <= MAX_LOGGED_SKIPS:
            logging.warning("Skipped image: %s", error)
        elif len(skipped) == MAX_LOGGED_SKIPS + 1:
            logging.warning("More unreadable images; only their count is logged from now on")

    start = time.monotonic()
    for batch_number, first in enumerate(range(0, len(relative_paths), batch_size), start=1):
        batch_paths, batch_bytes = [], []
        for relative_path in relative_paths[first : first + batch_size]:
            try:
                batch_bytes.append(_read_file(root, relative_path))
                batch_paths.append(relative_path)
            except BadImageError as error:
                skip(relative_path, error)
        if batch_paths:
            _embed_batch(embedder, root, batch_paths, batch_bytes, rows, embedded_paths, skip)

        if batch_number % log_every_batches == 0:
            done = min(first + batch_size, len(relative_paths))
            rate = done / max(time.monotonic() - start, 1e-9)
            logging.info("Embedded %d/%d images (%.1f images/s)", done, len(relative_paths), rate)

    if skipped:
        logging.warning("Skipped %d of %d images that could not be read or decoded", len(skipped), len(relative_paths))
    if not rows:
        raise export.ExportError(f"none of the {len(relative_paths)} images under {root} could be read or decoded")
    return np.concatenate(rows), embedded_paths, skipped


def write_embeddings(output, embeddings, paths, skipped):
    """Write `output` (.npz, or .npy with the paths in a .txt next to it) atomically."""
    if output.lower().endswith(".npz"):

        def write_npz(temporary):
            with open(temporary, "wb") as stream:
                np.savez(stream, embeddings=embeddings, paths=np.array(paths, dtype=str),
                         skipped=np.array(skipped, dtype=str))

        export.write_file_atomically(output, write_npz)
        return [output]

    bad_names = [path for path in paths if "\n" in path]
    if bad_names:
        raise export.ExportError(f"{bad_names[0]!r} contains a line break and cannot be listed in a .txt: use --output=FILE.npz")
    paths_file = os.path.splitext(output)[0] + ".txt"

    def write_npy(temporary):
        with open(temporary, "wb") as stream:
            np.save(stream, embeddings)

    def write_txt(temporary):
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write("".join(path + "\n" for path in paths))

    export.write_file_atomically(output, write_npy)
    export.write_file_atomically(paths_file, write_txt)
    return [output, paths_file]


def main(argv):
    if len(argv) > 1:
        export.exit_with_error(PROGRAM, f"unexpected arguments {argv[1:]}: pass every setting as a --flag")
    try:
        kind, model_path = check_flags()
        relative_paths = find_images(FLAGS.images)
        if not relative_paths:
            raise export.ExportError(f"--images={FLAGS.images} contains no .jpg, .jpeg or .png files")
        logging.info("Embedding %d images under %s with %s (%s)", len(relative_paths), FLAGS.images, model_path, kind)
        embedder = load_embedder(kind, model_path)
        embeddings, paths, skipped = embed_folder(
            embedder,
            FLAGS.images,
            relative_paths,
            batch_size=FLAGS.batch_size,
            skip_bad_images=FLAGS.skip_bad_images,
            log_every_batches=FLAGS.log_every_batches,
        )
        written = write_embeddings(FLAGS.output, embeddings, paths, skipped)
    except BadImageError as error:
        export.exit_with_error(PROGRAM, f"{error}: fix or remove the file, or pass --skip_bad_images")
    except export.ExportError as error:
        export.exit_with_error(PROGRAM, error)
    except OSError as error:
        export.exit_with_error(PROGRAM, f"writing --output={FLAGS.output} failed: {error}", exit_code=1)
    logging.info("Wrote %d embeddings of size %d to %s", len(paths), embeddings.shape[1], ", ".join(written))
    print(f"{len(paths)} embeddings ({len(skipped)} images skipped) written to {', '.join(written)}")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=export.make_flags_parser(PROGRAM))
