"""Import pretrained weights into a backbone: the `--pretrained` flag of `hdml_tf.train`.

Sources, by the form of `--pretrained` (the backbones it fits, and how layers are matched):

- `*.npy` from a Caffe-to-TensorFlow converter, `{layer: {"weights": HWIO, "biases": (O,)}}`
  (googlenet, matched by Caffe layer name).
- `*.mat` of the HDML authors' code: `<layer>` (OIHW kernel) and `<layer>_bias`
  (googlenet, matched by Caffe layer name).
- `*.weights.h5` from `backbone.save_weights` (all, matched by layer order, because the
  Keras 3 format stores no layer names).
- a run directory or checkpoint prefix of `hdml_tf.train` (all, matched by the
  checkpoint's object path `model/backbone/...`).
- `*.h5`, a Keras Applications weight file in the legacy Keras format (applications,
  matched by layer order).
- `imagenet`: Keras' no-top ImageNet file from the Keras cache (applications, matched by
  layer order).

Caffe layer names may be written with "/" (`conv1/7x7_s2`, as in Caffe and the authors'
.mat file), "_" (`conv1_7x7_s2`, as caffe-tensorflow writes them) or "." (the Keras layer
names of `hdml_tf.backbones.googlenet`). The source's classifier layers (`loss1/...`,
`loss2/...`, `loss3/...`) are skipped and reported.

Caffe kernels are OIHW and convolve Caffe's input: BGR, 0-255, minus the mean pixel.
GoogLeNet's first layer, `CaffePreprocess`, produces exactly that input from RGB images,
so kernels only change axis order (OIHW -> HWIO) and no input channel is flipped.
`verify_conv1` checks this on every Caffe import.
"""

import dataclasses
import os
import pickle
import re
import socket

import h5py
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from hdml_tf import runs
from hdml_tf.backbones import applications, build_backbone, googlenet

IMAGENET = "imagenet"
CAFFE_SUFFIXES = (".npy", ".mat")
CONV1 = "conv1/7x7_s2"
# Caffe's conv1/7x7_s2 of bvlc_googlenet: kernel 7, stride 2, padding 3 on every side.
CONV1_KERNEL, CONV1_STRIDE, CONV1_PAD = 7, 2, 3
# Side of the random test image of `verify_conv1` when the backbone accepts any size.
CONV1_CHECK_SIZE = 35
# Socket timeout while Keras downloads ImageNet weights, so a dead connection fails
# instead of hanging. Keras itself does not retry.
DOWNLOAD_TIMEOUT_S = 60

_CLASSIFIER_NAME = re.compile(r"^loss[123][/_.]")
_GOOGLENET_WEIGHTS_HELP = (
    "convert the BVLC GoogLeNet Caffe model (bvlc_googlenet.caffemodel) to a .npy file with a "
    "Caffe-to-TensorFlow converter, or use the HDML authors' tf_ckpt_from_caffe.mat, and pass its path "
    "(docs/pretrained.md)"
)


class PretrainedWeightsError(ValueError):
    """Error for a weight source that cannot be imported, with a message naming the file and the fix."""


@dataclasses.dataclass
class CaffeWeights:
    """Convolution weights of a Caffe-derived file, in the file's own layout and names.

    Attributes:
        path: the file read.
        layout: "HWIO" (converter .npy) or "OIHW" (Caffe's order, the authors' .mat).
        kernels: layer name as written in the file -> kernel array.
        biases: layer name as written in the file -> 1-D bias array.
    """

    path: str
    layout: str
    kernels: dict
    biases: dict


@dataclasses.dataclass
class ImportReport:
    """Result of one import: which layers were set, skipped or not found.

    Attributes:
        source: the file, checkpoint or Keras cache file read.
        loaded: Keras layer names that received weights.
        missing: backbone layers that the source lacks. They keep their initial weights
            (only with `allow_missing=True`, otherwise the import fails).
        unexpected: source entries that match no backbone layer.
        ignored: the source's classifier layers (loss1, loss2, loss3), skipped on purpose.
        conv1_max_error: largest difference of `verify_conv1`, or None if not run.
    """

    source: str
    loaded: list
    missing: list = dataclasses.field(default_factory=list)
    unexpected: list = dataclasses.field(default_factory=list)
    ignored: list = dataclasses.field(default_factory=list)
    conv1_max_error: float | None = None


# === Reading Caffe-derived files ===


