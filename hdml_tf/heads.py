"""The small networks around the backbone: embedding head, generator and softmax classifier.

Variable names are part of the checkpoint format, so every layer is named.
"""

import keras


def build_embedding_head(embedding_size, feature_size=1024, name="embedding_head"):
    """Build the encoder Y -> Z: BatchNorm over the pool5 feature, then a linear Dense layer.

    The embedding is not L2-normalised here; evaluation and export normalise it.
    """
    features = keras.Input(shape=(feature_size,), name="features")
    x = keras.layers.BatchNormalization(name="embedding_bn")(features)
    embeddings = keras.layers.Dense(
        embedding_size,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        name="embedding_dense",
    )(x)
    return keras.Model(features, embeddings, name=name)


def build_generator(embedding_size, feature_size=1024, hidden_size=512, name="generator"):
    """Build the generator Z -> Y: Dense, ReLU, BatchNorm, Dense with linear output.

    Its output lives in the pre-BatchNorm pool5 space, so a generated feature can go back
    through the embedding head.
    """
    embeddings = keras.Input(shape=(embedding_size,), name="embeddings")
    x = keras.layers.Dense(hidden_size, activation="relu", name="generator_dense1")(embeddings)
    x = keras.layers.BatchNormalization(name="generator_bn")(x)
    features = keras.layers.Dense(feature_size, name="generator_dense2")(x)
    return keras.Model(embeddings, features, name=name)


def build_classifier(num_classes, feature_size=1024, name="softmax_classifier"):
    """Build the softmax classifier over pool5 features; it returns logits."""
    features = keras.Input(shape=(feature_size,), name="features")
    logits = keras.layers.Dense(num_classes, name="softmax_dense")(features)
    return keras.Model(features, logits, name=name)
