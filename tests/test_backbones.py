"""Backbone registry and Keras Applications backbones: preprocessing, shapes and training steps."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from hdml_tf.backbones import BACKBONES, MIN_IMAGE_SIZES, applications, build_backbone
from hdml_tf.model import HDMLConfig, HDMLModel

# Smallest practical size of each backbone, to keep the training-step tests fast.
SMALL_SIZES = {"googlenet": 64, "resnet50": 32, "inception_v3": 75, "mobilenet_v2": 32, "efficientnet_b0": 32}
FEATURE_SIZES = {"googlenet": 1024, "resnet50": 2048, "inception_v3": 2048, "mobilenet_v2": 1280,
                 "efficientnet_b0": 1280}


def random_images(batch, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(batch, size, size, 3)).astype(np.float32)


def test_registry_lists_every_backbone():
    assert sorted(BACKBONES) == sorted(SMALL_SIZES)
    assert sorted(MIN_IMAGE_SIZES) == sorted(SMALL_SIZES)
    assert MIN_IMAGE_SIZES["inception_v3"] == 75


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        build_backbone("vgg16", 64)


@pytest.mark.parametrize("name", sorted(applications.APPLICATIONS))
def test_application_starts_with_preprocessing_and_ends_in_features(name):
    size = SMALL_SIZES[name]
    backbone = build_backbone(name, size)
    assert backbone.name == name
    assert [layer.name for layer in backbone.layers[:2]] == ["images", "preprocess_input"]
    assert tuple(backbone.input.shape) == (None, size, size, 3)
    features = backbone(random_images(2, size)).numpy()
    assert features.shape == (2, FEATURE_SIZES[name])
    assert np.all(np.isfinite(features))


@pytest.mark.parametrize(
    "name, keras_preprocess",
    [
        ("resnet50", keras.applications.resnet50.preprocess_input),
        ("inception_v3", keras.applications.inception_v3.preprocess_input),
        ("mobilenet_v2", keras.applications.mobilenet_v2.preprocess_input),
    ],
)
def test_preprocess_layer_matches_keras_preprocess_input(name, keras_preprocess):
    images = random_images(2, 8)
    got = applications.ApplicationPreprocess(name)(images).numpy()
    np.testing.assert_allclose(got, keras_preprocess(images.copy()), rtol=1e-6, atol=1e-4)


def test_resnet_preprocessing_is_bgr_minus_mean():
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)
    got = applications.ApplicationPreprocess("resnet50")(pixel).numpy()[0, 0, 0]
    np.testing.assert_allclose(got, [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-5)


def test_efficientnet_input_is_imagenet_standardised():
    """After EfficientNet's own Rescaling(1/255) and the pinned Normalization: (x/255 - mean) / std."""
    backbone = build_backbone("efficientnet_b0", 32)
    normalization = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.Normalization))
    stem = keras.Model(backbone.input, normalization.output)
    images = random_images(1, 32)
    expected = (images / 255.0 - np.asarray(applications.EFFICIENTNET_MEAN_RGB)) / np.asarray(
        applications.EFFICIENTNET_STDDEV_RGB
    )
    np.testing.assert_allclose(stem(images).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_any_input_size_when_image_size_is_none():
    backbone = build_backbone("resnet50")
    assert tuple(backbone.input.shape) == (None, None, None, 3)
    assert backbone(random_images(1, 40)).shape == (1, 2048)


def test_too_small_input_is_rejected():
    with pytest.raises(ValueError, match="image_size=64 is too small for inception_v3: it needs at least 75"):
        build_backbone("inception_v3", 64)


def test_application_backbone_survives_serialization():
    backbone = build_backbone("mobilenet_v2", 32)
    restored = keras.models.model_from_json(backbone.to_json())
    restored.set_weights(backbone.get_weights())
    assert restored.layers[1].get_config()["application"] == "mobilenet_v2"
    images = random_images(1, 32)
    np.testing.assert_allclose(restored(images).numpy(), backbone(images).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name, image_size, file_name",
    [
        ("resnet50", 224, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ("inception_v3", 299, "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ("mobilenet_v2", 160, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5"),
        ("mobilenet_v2", 227, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
        ("mobilenet_v2", None, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
        ("efficientnet_b0", 227, "efficientnetb0_notop.h5"),
    ],
)
def test_imagenet_weights_file_names(name, image_size, file_name):
    assert applications.imagenet_weights_file(name, image_size) == file_name


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_two_training_steps_change_backbone_weights(name):
    started = time.perf_counter()
    size = SMALL_SIZES[name]
    keras.utils.set_random_seed(0)
    model = HDMLModel(build_backbone(name, size), HDMLConfig(num_classes=2, embedding_size=8))
    before = [variable.numpy().copy() for variable in model.backbone.trainable_variables]
    images = tf.constant(random_images(4, size))
    labels = tf.constant([0, 1, 0, 1])  # N-pair layout: 2 anchors, then their 2 positives

    for _ in range(2):
        logs = model.train_step((images, labels))
        for key in ("j_metric", "j_m", "j_gen", "j_cls"):
            assert np.isfinite(float(logs[key])), (key, float(logs[key]))
        assert float(logs["finite"]) == 1.0

    after = [variable.numpy() for variable in model.backbone.trainable_variables]
    changed = [not np.array_equal(old, new) for old, new in zip(before, after)]
    assert changed[0], "the first backbone kernel did not change"
    assert sum(changed) > len(changed) // 2
    assert int(model.step_counter.numpy()) == 2
    print(f"{name}: two steps in {time.perf_counter() - started:.1f} s")
