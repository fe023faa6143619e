"""Metric-learning losses as plain functions of tensors.

Every function takes embeddings that are not L2-normalised, computes in float32 whatever
the input dtype (distances in low precision overflow or lose the margin), and returns a
scalar. Candidate tiles let one function serve both real batches and HDML's synthetic
batches: for anchor i, `candidates[i]` holds the M embeddings it is compared with.
"""

import tensorflow as tf


def tile_candidates(positives, num_anchors):
    """Give every anchor the same candidates: [M, D] -> [num_anchors, M, D]."""
    positives = tf.convert_to_tensor(positives)
    return tf.broadcast_to(positives[tf.newaxis], tf.concat([[num_anchors], tf.shape(positives)], 0))


def _label_match(anchor_labels, candidate_labels):
    """Return the float [N, M] matrix of label equality between anchors and candidates."""
    anchor_labels = tf.convert_to_tensor(anchor_labels)
    candidate_labels = tf.convert_to_tensor(candidate_labels)
    return tf.cast(tf.equal(anchor_labels[:, tf.newaxis], candidate_labels[tf.newaxis, :]), tf.float32)


def npair_loss(anchors, candidates, anchor_labels, candidate_labels, l2_reg):
    """Compute the multi-class N-pair loss (Sohn, NeurIPS 2016) with HDML's L2 term.

        logits[i, j] = a_i . c_ij
        targets[i, j] = [y_i == y'_j] / sum_j' [y_i == y'_j']
        J = mean_i CE(softmax(logits[i]), targets[i])
            + 0.25 * l2_reg * (mean_i ||a_i||^2 + mean_ij ||c_ij||^2)

    Args:
        anchors: [N, D] anchor embeddings.
        candidates: [N, M, D] candidate embeddings per anchor; use `tile_candidates` for a
            batch where every anchor sees the same M positives.
        anchor_labels: [N] int labels of the anchors.
        candidate_labels: [M] int labels of the candidates (the same for every anchor).
        l2_reg: weight of the embedding-norm regulariser.

    Returns:
        Scalar float32 loss. Every anchor needs at least one candidate of its class.
    """
    anchors = tf.cast(anchors, tf.float32)
    candidates = tf.cast(candidates, tf.float32)
    logits = tf.einsum("nd,nmd->nm", anchors, candidates)
    targets = _label_match(anchor_labels, candidate_labels)
    targets /= tf.reduce_sum(targets, axis=1, keepdims=True)
    cross_entropy = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    anchor_norms = tf.reduce_mean(tf.reduce_sum(tf.square(anchors), axis=-1))
    candidate_norms = tf.reduce_mean(tf.reduce_sum(tf.square(candidates), axis=-1))
    return tf.reduce_mean(cross_entropy) + 0.25 * l2_reg * (anchor_norms + candidate_norms)


def triplet_loss(anchors, positives, negatives, margin=1.0):
    """Compute the triplet loss on squared Euclidean distances, summed over triplets.

        J = sum_i max(0, ||a_i - p_i||^2 - ||a_i - n_i||^2 + margin)

    Args:
        anchors, positives, negatives: [T, D] embeddings of T triplets.
        margin: required gap between the squared distances.

    Returns:
        Scalar float32 loss (a sum, not a mean, as in the HDML authors' code).
    """
    anchors = tf.cast(anchors, tf.float32)
    positive_distances = tf.reduce_sum(tf.square(anchors - tf.cast(positives, tf.float32)), axis=-1)
    negative_distances = tf.reduce_sum(tf.square(anchors - tf.cast(negatives, tf.float32)), axis=-1)
    return tf.reduce_sum(tf.nn.relu(positive_distances - negative_distances + margin))


def contrastive_loss(anchors, candidates, anchor_labels, candidate_labels, margin=1.0):
    """Compute the contrastive loss (Hadsell et al., CVPR 2006) over anchor-candidate pairs.

    With d_ij = ||a_i - c_ij||, a pair is positive when the labels match:

        J = mean over positive pairs of d_ij^2
            + mean over negative pairs of max(0, margin - d_ij)^2

    Averaging the two kinds separately keeps the N positive pairs of an N-pair batch from
    being outweighed by its N(N-1) negative pairs. A kind with no pairs contributes 0.

    Args:
        anchors: [N, D] anchor embeddings.
        candidates: [N, M, D] candidate embeddings per anchor.
        anchor_labels: [N] int labels; candidate_labels: [M] int labels.
        margin: distance beyond which a negative pair costs nothing.

    Returns:
        Scalar float32 loss.
    """
    anchors = tf.cast(anchors, tf.float32)
    candidates = tf.cast(candidates, tf.float32)
    squared = tf.reduce_sum(tf.square(anchors[:, tf.newaxis, :] - candidates), axis=-1)
    # The floor keeps the gradient of the square root finite for identical embeddings.
    distances = tf.sqrt(tf.maximum(squared, 1e-12))
    positive_mask = _label_match(anchor_labels, candidate_labels)
    negative_mask = 1.0 - positive_mask
    positive_term = tf.reduce_sum(positive_mask * squared) / tf.maximum(tf.reduce_sum(positive_mask), 1.0)
    negative_term = tf.reduce_sum(negative_mask * tf.square(tf.nn.relu(margin - distances))) / tf.maximum(
        tf.reduce_sum(negative_mask), 1.0
    )
    return positive_term + negative_term


def weight_decay(variables, factor):
    """Compute factor * sum over variables of ||w||^2 / 2 (`tf.nn.l2_loss`), in float32."""
    if not variables or factor == 0:
        return tf.constant(0.0)
    return factor * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])
