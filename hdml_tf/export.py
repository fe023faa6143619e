"""Export of a trained embedder: SavedModel for TensorFlow Serving, ONNX for ONNX Runtime.

SavedModel signatures, both returning `embedding` (float32 [batch, embedding_size], L2-normalised):

| signature           | input                                                                     |
|---------------------|---------------------------------------------------------------------------|
| `serving_default`   | `images`: float32 [batch, S, S, 3], RGB on the 0-255 scale, already resized and centre-cropped like `preprocess_eval` (S is the run's image_size) |
| `serve_image_bytes` | `image_bytes`: string [batch] of encoded JPEG, PNG, BMP, WebP or GIF (first frame) files, decoded and preprocessed in the graph like `preprocess_eval` |

H and W of `serving_default` are fixed to the run's image_size, so an input of another size
fails with InvalidArgumentError instead of giving a silently different embedding. The ONNX
model has the same input and output as `serving_default`, so preprocessing stays with the
caller: tf2onnx 1.17 converts neither DecodeImage nor ScaleAndTranslate (the antialiased
resize), and ONNX Runtime rejects the model it writes for `serve_image_bytes`.

Versions are written as `<export_base>/<name>/<version>/`, the layout TensorFlow Serving
watches. TensorFlow Serving loads only subfolders whose names parse as integers, so the
temporary folder (`.tmp-*`) next to the versions is never loaded half-written.

TensorFlow, tf2onnx and onnxruntime are imported inside the functions that use them, so
that the command-line tools check their flags and files before spending seconds on imports.
"""

import errno
import glob
import os
import re
import shutil
import sys
import tempfile

import numpy as np
from absl import flags, logging

FLOAT_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serve_image_bytes"
IMAGES_INPUT = "images"
BYTES_INPUT = "image_bytes"
EMBEDDING_OUTPUT = "embedding"

DEFAULT_OPSET = 17
# tf2onnx 1.17 rejects opsets above 18. Opset 11 is the lowest tested: from 11 on, ONNX's Pad
# takes the padding as an input, which GoogLeNet's Caffe-mode pooling computes at run time.
MIN_OPSET = 11
MAX_OPSET = 18

RUN_CONFIG = "run_config.json"


class ExportError(ValueError):
    """Error for a flag, file or folder that makes an export impossible, with a message naming it and the fix."""


class ParityError(RuntimeError):
    """Error for ONNX Runtime embeddings that differ from TensorFlow's by more than the tolerance."""


# === Command-line helpers ===


def exit_with_error(program, error, exit_code=2):
    """Log `error`, print it as one line `program: error: ...` to stderr and exit."""
    logging.error("%s", error)
    print(f"{program}: error: {error}", file=sys.stderr)
    sys.exit(exit_code)


def make_flags_parser(program):
    """Return an absl flags parser that reports invalid flags as one line and exits with code 2."""

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            exit_with_error(program, error)

    return parse


# === Run directories ===


def check_run_dir(model_dir, checkpoint=None):
    """Raise ExportError unless `model_dir` is a training run with a checkpoint to export."""
    if not model_dir:
        raise ExportError("--model_dir is required: the run directory written by python -m hdml_tf.train")
    if not os.path.isdir(model_dir):
        raise ExportError(f"--model_dir={model_dir} does not exist or is not a folder")
    if not os.path.isfile(os.path.join(model_dir, RUN_CONFIG)):
        raise ExportError(
            f"--model_dir={model_dir} has no {RUN_CONFIG}: pass the --model_dir of a python -m hdml_tf.train run"
        )
    if checkpoint:
        if not os.path.isfile(checkpoint + ".index"):
            raise ExportError(f"--checkpoint={checkpoint} not found: pass a prefix such as {model_dir}/ckpt-500")
    elif not glob.glob(os.path.join(glob.escape(model_dir), "*.index")):
        raise ExportError(f"no checkpoint found in --model_dir={model_dir}: train the model first")


def default_model_name(model_dir):
    """Return the SavedModel name used when --name is not given: the run directory's basename."""
    return os.path.basename(os.path.normpath(os.path.abspath(model_dir)))


# === Versioned, atomic writing ===


def list_versions(model_base):
    """Return {version: [folder names]} of the integer-named subfolders of `model_base`.

    Several folder names can map to one version ("7" and "007"), as in TensorFlow Serving.
    """
    versions = {}
    if not os.path.isdir(model_base):
        return versions
    for entry in os.listdir(model_base):
        if entry.isascii() and entry.isdigit() and os.path.isdir(os.path.join(model_base, entry)):
            versions.setdefault(int(entry), []).append(entry)
    return versions


