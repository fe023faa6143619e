"""Keras Applications backbones: ResNet50, InceptionV3, MobileNetV2 and EfficientNetB0.

Each backbone takes RGB images on the 0-255 scale, like GoogLeNet. Its first layer after
the input, `preprocess_input`, applies the normalisation that the network's ImageNet
weights were trained with, so exported models carry it. The output is the global average
of the last feature map (`pooling="avg"`, no classifier).

The networks are built with `weights=None` on top of the preprocessing layer, so their
layers sit in one flat functional model. ImageNet weights are imported afterwards by
`hdml_tf.backbones.pretrained`, which uses the file names defined here.
"""

import dataclasses

import keras
import numpy as np

# ImageNet statistics of Keras' EfficientNet ImageNet weights, RGB on the 0-1 scale
# (IMAGENET_MEAN_RGB and IMAGENET_STDDEV_RGB in keras/src/applications/efficientnet.py,
# Keras 3.15). The weight files store the standard deviation as the Normalization layer's
# variance, and Keras adds a Rescaling by 1 / sqrt(std) to compensate, so the network
# receives (x / 255 - mean) / std.
EFFICIENTNET_MEAN_RGB = (0.485, 0.456, 0.406)
EFFICIENTNET_STDDEV_RGB = (0.229, 0.224, 0.225)
# Input sizes for which Keras publishes separate MobileNetV2 ImageNet weights. Other sizes
# use the 224 px weights.
MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)


def _efficientnet_preprocess(images):
    """Standardise RGB 0-255 images so that EfficientNet's internal layers pass them on.

    EfficientNetB0 starts with Rescaling(1 / 255) and a Normalization layer. This project
    keeps that Normalization at mean 0 and variance 1 (see `pin_internal_normalization`),
    so the ImageNet standardisation is applied here, scaled by 255 to undo the Rescaling.
    The first convolution then receives (x / 255 - mean) / std, as in Keras' ImageNet model.
    """
    mean = keras.ops.convert_to_tensor(np.multiply(EFFICIENTNET_MEAN_RGB, 255.0), dtype=images.dtype)
    std = keras.ops.convert_to_tensor(EFFICIENTNET_STDDEV_RGB, dtype=images.dtype)
    return (images - mean) / std


@dataclasses.dataclass(frozen=True)
class Application:
    """How to build one Keras Applications network as a backbone."""

    constructor: object  # keras.applications constructor, e.g. keras.applications.ResNet50
    preprocess: object  # function from RGB 0-255 images to the network's input
    min_image_size: int  # smallest input side Keras accepts for this network, in pixels
    feature_size: int


APPLICATIONS = {
    "resnet50": Application(keras.applications.ResNet50, keras.applications.resnet50.preprocess_input, 32, 2048),
    "inception_v3": Application(
        keras.applications.InceptionV3, keras.applications.inception_v3.preprocess_input, 75, 2048
    ),
    "mobilenet_v2": Application(
        keras.applications.MobileNetV2, keras.applications.mobilenet_v2.preprocess_input, 32, 1280
    ),
    "efficientnet_b0": Application(keras.applications.EfficientNetB0, _efficientnet_preprocess, 32, 1280),
}


