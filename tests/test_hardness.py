"""The pulling formula and the block averages of the hardness schedule."""

import math

import numpy as np
import tensorflow as tf

from hdml_tf import hardness


def pull_reference(anchor, positive, negative, lam):
    d_pos = np.linalg.norm(anchor - positive)
    d_neg = np.linalg.norm(anchor - negative)
    if d_neg <= d_pos:
        return negative
    return anchor + (d_pos + (d_neg - d_pos) * lam) / d_neg * (negative - anchor)


def test_pull_far_negative_lands_at_interpolated_distance():
    anchor = np.array([[0.0, 0.0]], np.float32)
    positive = np.array([[1.0, 0.0]], np.float32)
    negative = np.array([[0.0, 4.0]], np.float32)
    pulled = hardness.pull_triplet_negatives(anchor, positive, negative, 0.25).numpy()
    # d+ = 1, d- = 4: the pulled negative sits at 1 + 3 * 0.25 = 1.75 on the same ray.
    np.testing.assert_allclose(pulled, [[0.0, 1.75]], atol=1e-6)


def test_pull_keeps_negative_closer_than_positive():
    anchor = np.array([[0.0, 0.0]], np.float32)
    positive = np.array([[3.0, 0.0]], np.float32)
    negative = np.array([[0.0, 2.0]], np.float32)
    pulled = hardness.pull_triplet_negatives(anchor, positive, negative, 0.1).numpy()
    np.testing.assert_array_equal(pulled, negative)


def test_pull_matches_reference_on_random_triplets():
    rng = np.random.default_rng(1)
    anchors, positives, negatives = (rng.normal(size=(50, 6)).astype(np.float32) for _ in range(3))
    for lam in (0.0, 0.3, 1.0):
        pulled = hardness.pull_triplet_negatives(anchors, positives, negatives, lam).numpy()
        want = np.stack([pull_reference(a, p, n, lam) for a, p, n in zip(anchors, positives, negatives)])
        np.testing.assert_allclose(pulled, want, rtol=1e-5, atol=1e-5)


def test_npair_tile_matches_reference_and_keeps_diagonal():
    rng = np.random.default_rng(2)
    anchors = rng.normal(size=(5, 4)).astype(np.float32)
    positives = rng.normal(size=(5, 4)).astype(np.float32)
    tile = hardness.pull_npair_negatives(anchors, positives, 0.2).numpy()
    assert tile.shape == (5, 5, 4)
    for i in range(5):
        np.testing.assert_array_equal(tile[i, i], positives[i])
        for j in range(5):
            want = pull_reference(anchors[i], positives[i], positives[j], 0.2)
            np.testing.assert_allclose(tile[i, j], want, rtol=1e-5, atol=1e-5)


def test_lambda_one_leaves_negatives_unchanged():
    rng = np.random.default_rng(3)
    anchors = rng.normal(size=(4, 3)).astype(np.float32)
    positives = rng.normal(size=(4, 3)).astype(np.float32)
    tile = hardness.pull_npair_negatives(anchors, positives, 1.0).numpy()
    np.testing.assert_allclose(tile, np.broadcast_to(positives, (4, 4, 3)), rtol=1e-5, atol=1e-6)


def test_pull_gradient_is_finite_for_coincident_points():
    anchors = tf.Variable(np.zeros((2, 3), np.float32))
    with tf.GradientTape() as tape:
        tile = hardness.pull_npair_negatives(anchors, tf.zeros((2, 3)), 0.5)
        total = tf.reduce_sum(tile)
    assert np.all(np.isfinite(tape.gradient(total, anchors).numpy()))


def test_hardness_lambda_value():
    np.testing.assert_allclose(float(hardness.hardness_lambda(45.0, 90.0)), math.exp(-2.0), rtol=1e-6)
    np.testing.assert_allclose(float(hardness.hardness_lambda(1e6, 90.0)), math.exp(-9e-5), rtol=1e-6)


def test_block_average_blocks_start_and_nan_skipping():
    average = hardness.BlockAverage("j_avg", block_size=64)
    rng = np.random.default_rng(4)
    losses = rng.uniform(1, 10, size=192)
    losses[70] = np.nan
    losses[71] = np.inf
    losses[128:192] = np.nan  # a block with no finite loss keeps the previous average
    values = []
    for loss in losses:
        average.update(tf.constant(loss, tf.float32))
        values.append(float(average.value.numpy()))
    np.testing.assert_array_equal(values[:63], [1e6] * 63)
    np.testing.assert_allclose(values[63], losses[:64].mean(), rtol=1e-5)
    np.testing.assert_allclose(values[64:127], [losses[:64].mean()] * 63, rtol=1e-5)
    second_block = losses[64:128]
    np.testing.assert_allclose(values[127], second_block[np.isfinite(second_block)].mean(), rtol=1e-5)
    np.testing.assert_allclose(values[191], values[127], rtol=1e-6)
    assert int(average.block_steps.numpy()) == 0
