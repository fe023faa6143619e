"""Weight import: Caffe GoogLeNet files, Keras files, training checkpoints and ImageNet weights.

Every weight file here is synthesised with random values from the real layer names and
shapes, and no test touches the network: Keras downloads are replaced by local files.
"""

import json
import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from keras.src.legacy.saving import legacy_h5_format
from keras.src.utils import file_utils

from hdml_tf import runs
from hdml_tf.backbones import applications, build_backbone, googlenet, pretrained
from hdml_tf.model import HDMLConfig, HDMLModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The classifier layers of bvlc_googlenet with their Caffe shapes (OIHW, or (out, in) for
# InnerProduct); the importer must skip them.
CAFFE_CLASSIFIERS = {
    "loss1/conv": (128, 512, 1, 1),
    "loss1/fc": (1024, 2048),
    "loss1/classifier": (1000, 1024),
    "loss2/conv": (128, 528, 1, 1),
    "loss2/fc": (1024, 2048),
    "loss2/classifier": (1000, 1024),
    "loss3/classifier": (1000, 1024),
}


def random_googlenet_weights(seed=0):
    """Return {caffe name: (HWIO kernel, bias)} for every GoogLeNet convolution."""
    rng = np.random.default_rng(seed)
    weights = {}
    for layer in googlenet.build_googlenet().layers:
        if layer.weights:
            kernel = rng.normal(0.0, 0.05, size=layer.kernel.shape).astype(np.float32)
            bias = rng.normal(0.0, 0.1, size=layer.bias.shape).astype(np.float32)
            weights[googlenet.caffe_layer_name(layer.name)] = (kernel, bias)
    return weights


def source_name(caffe_name, separator):
    return caffe_name.replace("/", separator)


def write_converter_npy(path, weights, separator="_"):
    """Write the dictionary of a Caffe-to-TensorFlow converter: HWIO kernels, (in, out) fc weights."""
    data = {}
    for name, (kernel, bias) in weights.items():
        data[source_name(name, separator)] = {"weights": kernel, "biases": bias}
    for name, shape in CAFFE_CLASSIFIERS.items():
        layout_shape = (shape[2], shape[3], shape[1], shape[0]) if len(shape) == 4 else shape[::-1]
        data[source_name(name, separator)] = {"weights": np.zeros(layout_shape, np.float32),
                                              "biases": np.zeros(shape[0], np.float32)}
    np.save(path, data, allow_pickle=True)
    return str(path)


def write_authors_mat(path, weights, separator="/", squeeze_1x1=False):
    """Write the authors' MATLAB layout: OIHW kernels under the layer name, biases under `<name>_bias`."""
    data = {}
    for name, (kernel, bias) in weights.items():
        oihw = kernel.transpose(3, 2, 0, 1)
        if squeeze_1x1 and oihw.shape[2:] == (1, 1):
            oihw = oihw[:, :, 0, 0]
        data[source_name(name, separator)] = oihw
        data[source_name(name, separator) + "_bias"] = bias[np.newaxis, :]
    for name, shape in CAFFE_CLASSIFIERS.items():
        data[source_name(name, separator)] = np.zeros(shape, np.float32)
        data[source_name(name, separator) + "_bias"] = np.zeros((1, shape[0]), np.float32)
    scipy.io.savemat(path, data)
    return str(path)


def assert_googlenet_weights(backbone, weights):
    for name, (kernel, bias) in weights.items():
        layer = backbone.get_layer(googlenet.keras_layer_name(name))
        np.testing.assert_array_equal(layer.kernel.numpy(), kernel, err_msg=name)
        np.testing.assert_array_equal(layer.bias.numpy(), bias, err_msg=name)


def assert_same_weights(model_a, model_b):
    weights_a = model_a.get_weights()
    weights_b = model_b.get_weights()
    assert len(weights_a) == len(weights_b)
    for index, (a, b) in enumerate(zip(weights_a, weights_b)):
        np.testing.assert_array_equal(a, b, err_msg=f"weight {index}")


def write_legacy_h5(path, model):
    """Write `model`'s weights in the legacy Keras .h5 layout of the Keras Applications files."""
    with h5py.File(path, "w") as stream:
        legacy_h5_format.save_weights_to_hdf5_group(stream, model)
    return str(path)


@pytest.fixture(scope="module")
def caffe_weights():
    return random_googlenet_weights()


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a test tried to download ImageNet weights")

    monkeypatch.setattr(applications, "build_keras_imagenet_model", fail)


# === Caffe GoogLeNet files ===


@pytest.mark.parametrize(
    "file_format, separator",
    [("npy", "_"), ("npy", "/"), ("mat", "/"), ("mat", "_")],
)
def test_caffe_import_sets_every_layer(tmp_path, caffe_weights, file_format, separator):
    if file_format == "npy":
        path = write_converter_npy(tmp_path / "googlenet.npy", caffe_weights, separator)
    else:
        path = write_authors_mat(tmp_path / "googlenet.mat", caffe_weights, separator)
    backbone = googlenet.build_googlenet()

    report = pretrained.load_pretrained(backbone, "googlenet", path)

    assert_googlenet_weights(backbone, caffe_weights)
    assert len(report.loaded) == 57
    assert report.missing == []
    assert report.unexpected == []
    assert sorted(report.ignored) == sorted(source_name(name, separator) for name in CAFFE_CLASSIFIERS)
    assert report.conv1_max_error < 1e-3


def test_mat_with_squeezed_1x1_kernels(tmp_path, caffe_weights):
    path = write_authors_mat(tmp_path / "googlenet.mat", caffe_weights, squeeze_1x1=True)
    assert scipy.io.loadmat(path)["inception_3a/1x1"].shape == (64, 192)
    backbone = googlenet.build_googlenet()
    pretrained.load_pretrained(backbone, "googlenet", path)
    assert_googlenet_weights(backbone, caffe_weights)


def test_features_match_after_npy_and_mat_import(tmp_path, caffe_weights):
    from_npy = googlenet.build_googlenet()
    from_mat = googlenet.build_googlenet()
    pretrained.load_pretrained(from_npy, "googlenet", write_converter_npy(tmp_path / "g.npy", caffe_weights))
    pretrained.load_pretrained(from_mat, "googlenet", write_authors_mat(tmp_path / "g.mat", caffe_weights))
    images = np.random.default_rng(3).uniform(0, 255, size=(2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(from_npy(images).numpy(), from_mat(images).numpy(), rtol=1e-5, atol=1e-6)


def test_shape_mismatch_names_layer_and_shapes(tmp_path, caffe_weights):
    weights = dict(caffe_weights)
    kernel, bias = weights["inception_4a/3x3"]
    weights["inception_4a/3x3"] = (kernel[:, :, :90, :], bias)
    path = write_authors_mat(tmp_path / "googlenet.mat", weights)
    backbone = googlenet.build_googlenet()
    before = backbone.get_weights()

    with pytest.raises(pretrained.PretrainedWeightsError) as error:
        pretrained.load_pretrained(backbone, "googlenet", path)

    message = str(error.value)
    assert "inception_4a/3x3" in message
    assert "(208, 90, 3, 3)" in message
    assert "(208, 96, 3, 3)" in message
    for old, new in zip(before, backbone.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_bias_shape_mismatch(tmp_path, caffe_weights):
    weights = dict(caffe_weights)
    kernel, bias = weights["conv2/3x3"]
    weights["conv2/3x3"] = (kernel, bias[:100])
    path = write_converter_npy(tmp_path / "googlenet.npy", weights)
    with pytest.raises(pretrained.PretrainedWeightsError, match=r"conv2/3x3: bias shape \(100,\).*\(192,\)"):
        pretrained.load_pretrained(googlenet.build_googlenet(), "googlenet", path)


def test_missing_and_unexpected_layers_are_listed(tmp_path, caffe_weights):
    weights = {name: value for name, value in caffe_weights.items() if name not in ("inception_5b/1x1", "conv2/3x3")}
    weights["inception_6a/1x1"] = caffe_weights["inception_5b/1x1"]
    path = write_converter_npy(tmp_path / "googlenet.npy", weights)

    with pytest.raises(pretrained.PretrainedWeightsError) as error:
        pretrained.load_pretrained(googlenet.build_googlenet(), "googlenet", path)
    message = str(error.value)
    assert "lacks 2 of the 57" in message
    assert "inception_5b/1x1" in message
    assert "conv2/3x3" in message
    assert "inception_6a_1x1" in message

    backbone = googlenet.build_googlenet()
    initial_kernel = backbone.get_layer("conv2.3x3").kernel.numpy()
    report = pretrained.load_pretrained(backbone, "googlenet", path, allow_missing=True)
    assert sorted(report.missing) == ["conv2.3x3", "inception_5b.1x1"]
    assert report.unexpected == ["inception_6a_1x1"]
    assert len(report.loaded) == 55
    np.testing.assert_array_equal(backbone.get_layer("conv2.3x3").kernel.numpy(), initial_kernel)
    np.testing.assert_array_equal(backbone.get_layer("inception_4a.3x3").kernel.numpy(),
                                  caffe_weights["inception_4a/3x3"][0])


def test_missing_bias_is_an_error(tmp_path, caffe_weights):
    path = write_authors_mat(tmp_path / "googlenet.mat", caffe_weights)
    data = scipy.io.loadmat(path)
    del data["inception_3b/pool_proj_bias"]
    scipy.io.savemat(path, {key: value for key, value in data.items() if not key.startswith("__")})
    with pytest.raises(pretrained.PretrainedWeightsError, match="inception_3b/pool_proj: no bias"):
        pretrained.load_pretrained(googlenet.build_googlenet(), "googlenet", path)


def test_npy_that_is_not_a_dictionary(tmp_path):
    path = str(tmp_path / "array.npy")
    np.save(path, np.zeros((3, 3)))
    with pytest.raises(pretrained.PretrainedWeightsError, match="expected a pickled dictionary"):
        pretrained.load_pretrained(googlenet.build_googlenet(), "googlenet", path)


def test_caffe_file_rejected_for_other_backbones(tmp_path, caffe_weights):
    path = write_converter_npy(tmp_path / "googlenet.npy", caffe_weights)
    with pytest.raises(pretrained.PretrainedWeightsError, match="fit only the googlenet backbone"):
        pretrained.validate_source(path, "resnet50")


@pytest.mark.parametrize("source", ["npy", "checkpoint"])
def test_import_inside_mirrored_strategy(tmp_path, caffe_weights, source):
    """The trainer imports inside its strategy scope: every replica must get the weights."""
    if source == "npy":
        path = write_converter_npy(tmp_path / "googlenet.npy", caffe_weights)
    else:
        trained, path = save_training_run(str(tmp_path / "run"), "googlenet", 64)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = HDMLModel(googlenet.build_googlenet(image_size=64), HDMLConfig(num_classes=3, embedding_size=8))
        pretrained.load_pretrained(model.backbone, "googlenet", path)
    kernel = model.backbone.get_layer("inception_4a.3x3").kernel.value
    replicas = strategy.experimental_local_results(kernel)
    assert len(replicas) == 2
    if source == "npy":
        expected = caffe_weights["inception_4a/3x3"][0]
    else:
        expected = trained.backbone.get_layer("inception_4a.3x3").kernel.numpy()
    for replica in replicas:
        np.testing.assert_array_equal(replica.numpy(), expected)


# === conv1 check ===


def conv1_source(caffe_weights, layout, kernel=None):
    """Return CaffeWeights with only conv1, its kernel given in HWIO and stored in `layout`."""
    hwio, bias = caffe_weights["conv1/7x7_s2"]
    hwio = hwio if kernel is None else kernel
    stored = hwio if layout == "HWIO" else hwio.transpose(3, 2, 0, 1)
    return pretrained.CaffeWeights("conv1 test", layout, {"conv1/7x7_s2": stored}, {"conv1/7x7_s2": bias})


@pytest.fixture(scope="module")
def imported_googlenet(tmp_path_factory, caffe_weights):
    backbone = googlenet.build_googlenet(image_size=64)
    path = write_converter_npy(tmp_path_factory.mktemp("conv1") / "googlenet.npy", caffe_weights)
    pretrained.load_pretrained(backbone, "googlenet", path)
    return backbone


@pytest.mark.parametrize("layout", ["HWIO", "OIHW"])
def test_verify_conv1_passes_for_correct_import(imported_googlenet, caffe_weights, layout):
    assert pretrained.verify_conv1(imported_googlenet, conv1_source(caffe_weights, layout)) < 1e-3


@pytest.mark.parametrize(
    "description, corrupt",
    [
        ("height and width swapped", lambda k: k.transpose(1, 0, 2, 3)),
        ("BGR read as RGB", lambda k: k[:, :, ::-1, :]),
        ("kernel rotated by 180 degrees", lambda k: k[::-1, ::-1]),
    ],
)
@pytest.mark.parametrize("layout", ["HWIO", "OIHW"])
def test_verify_conv1_catches_wrong_layout(imported_googlenet, caffe_weights, layout, description, corrupt):
    source = conv1_source(caffe_weights, layout, kernel=corrupt(caffe_weights["conv1/7x7_s2"][0]))
    with pytest.raises(pretrained.PretrainedWeightsError, match="conv1 check failed"):
        pretrained.verify_conv1(imported_googlenet, source)


def test_import_with_wrong_transpose_fails_and_changes_nothing(tmp_path, monkeypatch, caffe_weights):
    """A kernel transpose bug in the importer is caught by the conv1 check, which undoes the import."""
    path = write_authors_mat(tmp_path / "googlenet.mat", caffe_weights)
    monkeypatch.setattr(pretrained, "_to_hwio", lambda kernel, layout: np.transpose(kernel, (3, 2, 1, 0)))
    backbone = googlenet.build_googlenet(image_size=64)
    before = backbone.get_weights()

    with pytest.raises(pretrained.PretrainedWeightsError, match="conv1 check failed"):
        pretrained.load_pretrained(backbone, "googlenet", path)

    for old, new in zip(before, backbone.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_caffe_preprocess_needs_no_channel_flip():
    """A kernel that reads only Caffe's blue channel responds only to the image's blue channel."""
    backbone = googlenet.build_googlenet(image_size=64)
    kernel = np.zeros((7, 7, 3, 64), np.float32)
    kernel[3, 3, 0, 0] = 1.0  # input channel 0 of a Caffe kernel is blue
    conv = backbone.get_layer("conv1.7x7_s2")
    conv.kernel.assign(kernel)
    conv.bias.assign(np.full(64, 200.0, np.float32))
    conv1 = keras.Model(backbone.input, conv.output)
    blue = np.zeros((1, 64, 64, 3), np.float32)
    blue[..., 2] = 255.0
    red = np.zeros((1, 64, 64, 3), np.float32)
    red[..., 0] = 255.0
    # Centre pixels: output = bias + (value - Caffe mean of blue, 104).
    assert conv1(blue).numpy()[0, 16, 16, 0] == pytest.approx(200.0 + 255.0 - 104.0)
    assert conv1(red).numpy()[0, 16, 16, 0] == pytest.approx(200.0 - 104.0)


# === Keras files and checkpoints of this project ===


def test_weights_h5_round_trip(tmp_path):
    source = googlenet.build_googlenet()
    path = str(tmp_path / "googlenet.weights.h5")
    source.save_weights(path)
    backbone = googlenet.build_googlenet(image_size=64)
    report = pretrained.load_pretrained(backbone, "googlenet", path)
    assert len(report.loaded) == 57
    assert_same_weights(source, backbone)


def test_weights_h5_of_application_round_trip(tmp_path):
    source = build_backbone("mobilenet_v2", 32)
    path = str(tmp_path / "mobilenet.weights.h5")
    source.save_weights(path)
    backbone = build_backbone("mobilenet_v2", 32)
    pretrained.load_pretrained(backbone, "mobilenet_v2", path)
    assert_same_weights(source, backbone)


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_weights_h5_of_other_backbone(tmp_path):
    path = str(tmp_path / "mobilenet.weights.h5")
    build_backbone("mobilenet_v2", 32).save_weights(path)
    with pytest.raises(pretrained.PretrainedWeightsError, match="does not hold googlenet weights"):
        pretrained.load_pretrained(googlenet.build_googlenet(), "googlenet", path)


def test_whole_model_weights_h5_is_rejected(tmp_path):
    model = HDMLModel(googlenet.build_googlenet(), HDMLConfig(num_classes=3, embedding_size=8))
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    with pytest.raises(pretrained.PretrainedWeightsError, match="whole HDML model"):
        pretrained.load_pretrained(googlenet.build_googlenet(), "googlenet", path)


def save_training_run(run_dir, backbone_name, image_size):
    config = HDMLConfig(num_classes=3, embedding_size=8)
    model = HDMLModel(build_backbone(backbone_name, image_size), config)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, runs.RUN_CONFIG), "w") as stream:
        json.dump(runs.make_run_config(config, backbone_name, image_size, "fashion_mnist"), stream)
    prefix = tf.train.CheckpointManager(runs.make_checkpoint(model), run_dir, max_to_keep=1).save()
    return model, prefix


@pytest.mark.parametrize("form", ["run directory", "checkpoint prefix", "index file"])
def test_training_run_checkpoint(tmp_path, form):
    model, prefix = save_training_run(str(tmp_path / "run"), "googlenet", 64)
    path = {"run directory": str(tmp_path / "run"), "checkpoint prefix": prefix, "index file": prefix + ".index"}[form]
    pretrained.validate_source(path, "googlenet")
    backbone = googlenet.build_googlenet(image_size=96)
    report = pretrained.load_pretrained(backbone, "googlenet", path)
    assert report.source == prefix
    assert_same_weights(model.backbone, backbone)


def test_checkpoint_of_other_backbone(tmp_path):
    save_training_run(str(tmp_path / "run"), "mobilenet_v2", 32)
    with pytest.raises(pretrained.PretrainedWeightsError, match="mobilenet_v2 run, not googlenet"):
        pretrained.load_pretrained(googlenet.build_googlenet(), "googlenet", str(tmp_path / "run"))


def test_folder_without_checkpoint(tmp_path):
    with pytest.raises(pretrained.PretrainedWeightsError, match="contains no checkpoint"):
        pretrained.load_pretrained(googlenet.build_googlenet(), "googlenet", str(tmp_path))


@pytest.mark.parametrize("path", ["/nonexistent/googlenet.npy", "/nonexistent/run", "weights.pkl"])
def test_unknown_or_missing_source(path):
    with pytest.raises(pretrained.PretrainedWeightsError, match="does not exist"):
        pretrained.validate_source(path, "googlenet")


# === ImageNet weights of Keras Applications ===


def test_imagenet_for_googlenet_says_where_to_get_weights():
    with pytest.raises(pretrained.PretrainedWeightsError) as error:
        pretrained.validate_source("imagenet", "googlenet")
    assert "bvlc_googlenet.caffemodel" in str(error.value)
    assert "tf_ckpt_from_caffe.mat" in str(error.value)


def test_imagenet_without_cache_names_the_file(tmp_path):
    cache = str(tmp_path / "models")
    backbone = build_backbone("resnet50", 32)
    with pytest.raises(pretrained.PretrainedWeightsError) as error:
        pretrained.load_pretrained(backbone, "resnet50", "imagenet", cache_dirs=[cache])
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in str(error.value)
    assert cache in str(error.value)
    assert "--download" in str(error.value)


def test_imagenet_from_keras_cache(tmp_path):
    keras_model = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3),
                                                 pooling="avg")
    cache = tmp_path / "models"
    cache.mkdir()
    # 32 px has no weights of its own, so Keras would use the 224 px file.
    write_legacy_h5(cache / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", keras_model)
    backbone = build_backbone("mobilenet_v2", 32)

    report = pretrained.load_pretrained(backbone, "mobilenet_v2", "imagenet", cache_dirs=[str(cache)])

    assert report.source.endswith("_1.0_224_no_top.h5")
    assert_same_weights(keras_model, backbone)
    images = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype(np.float32)
    expected = keras_model(keras.applications.mobilenet_v2.preprocess_input(images.copy())).numpy()
    np.testing.assert_allclose(backbone(images).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_keras_h5_file_given_as_path(tmp_path):
    keras_model = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    path = write_legacy_h5(tmp_path / "resnet50_notop.h5", keras_model)
    backbone = build_backbone("resnet50", 32)
    pretrained.load_pretrained(backbone, "resnet50", path)
    assert_same_weights(keras_model, backbone)


def efficientnet_imagenet_file(path):
    """Write an EfficientNetB0 no-top file whose Normalization contains Keras' ImageNet values."""
    model = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    normalization = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    count = normalization.get_weights()[2]
    normalization.set_weights([
        np.asarray(applications.EFFICIENTNET_MEAN_RGB, np.float32),
        np.asarray(applications.EFFICIENTNET_STDDEV_RGB, np.float32),
        count,
    ])
    return write_legacy_h5(path, model)


@pytest.mark.parametrize("route", ["cache", "download"])
def test_efficientnet_imagenet_matches_keras_model(tmp_path, monkeypatch, route):
    """Our EfficientNetB0 with imported weights computes what Keras' ImageNet model computes."""
    cache = tmp_path / "models"
    cache.mkdir()
    path = efficientnet_imagenet_file(cache / "efficientnetb0_notop.h5")
    # Keras' own ImageNet model, reading the local file instead of downloading.
    monkeypatch.setattr(file_utils, "get_file", lambda *args, **kwargs: path)
    keras_model = keras.applications.EfficientNetB0(include_top=False, weights="imagenet", input_shape=(32, 32, 3),
                                                    pooling="avg")
    if route == "download":
        monkeypatch.setattr(applications, "build_keras_imagenet_model", lambda name, size: keras_model)
        cache_dirs = [str(tmp_path / "empty")]
    else:
        cache_dirs = [str(cache)]
    backbone = build_backbone("efficientnet_b0", 32)

    pretrained.load_pretrained(backbone, "efficientnet_b0", "imagenet", download=route == "download",
                               cache_dirs=cache_dirs)

    images = np.random.default_rng(1).uniform(0, 255, size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(backbone(images).numpy(), keras_model(images).numpy(), rtol=1e-4, atol=1e-5)
    normalization = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.Normalization))
    np.testing.assert_array_equal(normalization.get_weights()[0], 0.0)
    np.testing.assert_array_equal(normalization.get_weights()[1], 1.0)


def test_efficientnet_with_other_normalization_is_rejected(tmp_path):
    model = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    path = write_legacy_h5(tmp_path / "efficientnetb0_notop.h5", model)  # mean 0, variance 1
    with pytest.raises(pretrained.PretrainedWeightsError, match="expected Keras' ImageNet values"):
        pretrained.load_pretrained(build_backbone("efficientnet_b0", 32), "efficientnet_b0", path)


def test_download_failure_names_the_file(monkeypatch, tmp_path):
    def offline(name, size):
        raise Exception("URL fetch failure: no network")  # what keras.utils.get_file raises

    monkeypatch.setattr(applications, "build_keras_imagenet_model", offline)
    backbone = build_backbone("resnet50", 32)
    with pytest.raises(pretrained.PretrainedWeightsError) as error:
        pretrained.load_pretrained(backbone, "resnet50", "imagenet", download=True, cache_dirs=[str(tmp_path)])
    assert "no network" in str(error.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in str(error.value)


# === Command line ===


def run_train(*args, home):
    return subprocess.run(
        [sys.executable, "-m", "hdml_tf.train", "--max_steps=1", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "HOME": str(home), "KERAS_HOME": str(home / ".keras")},
    )


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--backbone=googlenet", "--pretrained=imagenet"], ["--pretrained=imagenet", "bvlc_googlenet.caffemodel"]),
        (["--backbone=resnet50", "--pretrained=imagenet"],
         ["--pretrained=imagenet", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "--download"]),
        (["--pretrained=/nonexistent/googlenet.npy"], ["--pretrained=/nonexistent/googlenet.npy does not exist"]),
    ],
)
def test_cli_rejects_unusable_pretrained(tmp_path, flags, fragments):
    if os.path.exists("/tmp/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        pytest.skip("the ResNet50 ImageNet file is in Keras' fallback cache /tmp/.keras/models")
    result = run_train(f"--model_dir={tmp_path / 'run'}", *flags, home=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("hdml_tf.train: error:")]
    assert len(error_lines) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in error_lines[0]