def next_version(model_base):
    """Return one more than the highest version in `model_base`, or 1 when there is none."""
    return max(list_versions(model_base), default=0) + 1


def ensure_writable_dir(path, flag):
    """Create folder `path` if needed and check that files can be created in it.

    Raises:
        ExportError: naming `path` and the flag `flag` (such as "--export_base") it comes from.
    """
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=".write-check-", dir=path)
        os.rmdir(probe)
    except OSError as error:
        raise ExportError(f"cannot write to the folder {path} ({error.strerror}): choose another {flag}") from None


def plan_saved_model_version(export_base, name, version=None, overwrite=False):
    """Check the destination of a SavedModel export and return (model_base, version).

    Raises:
        ExportError: for an invalid name or version, an unwritable folder, or an existing
            version without `overwrite`.
    """
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ExportError(f"--name={name!r} is not a valid model name: use a single folder name such as 'cub_hdml'")
    if version is not None and version < 1:
        raise ExportError(f"--version={version} must be a positive integer (TensorFlow Serving serves the highest)")
    model_base = os.path.join(export_base, name)
    ensure_writable_dir(model_base, "--export_base")
    existing = list_versions(model_base)
    if version is None:
        return model_base, next_version(model_base)
    if version in existing and not overwrite:
        folder = os.path.join(model_base, existing[version][0])
        raise ExportError(
            f"{folder} already exists: pass --overwrite to replace it, "
            f"or omit --version to write version {next_version(model_base)}"
        )
    return model_base, version


def _current_umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _make_temporary_dir(parent, prefix):
    """Create a uniquely named folder with the permissions of os.mkdir (mkdtemp gives 0o700)."""
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(path, 0o777 & ~_current_umask())
    return path


def write_version_atomically(model_base, version, write_fn, overwrite=False):
    """Write one version folder with `write_fn(path)` so that no partial version is ever visible.

    `write_fn` fills a temporary folder in `model_base`, which is then renamed to the version
    number. If `write_fn` or the rename raises, the temporary folder is removed. A process
    killed outright (SIGKILL, power loss) can leave a `.tmp-*` folder behind, but never a
    partial version folder. With `version` None, the version is the next free one at the
    time of the rename, so concurrent exports get distinct versions.

    Returns:
        The path of the version folder.
    """
    label = "next" if version is None else version
    temporary = _make_temporary_dir(model_base, f".tmp-{label}-")
    try:
        write_fn(temporary)
        if version is None:
            return _publish_next_version(temporary, model_base)
        return _publish_version(temporary, model_base, version, overwrite)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _publish_next_version(temporary, model_base):
    """Rename the written folder `temporary` to the next free version number."""
    while True:
        target = os.path.join(model_base, str(next_version(model_base)))
        try:
            os.rename(temporary, target)
            return target
        except OSError as error:
            # Another export took this number since next_version: try the one after it.
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise


def _publish_version(temporary, model_base, version, overwrite):
    """Rename the written folder `temporary` to the version number.

    With `overwrite`, the existing folders of that version are first renamed out of the way
    and removed after the new one is in place, so the version is missing between the two
    renames. They are moved back if the final rename fails.
    """
    target = os.path.join(model_base, str(version))
    existing = list_versions(model_base).get(version, [])
    if existing and not overwrite:
        raise ExportError(f"{os.path.join(model_base, existing[0])} appeared during the export: pass --overwrite")

    moved = []
    try:
        for folder in existing:
            holder = tempfile.mkdtemp(prefix=f".old-{version}-", dir=model_base)
            os.rename(os.path.join(model_base, folder), os.path.join(holder, folder))
            moved.append((holder, folder))
        os.rename(temporary, target)
    except BaseException:
        for holder, folder in moved:
            os.rename(os.path.join(holder, folder), os.path.join(model_base, folder))
            os.rmdir(holder)
        raise
    for holder, _ in moved:
        shutil.rmtree(holder, ignore_errors=True)
    return target


