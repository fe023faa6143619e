"""GoogLeNet layers against NumPy references, layer names and input sizes."""

import numpy as np
import pytest

from hdml_tf.backbones import googlenet


def test_lrn_matches_caffe_formula():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 50, size=(1, 2, 2, 9)).astype(np.float32)
    got = googlenet.LocalResponseNormalization()(x).numpy()
    want = np.empty_like(x)
    for c in range(9):
        window = x[..., max(0, c - 2) : c + 3]
        scale = 1.0 + 1e-4 / 5 * (window**2).sum(axis=-1)
        want[..., c] = x[..., c] / scale**0.75
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("size, expected", [(57, 28), (114, 57), (56, 28), (7, 3), (4, 2)])
def test_caffe_max_pool_ceil_mode(size, expected):
    rng = np.random.default_rng(size)
    x = rng.normal(size=(1, size, size, 2)).astype(np.float32)
    got = googlenet.CaffeMaxPooling2D()(x).numpy()
    assert got.shape == (1, expected, expected, 2)
    for i in range(expected):
        for j in range(expected):
            window = x[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3]
            np.testing.assert_allclose(got[0, i, j], window.max(axis=(0, 1)))


def test_caffe_preprocess_converts_rgb_to_mean_subtracted_bgr():
    image = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)
    got = googlenet.CaffePreprocess()(image).numpy()
    np.testing.assert_allclose(got[0, 0, 0], [30 - 104, 20 - 117, 10 - 123])


def test_layer_names_map_to_caffe_names():
    model = googlenet.build_googlenet()
    caffe_names = {googlenet.caffe_layer_name(layer.name) for layer in model.layers}
    for name in ("conv1/7x7_s2", "conv2/3x3_reduce", "conv2/3x3", "inception_3a/1x1", "inception_3a/3x3_reduce",
                 "inception_4e/5x5", "inception_5b/pool_proj", "pool5/7x7_s1", "pool1/norm1", "conv2/norm2"):
        assert name in caffe_names
    conv = model.get_layer(googlenet.keras_layer_name("inception_4a/3x3"))
    assert conv.kernel.shape == (3, 3, 96, 208)
    assert model.count_params() == 5_973_552  # BVLC GoogLeNet without its three classifiers


@pytest.mark.parametrize("size", [64, 97, 227])
def test_any_input_size_gives_1024_features(size):
    model = googlenet.build_googlenet()
    features = model(np.zeros((1, size, size, 3), np.float32)).numpy()
    assert features.shape == (1, 1024)
    assert np.all(np.isfinite(features))