def _text(name):
    return name.decode("latin1") if isinstance(name, bytes) else str(name)


def _read_converter_npy(path):
    try:
        # NOTE: allow_pickle runs code stored in the file: load only files you trust.
        data = np.load(path, allow_pickle=True, encoding="latin1")
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as error:
        raise PretrainedWeightsError(f"{path} could not be read as a NumPy file: {error}") from error
    if data.dtype != object or data.shape != () or not isinstance(data.item(), dict):
        raise PretrainedWeightsError(
            f"{path} contains an array of shape {data.shape} and dtype {data.dtype}, expected a pickled dictionary "
            f"{{layer name: {{'weights': kernel, 'biases': bias}}}} as Caffe-to-TensorFlow converters write it"
        )
    kernels, biases = {}, {}
    for raw_name, params in data.item().items():
        name = _text(raw_name)
        params = {_text(key): value for key, value in params.items()} if isinstance(params, dict) else {}
        if "weights" not in params:
            if _CLASSIFIER_NAME.match(name):
                continue
            raise PretrainedWeightsError(
                f"{path}: entry {name!r} has no 'weights' but the keys {sorted(params)}. Every layer must be "
                f"{{'weights': HWIO kernel, 'biases': bias}}"
            )
        kernels[name] = np.asarray(params["weights"])
        if "biases" in params:
            biases[name] = np.asarray(params["biases"]).reshape(-1)
    return CaffeWeights(path, "HWIO", kernels, biases)


def _read_authors_mat(path):
    import scipy.io  # Imported only for .mat files.

    try:
        data = scipy.io.loadmat(path)
    except NotImplementedError as error:
        raise PretrainedWeightsError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which scipy.io cannot read: save it again with "
            f"save(..., '-v7') in MATLAB"
        ) from error
    except (OSError, ValueError, TypeError) as error:
        raise PretrainedWeightsError(f"{path} could not be read as a MATLAB file: {error}") from error
    kernels, biases = {}, {}
    for key, value in data.items():
        if key.startswith("__"):  # __header__, __version__ and __globals__ of scipy.io
            continue
        if key.endswith("_bias"):
            biases[key[: -len("_bias")]] = np.asarray(value).reshape(-1)
        else:
            kernels[key] = np.asarray(value)
    return CaffeWeights(path, "OIHW", kernels, biases)


def read_caffe_weights(path):
    """Read a converter `.npy` or the authors' `.mat` file into CaffeWeights."""
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"{path} not found")
    if path.endswith(".npy"):
        return _read_converter_npy(path)
    if path.endswith(".mat"):
        return _read_authors_mat(path)
    raise PretrainedWeightsError(f"{path} is not a Caffe-derived weight file: expected a .npy or .mat file")


# === Importing Caffe weights into GoogLeNet ===


def _match_caffe_names(source, caffe_names):
    """Map the model's Caffe layer names to the names written in `source`.

    Returns:
        (matched, ignored, unexpected): `matched` maps a Caffe name to the file's name,
        `ignored` lists the file's classifier layers and `unexpected` its other entries.
    """
    lookup = {}
    for caffe_name in caffe_names:
        for variant in (caffe_name, caffe_name.replace("/", "_"), googlenet.keras_layer_name(caffe_name)):
            lookup[variant] = caffe_name
    matched, ignored, unexpected = {}, [], []
    for name in sorted(source.kernels):
        if name in lookup:
            caffe_name = lookup[name]
            if caffe_name in matched:
                raise PretrainedWeightsError(
                    f"{source.path} contains layer {caffe_name} twice, as {matched[caffe_name]!r} and {name!r}"
                )
            matched[caffe_name] = name
        elif _CLASSIFIER_NAME.match(name):
            ignored.append(name)
        else:
            unexpected.append(name)
    for name in sorted(set(source.biases) - set(source.kernels)):
        if not _CLASSIFIER_NAME.match(name):
            unexpected.append(f"{name} (bias without kernel)")
    return matched, ignored, unexpected


def _source_kernel(source, name, hwio_shape):
    """Return the file's kernel of layer `name` and its expected shape, both in the file's layout."""
    kernel = source.kernels[name]
    height, width, inputs, outputs = hwio_shape
    if source.layout == "HWIO":
        return kernel, hwio_shape
    # MATLAB drops trailing singleton dimensions, so a 1x1 kernel may be stored as (O, I).
    if kernel.ndim == 2 and height == width == 1:
        kernel = kernel.reshape(kernel.shape + (1, 1))
    return kernel, (outputs, inputs, height, width)