def write_file_atomically(path, write_fn):
    """Write file `path` through `write_fn(temporary_path)` and an atomic os.replace."""
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=directory)
    os.close(descriptor)
    # mkstemp creates the file with mode 0o600; give it the mode open() would.
    os.chmod(temporary, 0o666 & ~_current_umask())
    try:
        write_fn(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def check_output_file(path, flag):
    """Raise ExportError unless `path` can be written as a file (its folder is created if needed)."""
    if not path:
        raise ExportError(f"{flag} is required")
    if os.path.isdir(path):
        raise ExportError(f"{flag}={path} is a folder: give a file name")
    ensure_writable_dir(os.path.dirname(os.path.abspath(path)), flag)


# === Preprocessing ===


def decode_and_preprocess(image_bytes, image_size):
    """Decode a string batch of encoded images and preprocess each one like `preprocess_eval`.

    Args:
        image_bytes: string tensor [batch] of JPEG, PNG, BMP, WebP or GIF (first frame) files.
        image_size: side S of the centre crop.

    Returns:
        float32 [batch, S, S, 3] RGB on the 0-255 scale.

    Raises:
        tf.errors.InvalidArgumentError: when an element is not a decodable image.
    """
    import tensorflow as tf

    from hdml_tf.data.pipeline import preprocess_eval

    def decode_one(data):
        # The same decoding as the file loader of hdml_tf.data.pipeline.
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return preprocess_eval(image, image_size)

    return tf.map_fn(
        decode_one,
        image_bytes,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
    )


def _resize_weights(input_size, output_size):
    """Return the [output, input] matrix of TensorFlow's antialiased bilinear resize along one axis.

    The triangle kernel is widened by input/output when downscaling, and the weights of
    each output pixel are renormalised where the kernel leaves the image.
    """
    scale = output_size / input_size
    kernel_width = max(1.0 / scale, 1.0)
    centres = (np.arange(output_size) + 0.5) / scale
    sources = np.arange(input_size) + 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(sources[None, :] - centres[:, None]) / kernel_width)
    return weights / weights.sum(axis=1, keepdims=True)


def preprocess_eval_numpy(image, image_size):
    """Preprocess a decoded uint8 RGB image [H, W, 3] like `preprocess_eval`, with NumPy only.

    For ONNX Runtime without TensorFlow. The result matches `preprocess_eval` to within
    float32 rounding (tests/test_export.py checks 0.01 on the 0-255 scale).
    """
    from hdml_tf.data.pipeline import resize_size

    side = resize_size(image_size)
    pixels = np.asarray(image, dtype=np.float64)
    resized = np.einsum("oh,hwc->owc", _resize_weights(pixels.shape[0], side), pixels)
    resized = np.einsum("pw,owc->opc", _resize_weights(pixels.shape[1], side), resized)
    offset = (side - image_size) // 2
    return resized[offset : offset + image_size, offset : offset + image_size].astype(np.float32)


# === SavedModel ===


def load_embedder(model_dir, checkpoint=None):
    """Restore a run's checkpoint and return (embedder, run_config, checkpoint_path).

    The embedder is a functional Keras model from float32 RGB images [batch, S, S, 3] on
    the 0-255 scale to L2-normalised embeddings.
    """
    from hdml_tf import runs

    try:
        model, run_config, checkpoint_path = runs.load_trained_model(model_dir, checkpoint)
    except runs.RunConfigError as error:
        raise ExportError(str(error)) from None
    return model.build_embedder(), run_config, checkpoint_path


def build_serving_functions(embedder, image_size):
    """Return the tf.functions of both signatures: (serve_images, serve_image_bytes).

    Each returns {"embedding": float32 [batch, embedding_size]}.
    """
    import tensorflow as tf

    images_spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=IMAGES_INPUT)
    bytes_spec = tf.TensorSpec([None], tf.string, name=BYTES_INPUT)

    @tf.function(input_signature=[images_spec])
    def serve_images(images):
        # Loaded signatures do not check the input's static shape, so EnsureShape does.
        images = tf.ensure_shape(images, [None, image_size, image_size, 3])
        embeddings = tf.cast(embedder(images, training=False), tf.float32)
        return {EMBEDDING_OUTPUT: embeddings}

    @tf.function(input_signature=[bytes_spec])
    def serve_image_bytes(image_bytes):
        return serve_images(decode_and_preprocess(image_bytes, image_size))

    return serve_images, serve_image_bytes


