"""Losses against slow NumPy references written with explicit loops."""

import numpy as np
import pytest
import tensorflow as tf

from hdml_tf import losses


def _softmax_cross_entropy(logits, targets):
    shifted = logits - logits.max()
    log_probs = shifted - np.log(np.exp(shifted).sum())
    return -(targets * log_probs).sum()


def npair_reference(anchors, candidates, anchor_labels, candidate_labels, l2_reg):
    n, m = candidates.shape[:2]
    total = 0.0
    for i in range(n):
        logits = np.array([anchors[i] @ candidates[i, j] for j in range(m)])
        targets = np.array([float(anchor_labels[i] == candidate_labels[j]) for j in range(m)])
        total += _softmax_cross_entropy(logits, targets / targets.sum())
    anchor_norms = np.mean([a @ a for a in anchors])
    candidate_norms = np.mean([c @ c for row in candidates for c in row])
    return total / n + 0.25 * l2_reg * (anchor_norms + candidate_norms)


def triplet_reference(anchors, positives, negatives, margin):
    total = 0.0
    for a, p, n in zip(anchors, positives, negatives):
        total += max(0.0, ((a - p) ** 2).sum() - ((a - n) ** 2).sum() + margin)
    return total


def contrastive_reference(anchors, candidates, anchor_labels, candidate_labels, margin):
    positive, negative = [], []
    for i in range(len(anchors)):
        for j in range(candidates.shape[1]):
            distance = np.sqrt(((anchors[i] - candidates[i, j]) ** 2).sum())
            if anchor_labels[i] == candidate_labels[j]:
                positive.append(distance**2)
            else:
                negative.append(max(0.0, margin - distance) ** 2)
    return (np.mean(positive) if positive else 0.0) + (np.mean(negative) if negative else 0.0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_npair_shared_positives(rng):
    anchors = rng.normal(size=(6, 5)).astype(np.float32)
    positives = rng.normal(size=(6, 5)).astype(np.float32)
    labels = np.arange(6)
    got = losses.npair_loss(anchors, losses.tile_candidates(positives, 6), labels, labels, l2_reg=0.01)
    want = npair_reference(anchors, np.broadcast_to(positives, (6, 6, 5)), labels, labels, 0.01)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_npair_per_anchor_tile_with_repeated_labels(rng):
    anchors = rng.normal(size=(4, 3)).astype(np.float32)
    tile = rng.normal(size=(4, 5, 3)).astype(np.float32)
    anchor_labels = np.array([0, 1, 2, 1])
    candidate_labels = np.array([1, 0, 1, 2, 3])
    got = losses.npair_loss(anchors, tile, anchor_labels, candidate_labels, l2_reg=0.5)
    want = npair_reference(anchors, tile, anchor_labels, candidate_labels, 0.5)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_triplet_sum_with_inactive_triplets(rng):
    anchors = rng.normal(size=(8, 4)).astype(np.float32)
    positives = anchors + 0.1 * rng.normal(size=(8, 4)).astype(np.float32)
    negatives = anchors + 0.5 * rng.normal(size=(8, 4)).astype(np.float32)
    negatives[:3] = anchors[:3] + 5.0  # far negatives: these triplets contribute 0
    got = losses.triplet_loss(anchors, positives, negatives, margin=1.0)
    want = triplet_reference(anchors, positives, negatives, 1.0)
    assert want > 0
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_contrastive_pairs(rng):
    anchors = rng.normal(size=(5, 3)).astype(np.float32)
    positives = anchors + 0.2 * rng.normal(size=(5, 3)).astype(np.float32)
    labels = np.arange(5)
    candidates = np.broadcast_to(positives, (5, 5, 3))
    got = losses.contrastive_loss(anchors, losses.tile_candidates(positives, 5), labels, labels, margin=2.0)
    want = contrastive_reference(anchors, candidates, labels, labels, 2.0)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_contrastive_identical_embeddings_have_finite_gradient():
    anchors = tf.Variable(np.ones((2, 3), np.float32))
    with tf.GradientTape() as tape:
        loss = losses.contrastive_loss(anchors, losses.tile_candidates(anchors, 2), [0, 1], [0, 1], margin=1.0)
    gradient = tape.gradient(loss, anchors)
    assert np.all(np.isfinite(gradient.numpy()))


def test_weight_decay_is_half_squared_norm():
    variables = [tf.Variable([[1.0, 2.0]]), tf.Variable([3.0])]
    np.testing.assert_allclose(float(losses.weight_decay(variables, 0.1)), 0.1 * (1 + 4 + 9) / 2, rtol=1e-6)