def _to_hwio(kernel, layout):
    return kernel if layout == "HWIO" else np.transpose(kernel, (2, 3, 1, 0))


def import_caffe_weights(backbone, source, allow_missing=False):
    """Assign CaffeWeights to the GoogLeNet `backbone` by layer name, then run `verify_conv1`.

    Every shape is checked before anything is assigned, so a failed import leaves the
    backbone unchanged.

    Args:
        backbone: a model from `hdml_tf.backbones.googlenet.build_googlenet`.
        source: CaffeWeights from `read_caffe_weights`.
        allow_missing: import the layers present in `source` and keep the initial weights
            of the others, instead of failing.

    Returns:
        An ImportReport.

    Raises:
        PretrainedWeightsError: on a missing layer (unless `allow_missing`), a missing bias,
            a shape mismatch (naming the layer and both shapes) or a failed conv1 check.
    """
    layers = {googlenet.caffe_layer_name(layer.name): layer for layer in backbone.layers if layer.weights}
    matched, ignored, unexpected = _match_caffe_names(source, layers)
    missing = [name for name in layers if name not in matched]
    if missing and not allow_missing:
        unexpected_text = f" Entries that match no layer: {', '.join(unexpected)}." if unexpected else ""
        raise PretrainedWeightsError(
            f"{source.path} lacks {len(missing)} of the {len(layers)} GoogLeNet layers: {', '.join(missing)}."
            f"{unexpected_text} Layer names must be Caffe names written with '/', '_' or '.', "
            f"and allow_missing=True imports the layers present"
        )

    errors = []
    values = {}
    for caffe_name, file_name in matched.items():
        layer = layers[caffe_name]
        kernel, expected = _source_kernel(source, file_name, tuple(layer.kernel.shape))
        bias = source.biases.get(file_name)
        if kernel.shape != expected:
            errors.append(
                f"{caffe_name}: kernel shape {kernel.shape} in the file, {expected} in the model ({source.layout})"
            )
        elif bias is None:
            errors.append(f"{caffe_name}: no bias in the file")
        elif bias.shape != tuple(layer.bias.shape):
            errors.append(f"{caffe_name}: bias shape {bias.shape} in the file, {tuple(layer.bias.shape)} in the model")
        else:
            values[caffe_name] = (_to_hwio(kernel, source.layout), bias)
    if errors:
        raise PretrainedWeightsError(f"{source.path} does not fit GoogLeNet: {'; '.join(errors)}")

    previous = {name: (layers[name].kernel.numpy(), layers[name].bias.numpy()) for name in values}
    _assign_convolutions(layers, values)
    try:
        conv1_max_error = verify_conv1(backbone, source) if CONV1 in values else None
    except PretrainedWeightsError:
        _assign_convolutions(layers, previous)
        raise
    return ImportReport(
        source=source.path,
        loaded=[layers[name].name for name in values],
        missing=[layers[name].name for name in missing],
        unexpected=unexpected,
        ignored=ignored,
        conv1_max_error=conv1_max_error,
    )


def _assign_convolutions(layers, values):
    for caffe_name, (kernel, bias) in values.items():
        layer = layers[caffe_name]
        layer.kernel.assign(kernel.astype(layer.kernel.dtype))
        layer.bias.assign(bias.astype(layer.bias.dtype))


