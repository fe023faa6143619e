"""BVLC GoogLeNet (Inception-v1 with local response normalisation) in Keras 3.

The network follows the Caffe model `bvlc_googlenet` (Szegedy et al., "Going Deeper with
Convolutions", CVPR 2015) as used by HDML: no batch normalisation, LRN after pool1 and
after conv2/3x3, max pooling in Caffe's ceil mode, and the 1024-d global average of the
last inception block (`pool5`) as output.

Layer names are the Caffe layer names with "/" replaced by "." because Keras 3 rejects
"/" in names: `conv1/7x7_s2` is the layer `conv1.7x7_s2`. `caffe_layer_name` and
`keras_layer_name` convert between the two, so ImageNet weights can be imported by name.
"""

import keras
import tensorflow as tf

# Mean pixel of the Caffe ImageNet model in BGR order, on the 0-255 scale.
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
FEATURE_SIZE = 1024
MIN_IMAGE_SIZE = 64

# (name, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection) for every inception block.
INCEPTION_BLOCKS = (
    ("inception_3a", 64, 96, 128, 16, 32, 32),
    ("inception_3b", 128, 128, 192, 32, 96, 64),
    ("inception_4a", 192, 96, 208, 16, 48, 64),
    ("inception_4b", 160, 112, 224, 24, 64, 64),
    ("inception_4c", 128, 128, 256, 24, 64, 64),
    ("inception_4d", 112, 144, 288, 32, 64, 64),
    ("inception_4e", 256, 160, 320, 32, 128, 128),
    ("inception_5a", 256, 160, 320, 32, 128, 128),
    ("inception_5b", 384, 192, 384, 48, 128, 128),
)
# A Caffe-mode max pooling (3x3, stride 2) follows these blocks.
POOL_AFTER = {"inception_3b": "pool3/3x3_s2", "inception_4e": "pool4/3x3_s2"}


def keras_layer_name(caffe_name):
    """Map a Caffe layer name such as `inception_3a/1x1` to its Keras layer name."""
    return caffe_name.replace("/", ".")


def caffe_layer_name(keras_name):
    """Map a Keras layer name such as `inception_3a.1x1` back to the Caffe name."""
    return keras_name.replace(".", "/")


@keras.saving.register_keras_serializable(package="hdml_tf")
class CaffePreprocess(keras.layers.Layer):
    """Convert RGB images on the 0-255 scale to Caffe's input: BGR minus the mean pixel."""

    def call(self, images):
        bgr = images[..., ::-1]
        return bgr - tf.constant(CAFFE_MEAN_BGR, dtype=bgr.dtype)