@keras.saving.register_keras_serializable(package="hdml_tf")
class ApplicationPreprocess(keras.layers.Layer):
    """Apply the input normalisation of a Keras Applications backbone to RGB 0-255 images.

    ResNet50 gets Caffe-style BGR minus the ImageNet mean, InceptionV3 and MobileNetV2 get
    x / 127.5 - 1 (both through Keras' own `preprocess_input`), EfficientNetB0 gets the
    ImageNet standardisation described in `_efficientnet_preprocess`.
    """

    def __init__(self, application, **kwargs):
        super().__init__(**kwargs)
        if application not in APPLICATIONS:
            raise ValueError(
                f"unknown application {application!r}; valid applications: {', '.join(sorted(APPLICATIONS))}"
            )
        self.application = application

    def call(self, images):
        return APPLICATIONS[self.application].preprocess(images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(application=self.application)
        return config


def build_application(name, image_size=None):
    """Build the Keras Applications backbone `name` from RGB images (0-255) to pooled features.

    Args:
        name: a key of APPLICATIONS.
        image_size: input height and width in pixels, or None for any size. InceptionV3
            needs at least 75 px, the others 32 px.

    Returns:
        A functional `keras.Model` named `name` mapping float images `[batch, H, W, 3]` to
        `[batch, feature_size]`, with random initial weights.
    """
    spec = APPLICATIONS[name]
    if image_size is not None and image_size < spec.min_image_size:
        raise ValueError(f"image_size={image_size} is too small for {name}: it needs at least {spec.min_image_size} px")
    input_shape = (image_size, image_size, 3)
    images = keras.Input(shape=input_shape, name="images")
    normalized = ApplicationPreprocess(name, name="preprocess_input")(images)
    # With `input_tensor` the application continues the graph from `normalized`, so its
    # layers sit directly in the backbone rather than in a nested model. Keras returns a
    # model whose inputs are a one-element list; rewrapping gives a single input, as
    # `backbone.input.shape` users expect.
    application = spec.constructor(
        include_top=False, weights=None, input_tensor=normalized, input_shape=input_shape, pooling="avg", name=name
    )
    return keras.Model(images, application.output, name=name)


def imagenet_weights_file(name, image_size=None):
    """Return the file name under which Keras caches the no-top ImageNet weights of `name`.

    The names follow keras/src/applications (Keras 3.15). Keras stores the files in
    `$KERAS_HOME/models/` (default `~/.keras/models/`).
    """
    if name == "resnet50":
        return "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    if name == "inception_v3":
        return "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
    if name == "mobilenet_v2":
        rows = image_size if image_size in MOBILENET_V2_SIZES else 224
        return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
    if name == "efficientnet_b0":
        return "efficientnetb0_notop.h5"
    raise ValueError(f"{name} has no Keras ImageNet weights. Valid names: {', '.join(sorted(APPLICATIONS))}")


def build_keras_imagenet_model(name, image_size=None):
    """Build Keras' own ImageNet-pretrained model for `name`; Keras downloads the weights if needed."""
    return APPLICATIONS[name].constructor(
        include_top=False, weights="imagenet", input_shape=(image_size, image_size, 3), pooling="avg"
    )


def _internal_normalization(model):
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)]
    return layers[0] if layers else None


def check_imagenet_normalization(name, source_model):
    """Raise ValueError unless the ImageNet weights' Normalization matches `_efficientnet_preprocess`.

    Only EfficientNetB0 has such a layer, so for the other networks this does nothing.
    """
    if name != "efficientnet_b0":
        return
    layer = _internal_normalization(source_model)
    if layer is None:
        raise ValueError(f"the {name} weights have no Normalization layer")
    mean, variance = (np.asarray(value).reshape(-1) for value in layer.get_weights()[:2])
    matches_mean = np.allclose(mean, EFFICIENTNET_MEAN_RGB, atol=1e-3)
    matches_variance = np.allclose(variance, EFFICIENTNET_STDDEV_RGB, atol=1e-3)
    if not (matches_mean and matches_variance):
        raise ValueError(
            f"the {name} weights normalise with mean {mean.tolist()} and variance {variance.tolist()}, "
            f"expected Keras' ImageNet values {list(EFFICIENTNET_MEAN_RGB)} and {list(EFFICIENTNET_STDDEV_RGB)}"
        )


def pin_internal_normalization(model):
    """Set EfficientNet's internal Normalization layer to mean 0 and variance 1, if it has one.

    `ApplicationPreprocess` already standardises the input. Keeping this layer at its
    initial values also matters because Keras' Normalization reads its variables only in
    `finalize_state()`: a checkpoint restored later would not reach its output.
    """
    layer = _internal_normalization(model)
    if layer is None:
        return
    values = [np.zeros_like(layer.get_weights()[0]), np.ones_like(layer.get_weights()[1]), *layer.get_weights()[2:]]
    layer.set_weights(values)
    layer.finalize_state()