def verify_conv1(backbone, source_weights):
    """Check GoogLeNet's conv1 output on a random image against NumPy in the source's layout.

    The reference follows Caffe: the RGB image becomes a BGR, mean-subtracted blob in
    CHW order, padded by 3 and convolved with stride 2 by the kernel exactly as stored in
    the file (OIHW or HWIO), then ReLU. A wrong transpose or channel order in the import
    therefore fails this check.

    Returns:
        The largest absolute difference between the backbone and the reference.

    Raises:
        PretrainedWeightsError: if the difference exceeds 1e-4 of the output scale, or if
            the check cannot tell (no positive conv1 output after ReLU).
    """
    matched, _, _ = _match_caffe_names(source_weights, [CONV1])
    if CONV1 not in matched:
        raise PretrainedWeightsError(f"{source_weights.path} has no {CONV1} layer to check")
    name = matched[CONV1]
    conv = backbone.get_layer(googlenet.keras_layer_name(CONV1))
    kernel, _ = _source_kernel(source_weights, name, tuple(conv.kernel.shape))
    kernel = kernel.astype(np.float64)
    bias = source_weights.biases[name].astype(np.float64)

    size = backbone.input.shape[1] or CONV1_CHECK_SIZE
    images = np.random.default_rng(0).uniform(0.0, 255.0, size=(1, size, size, 3)).astype(np.float32)
    conv1_model = keras.Model(backbone.input, conv.output)
    got = keras.ops.convert_to_numpy(conv1_model(images, training=False))[0].astype(np.float64)

    blob = (images[0, :, :, ::-1].astype(np.float64) - np.asarray(googlenet.CAFFE_MEAN_BGR)).transpose(2, 0, 1)
    blob = np.pad(blob, ((0, 0), (CONV1_PAD, CONV1_PAD), (CONV1_PAD, CONV1_PAD)))
    windows = np.lib.stride_tricks.sliding_window_view(blob, (CONV1_KERNEL, CONV1_KERNEL), axis=(1, 2))
    windows = windows[:, ::CONV1_STRIDE, ::CONV1_STRIDE]  # [C, H', W', kh, kw]
    if source_weights.layout == "OIHW":
        response = np.einsum("cyxij,ocij->yxo", windows, kernel)
    else:
        response = np.einsum("cyxij,ijco->yxo", windows, kernel)
    want = np.maximum(response + bias, 0.0)

    if got.shape != want.shape:
        raise PretrainedWeightsError(f"conv1 check: the backbone gives shape {got.shape}, the reference {want.shape}")
    if not np.any(want > 0):
        raise PretrainedWeightsError(f"conv1 check is inconclusive: every conv1 output of {source_weights.path} is 0")
    max_error = float(np.max(np.abs(got - want)))
    tolerance = 1e-4 * max(1.0, float(np.max(np.abs(want))))
    if max_error > tolerance:
        raise PretrainedWeightsError(
            f"conv1 check failed for {source_weights.path}: the backbone differs from the reference convolution "
            f"by up to {max_error:.4g} (tolerance {tolerance:.4g}), so the kernel layout or channel order is wrong"
        )
    return max_error


# === Keras files, checkpoints and ImageNet weights ===


def keras_cache_dirs():
    """Return the folders where Keras may cache application weights, in the order Keras tries them.

    Keras 3 uses `$KERAS_HOME/models` (default `~/.keras/models`) and falls back to
    `/tmp/.keras/models` when that folder is not writable.
    """
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    folders = [os.path.join(home, "models")]
    fallback = os.path.join("/tmp", ".keras", "models")
    if fallback not in folders:
        folders.append(fallback)
    return folders


def find_imagenet_weights(backbone_name, image_size=None, cache_dirs=None):
    """Return the path of the cached Keras ImageNet file of `backbone_name`, or None."""
    file_name = applications.imagenet_weights_file(backbone_name, image_size)
    for folder in cache_dirs or keras_cache_dirs():
        path = os.path.join(folder, file_name)
        if os.path.isfile(path):
            return path
    return None


def _is_checkpoint(path):
    return os.path.isdir(path) or os.path.exists(path + ".index") or path.endswith(".index")


def validate_source(path, backbone_name, image_size=None, download=False, cache_dirs=None):
    """Raise PretrainedWeightsError unless `path` names an importable source for the backbone.

    Checks only what needs no reading of the weights: that the file exists, fits the
    backbone, and for `imagenet` that the Keras cache has the file or `download` is set.
    """
    if path == IMAGENET:
        if backbone_name not in applications.APPLICATIONS:
            raise PretrainedWeightsError(
                f"Keras has no ImageNet weights for {backbone_name}: {_GOOGLENET_WEIGHTS_HELP}"
            )
        if download or find_imagenet_weights(backbone_name, image_size, cache_dirs):
            return
        folders = cache_dirs or keras_cache_dirs()
        raise PretrainedWeightsError(
            f"the Keras cache has no ImageNet weights for {backbone_name}: place "
            f"{applications.imagenet_weights_file(backbone_name, image_size)} in {folders[0]}, "
            f"or allow the download (--download, or download=True)"
        )
    if path.endswith(CAFFE_SUFFIXES) or path.endswith((".h5", ".hdf5")):
        if not os.path.isfile(path):
            raise PretrainedWeightsError(f"{path} does not exist")
    elif not _is_checkpoint(path):
        raise PretrainedWeightsError(
            f"{path} does not exist or is not a weight source: expected a .npy, .mat, .weights.h5 or .h5 file, "
            f"a training run directory, a checkpoint prefix, or 'imagenet'"
        )
    if path.endswith(CAFFE_SUFFIXES) and backbone_name != "googlenet":
        raise PretrainedWeightsError(f"{path} contains Caffe GoogLeNet weights, which fit only the googlenet backbone")
    legacy_h5 = path.endswith((".h5", ".hdf5")) and not path.endswith(".weights.h5")
    if legacy_h5 and backbone_name not in applications.APPLICATIONS:
        raise PretrainedWeightsError(
            f"{path} is read as a Keras Applications weight file, which does not fit {backbone_name}: "
            f"use a .weights.h5 file saved by this project instead"
        )