@keras.saving.register_keras_serializable(package="hdml_tf")
class LocalResponseNormalization(keras.layers.Layer):
    """Caffe's cross-channel LRN: x / (bias + alpha / size * sum of x^2 over size channels)^beta.

    TensorFlow's op sums over `2 * depth_radius + 1` channels and does not divide alpha by
    the window size, so the Caffe parameters are converted here.
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, bias=1.0, **kwargs):
        super().__init__(**kwargs)
        if size % 2 != 1:
            raise ValueError(f"LRN size must be odd, received size={size}")
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.bias = bias

    def call(self, inputs):
        # Computed in float32: TensorFlow's CPU kernel has no bfloat16 version, and the
        # sum of squares overflows float16 for activations above ~115.
        normalized = tf.nn.local_response_normalization(
            tf.cast(inputs, tf.float32),
            depth_radius=(self.size - 1) // 2,
            bias=self.bias,
            alpha=self.alpha / self.size,
            beta=self.beta,
        )
        return tf.cast(normalized, inputs.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, alpha=self.alpha, beta=self.beta, bias=self.bias)
        return config


@keras.saving.register_keras_serializable(package="hdml_tf")
class CaffeMaxPooling2D(keras.layers.Layer):
    """Max pooling with Caffe's ceil-mode output size: ceil((H - k) / s) + 1.

    TensorFlow's "same" padding gives ceil(H / s), which differs for odd sizes (57 -> 29
    instead of Caffe's 28 at a 227 px input), so the input is padded at the bottom and
    right with the lowest value of its dtype and pooled without padding.
    """

    def __init__(self, pool_size=3, strides=2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = pool_size
        self.strides = strides

    def _padding(self, size):
        steps = tf.math.floordiv(tf.maximum(size - self.pool_size, 0) + self.strides - 1, self.strides)
        return steps * self.strides + self.pool_size - size

    def call(self, inputs):
        shape = tf.shape(inputs)
        pad_h = self._padding(shape[1])
        pad_w = self._padding(shape[2])
        padded = tf.pad(
            inputs,
            [[0, 0], [0, pad_h], [0, pad_w], [0, 0]],
            constant_values=inputs.dtype.min,
        )
        return tf.nn.max_pool2d(padded, self.pool_size, self.strides, padding="VALID")

    def compute_output_shape(self, input_shape):
        def out(size):
            if size is None:
                return None
            return -(-max(size - self.pool_size, 0) // self.strides) + 1

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size, strides=self.strides)
        return config


def _conv(x, filters, kernel_size, caffe_name, strides=1, padding="same"):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        activation="relu",
        kernel_initializer="glorot_uniform",
        name=keras_layer_name(caffe_name),
    )(x)


def _inception(x, name, n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj):
    branch_1x1 = _conv(x, n1x1, 1, f"{name}/1x1")
    branch_3x3 = _conv(x, n3x3_reduce, 1, f"{name}/3x3_reduce")
    branch_3x3 = _conv(branch_3x3, n3x3, 3, f"{name}/3x3")
    branch_5x5 = _conv(x, n5x5_reduce, 1, f"{name}/5x5_reduce")
    branch_5x5 = _conv(branch_5x5, n5x5, 5, f"{name}/5x5")
    branch_pool = keras.layers.MaxPooling2D(3, strides=1, padding="same", name=keras_layer_name(f"{name}/pool"))(x)
    branch_pool = _conv(branch_pool, pool_proj, 1, f"{name}/pool_proj")
    return keras.layers.Concatenate(axis=-1, name=keras_layer_name(f"{name}/output"))(
        [branch_1x1, branch_3x3, branch_5x5, branch_pool]
    )


def build_googlenet(image_size=None, name="googlenet"):
    """Build GoogLeNet from RGB images (0-255) to the 1024-d `pool5` feature.

    Args:
        image_size: input height and width in pixels, or None for any size of at least
            64 px (the network ends in a global average pooling).
        name: name of the returned model.

    Returns:
        A functional `keras.Model` mapping float images `[batch, H, W, 3]` to
        `[batch, 1024]`. Its first layer converts RGB to Caffe's mean-subtracted BGR.
    """
    inputs = keras.Input(shape=(image_size, image_size, 3), name="images")
    x = CaffePreprocess(name="caffe_preprocess")(inputs)

    # conv1/7x7_s2 pads 3 pixels on every side in Caffe; "same" would pad 2 before, 3 after.
    x = keras.layers.ZeroPadding2D(3, name="conv1.pad")(x)
    x = _conv(x, 64, 7, "conv1/7x7_s2", strides=2, padding="valid")
    x = CaffeMaxPooling2D(name=keras_layer_name("pool1/3x3_s2"))(x)
    x = LocalResponseNormalization(name=keras_layer_name("pool1/norm1"))(x)

    x = _conv(x, 64, 1, "conv2/3x3_reduce")
    x = _conv(x, 192, 3, "conv2/3x3")
    x = LocalResponseNormalization(name=keras_layer_name("conv2/norm2"))(x)
    x = CaffeMaxPooling2D(name=keras_layer_name("pool2/3x3_s2"))(x)

    for block in INCEPTION_BLOCKS:
        x = _inception(x, *block)
        if block[0] in POOL_AFTER:
            x = CaffeMaxPooling2D(name=keras_layer_name(POOL_AFTER[block[0]]))(x)

    # Caffe's pool5/7x7_s1 is a 7x7 average over a 7x7 map at 224 px: a global average.
    features = keras.layers.GlobalAveragePooling2D(name=keras_layer_name("pool5/7x7_s1"))(x)
    return keras.Model(inputs, features, name=name)