def build_export_archive(embedder, image_size):
    """Return a keras.export.ExportArchive with the `serving_default` and `serve_image_bytes` endpoints.

    ExportArchive (not a plain tf.Module) because TensorFlow Serving loads SavedModels with
    the TF1 loader, which fails with "Could not find variable" on a saved tf.Module with
    TensorFlow 2.21 and Keras 3.15.
    """
    import keras

    serve_images, serve_image_bytes = build_serving_functions(embedder, image_size)
    archive = keras.export.ExportArchive()
    archive.track(embedder)
    archive.add_endpoint(FLOAT_SIGNATURE, serve_images)
    archive.add_endpoint(BYTES_SIGNATURE, serve_image_bytes)
    return archive


def export_saved_model(model_dir, export_base="saved_models", name=None, version=None, overwrite=False,
                       checkpoint=None):
    """Export a run's checkpoint as version `version` (default: the next free one) of a SavedModel.

    Returns:
        The path of the written version folder, `<export_base>/<name>/<version>`.
    """
    check_run_dir(model_dir, checkpoint)
    name = name or default_model_name(model_dir)
    model_base, _ = plan_saved_model_version(export_base, name, version, overwrite)

    embedder, run_config, checkpoint_path = load_embedder(model_dir, checkpoint)
    archive = build_export_archive(embedder, run_config["image_size"])
    path = write_version_atomically(
        model_base, version, lambda temporary: archive.write_out(temporary, verbose=False), overwrite
    )
    logging.info("Exported %s (%s, %d px) to %s", checkpoint_path, run_config["backbone"],
                 run_config["image_size"], path)
    return path


# === ONNX ===