def _build_like(backbone, backbone_name):
    """Build a second backbone of the same kind to load a Keras file or checkpoint into."""
    return build_backbone(backbone_name, backbone.input.shape[1])


def _load_keras_file(backbone, backbone_name, path):
    if path.endswith(".weights.h5"):
        with h5py.File(path, "r") as stream:
            if "backbone" in stream and "layers" not in stream:
                raise PretrainedWeightsError(
                    f"{path} contains the weights of a whole HDML model: pass its training run directory, or a file "
                    f"written by model.backbone.save_weights"
                )
    source_model = _build_like(backbone, backbone_name)
    try:
        source_model.load_weights(path)
    except (ValueError, OSError, KeyError) as error:
        # Keras lists every layer that failed, so only its first lines (the count and an example) are kept.
        summary = " ".join(line.strip() for line in str(error).splitlines()[:3] if line.strip())
        raise PretrainedWeightsError(f"{path} does not hold {backbone_name} weights: {summary}") from error
    return source_model


def _restore_checkpoint(backbone, backbone_name, path):
    if os.path.isdir(path):
        prefix = tf.train.latest_checkpoint(path)
        if prefix is None:
            raise PretrainedWeightsError(f"{path} contains no checkpoint: expected a run directory of hdml_tf.train")
    else:
        prefix = path[: -len(".index")] if path.endswith(".index") else path
    run_dir = os.path.dirname(prefix)
    if os.path.isfile(os.path.join(run_dir, runs.RUN_CONFIG)):
        run_backbone = runs.read_run_config(run_dir).get("backbone")
        if run_backbone != backbone_name:
            raise PretrainedWeightsError(
                f"{prefix} is a checkpoint of a {run_backbone} run, not {backbone_name}: "
                f"use --backbone={run_backbone} or another run"
            )

    source_model = _build_like(backbone, backbone_name)
    # The same object path as runs.make_checkpoint writes: model -> backbone.
    checkpoint = tf.train.Checkpoint(model=tf.train.Checkpoint(backbone=source_model))
    try:
        status = checkpoint.restore(prefix)
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise PretrainedWeightsError(f"{prefix} contains no complete {backbone_name} backbone: {error}") from error
    status.expect_partial()
    return source_model, prefix


def _copy_weights(source_model, target, source):
    """Copy weights between two builds of one architecture, pairing layers with weights in order.

    Returns:
        The names of the target layers that received weights.
    """
    source_layers = [layer for layer in source_model.layers if layer.weights]
    target_layers = [layer for layer in target.layers if layer.weights]
    if len(source_layers) != len(target_layers):
        raise PretrainedWeightsError(
            f"{source} has {len(source_layers)} layers with weights, "
            f"the {target.name} backbone has {len(target_layers)}"
        )
    errors = []
    for source_layer, target_layer in zip(source_layers, target_layers):
        if type(source_layer) is not type(target_layer):
            errors.append(
                f"{target_layer.name} is a {type(target_layer).__name__} in the model but "
                f"{source_layer.name} a {type(source_layer).__name__} in the source"
            )
            continue
        for source_weight, target_weight in zip(source_layer.weights, target_layer.weights):
            if tuple(source_weight.shape) != tuple(target_weight.shape):
                errors.append(
                    f"{target_layer.name}: {target_weight.name} shape {tuple(source_weight.shape)} in the source, "
                    f"{tuple(target_weight.shape)} in the model"
                )
    if errors:
        raise PretrainedWeightsError(f"{source} does not fit the {target.name} backbone: {'; '.join(errors[:10])}")
    for source_layer, target_layer in zip(source_layers, target_layers):
        target_layer.set_weights(source_layer.get_weights())
    return [layer.name for layer in target_layers]


def _download_imagenet_model(backbone_name, image_size):
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return applications.build_keras_imagenet_model(backbone_name, image_size)
    except Exception as error:  # keras.utils.get_file raises a bare Exception on URL and HTTP errors.
        raise PretrainedWeightsError(
            f"downloading the ImageNet weights of {backbone_name} failed ({error}): place "
            f"{applications.imagenet_weights_file(backbone_name, image_size)} in {keras_cache_dirs()[0]} by hand"
        ) from error
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _import_keras_imagenet(backbone, backbone_name, path, download, cache_dirs):
    """Import Keras Applications ImageNet weights from `path`, the Keras cache or a download."""
    image_size = backbone.input.shape[1]
    if path == IMAGENET:
        path = find_imagenet_weights(backbone_name, image_size, cache_dirs)
    if path is not None:
        source_model = _load_keras_file(backbone, backbone_name, path)
        source = path
    else:
        logging.info("Downloading the ImageNet weights of %s with Keras", backbone_name)
        source_model = _download_imagenet_model(backbone_name, image_size)
        source = f"Keras' ImageNet weights of {backbone_name}"
    try:
        applications.check_imagenet_normalization(backbone_name, source_model)
    except ValueError as error:
        raise PretrainedWeightsError(f"{source}: {error}") from error
    return ImportReport(source=source, loaded=_copy_weights(source_model, backbone, source))


def load_pretrained(backbone, backbone_name, path, download=False, allow_missing=False, cache_dirs=None):
    """Import pretrained weights from `path` into `backbone` and log what was imported.

    Args:
        backbone: the backbone model, built by `build_backbone(backbone_name, ...)`.
        backbone_name: its key in `hdml_tf.backbones.BACKBONES`.
        path: a weight file, a training run directory, a checkpoint prefix, or `imagenet`
            (see the table in this module's docstring).
        download: for `imagenet`, let Keras download the file when the cache lacks it.
            Without it no network access is attempted.
        allow_missing: Caffe sources only: keep the initial weights of layers that the
            file lacks instead of failing.
        cache_dirs: folders to search for Keras ImageNet files instead of
            `keras_cache_dirs()`.

    Returns:
        An ImportReport.

    Raises:
        PretrainedWeightsError: for any source that cannot be imported. The backbone is
            then unchanged.
    """
    validate_source(path, backbone_name, backbone.input.shape[1], download=download, cache_dirs=cache_dirs)
    legacy_h5 = path.endswith((".h5", ".hdf5")) and not path.endswith(".weights.h5")
    if path.endswith(CAFFE_SUFFIXES):
        report = import_caffe_weights(backbone, read_caffe_weights(path), allow_missing=allow_missing)
    elif path == IMAGENET or legacy_h5:
        report = _import_keras_imagenet(backbone, backbone_name, path, download, cache_dirs)
    elif path.endswith(".weights.h5"):
        source_model = _load_keras_file(backbone, backbone_name, path)
        report = ImportReport(source=path, loaded=_copy_weights(source_model, backbone, path))
    else:
        source_model, prefix = _restore_checkpoint(backbone, backbone_name, path)
        report = ImportReport(source=prefix, loaded=_copy_weights(source_model, backbone, prefix))
    # EfficientNetB0 only: its internal Normalization stays at mean 0 and variance 1
    # (ApplicationPreprocess standardises instead), whatever the source held.
    applications.pin_internal_normalization(backbone)
    _log_report(report, backbone_name)
    return report


def _log_report(report, backbone_name):
    logging.info("Imported %d layers of %s from %s", len(report.loaded), backbone_name, report.source)
    if report.conv1_max_error is not None:
        logging.info("conv1 matches the reference convolution (max difference %.3g)", report.conv1_max_error)
    if report.ignored:
        logging.info("Skipped the source's classifier layers: %s", ", ".join(report.ignored))
    if report.unexpected:
        logging.warning("Entries of %s that match no backbone layer: %s", report.source, ", ".join(report.unexpected))
    if report.missing:
        logging.warning("Layers not in %s keep their initial weights: %s", report.source, ", ".join(report.missing))