def check_opset(opset):
    """Raise ExportError unless tf2onnx 1.17 can convert the embedder with ONNX opset `opset`."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset={opset} is not supported: use {MIN_OPSET} to {MAX_OPSET} (tf2onnx 1.17)")


def convert_to_onnx(serve_images, image_size, path, opset=DEFAULT_OPSET):
    """Convert the float signature to an ONNX model file with a dynamic batch dimension.

    The ONNX graph has the input `images` (float32 [batch, S, S, 3]) and the output
    `embedding` (float32 [batch, embedding_size]).
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=IMAGES_INPUT)
    model_proto, _ = tf2onnx.convert.from_function(serve_images, input_signature=[spec], opset=opset)

    # tf2onnx names the dynamic batch dimension "unk__<n>", so it is renamed to the usual "batch".
    for value in list(model_proto.graph.input) + list(model_proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(model_proto)
    onnx.save(model_proto, path)


def parity_images(run_config, count=8, data_dir=None, seed=0):
    """Return {description: float32 [n, S, S, 3]} of images to compare ONNX with TensorFlow on.

    Always `count` uniform random images; also the first `count` test images of the run's
    dataset, preprocessed like evaluation, when that dataset can be loaded.
    """
    image_size = run_config["image_size"]
    generator = np.random.default_rng(seed)
    samples = {
        "random": generator.uniform(0.0, 255.0, size=(count, image_size, image_size, 3)).astype(np.float32)
    }

    from hdml_tf import data as data_lib

    dataset = run_config.get("dataset")
    try:
        splits = data_lib.load_dataset(dataset, data_dir=data_dir, allow_partial_dataset=True)
    except (OSError, ValueError) as error:
        logging.warning("No test images of %s for the parity check (%s); random images only", dataset, error)
        return samples
    test_images = data_lib.make_eval_dataset(splits.test, image_size, batch_size=count, limit=count)
    for images, _ in test_images.take(1):
        samples[f"{dataset} test"] = images.numpy()
    return samples


def onnx_max_difference(onnx_path, serve_images, samples):
    """Return the largest absolute difference between ONNX Runtime and TensorFlow embeddings.

    Every sample set is run as one batch and, to check the dynamic batch dimension, its
    first image alone.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    largest = 0.0
    for description, images in samples.items():
        for batch in (images, images[:1]):
            expected = serve_images(batch)[EMBEDDING_OUTPUT].numpy()
            (actual,) = session.run([EMBEDDING_OUTPUT], {IMAGES_INPUT: batch})
            difference = float(np.max(np.abs(actual - expected)))
            logging.info("ONNX parity on %d %s image(s): max |ONNX - TF| = %.3g", len(batch), description, difference)
            largest = max(largest, difference)
    return largest


def export_onnx(model_dir, output, opset=DEFAULT_OPSET, tolerance=1e-5, checkpoint=None, data_dir=None,
                num_parity_images=8):
    """Convert a run's embedder to ONNX and check it against TensorFlow before writing `output`.

    Returns:
        The largest absolute difference between the ONNX Runtime and TensorFlow embeddings.

    Raises:
        ParityError: when that difference exceeds `tolerance`; `output` is then not written.
    """
    check_run_dir(model_dir, checkpoint)
    check_output_file(output, "--output")
    check_opset(opset)

    embedder, run_config, checkpoint_path = load_embedder(model_dir, checkpoint)
    image_size = run_config["image_size"]
    serve_images, _ = build_serving_functions(embedder, image_size)
    samples = parity_images(run_config, num_parity_images, data_dir)

    def convert_and_check(temporary):
        convert_to_onnx(serve_images, image_size, temporary, opset)
        difference = onnx_max_difference(temporary, serve_images, samples)
        if difference > tolerance:
            raise ParityError(
                f"ONNX Runtime differs from TensorFlow by up to {difference:.3g} (tolerance {tolerance:g}), "
                f"so {output} was not written: try another --opset or raise --tolerance"
            )
        return difference

    differences = []
    write_file_atomically(output, lambda temporary: differences.append(convert_and_check(temporary)))
    logging.info("Exported %s to %s (opset %d, max |ONNX - TF| = %.3g)", checkpoint_path, output, opset,
                 differences[0])
    return differences[0]


def resolve_model(path):
    """Return ("saved_model", folder) or ("onnx", file) for the --model value `path`.

    A folder without saved_model.pb but with integer-named version subfolders (the layout of
    tools/export_savedmodel.py) resolves to its highest version, as TensorFlow Serving does.
    """
    if os.path.isfile(path) and path.lower().endswith(".onnx"):
        return "onnx", path
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            return "saved_model", path
        versions = list_versions(path)
        for version in sorted(versions, reverse=True):
            for folder in versions[version]:
                candidate = os.path.join(path, folder)
                if os.path.isfile(os.path.join(candidate, "saved_model.pb")):
                    logging.info("Using version %s of %s", folder, path)
                    return "saved_model", candidate
        raise ExportError(
            f"--model={path} contains no saved_model.pb and no version folder with one: "
            f"pass a folder written by tools/export_savedmodel.py"
        )
    if os.path.exists(path):
        raise ExportError(f"--model={path} is neither a SavedModel folder nor an .onnx file")
    raise ExportError(f"--model={path} not found: pass a SavedModel folder or an .onnx file")


def _first_line(message):
    lines = str(message).strip().splitlines()
    return lines[0] if lines else "no details given"


def load_saved_model(path):
    """Load the SavedModel folder `path` with tf.saved_model.load.

    Raises:
        ExportError: naming `path`, when its saved_model.pb or variables cannot be read.
    """
    import tensorflow as tf

    try:
        return tf.saved_model.load(path)
    except (OSError, tf.errors.OpError) as error:
        # OSError: saved_model.pb or the variables are missing or unparsable. OpError: the
        # variable files are damaged.
        reason = _first_line(error.message if isinstance(error, tf.errors.OpError) else error)
        raise ExportError(f"--model={path} is not a readable SavedModel: {reason}") from None


def open_onnx_session(path):
    """Open an ONNX Runtime CPU session of the file `path`.

    Returns:
        (session, image size S of its only input [batch, S, S, 3]).

    Raises:
        ExportError: naming `path`, when ONNX Runtime cannot load it or its input is
            not a batch of square images.
    """
    import onnxruntime
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    # Load errors of ONNX Runtime 1.32, such as InvalidProtobuf for random bytes and
    # InvalidArgument for an empty file. They derive from Exception only, with no shared base.
    load_errors = (
        ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf,
        ort_errors.NoModel, ort_errors.NoSuchFile, ort_errors.NotImplemented, ort_errors.RuntimeException,
    )
    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    except load_errors as error:
        # Messages read "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from PATH failed:REASON".
        reason = _first_line(error).split(" failed:", 1)[-1].strip()
        reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", reason)
        raise ExportError(f"--model={path} is not a readable ONNX model: {reason}") from None

    inputs = session.get_inputs()
    shape = inputs[0].shape if len(inputs) == 1 else None
    if shape is None or len(shape) != 4 or not isinstance(shape[1], int) or shape[1] != shape[2] or shape[3] != 3:
        described = [model_input.shape for model_input in inputs]
        raise ExportError(
            f"--model={path} takes inputs of shapes {described}, not one [batch, S, S, 3]: "
            f"export it with tools/export_onnx.py"
        )
    return session, shape[1]
