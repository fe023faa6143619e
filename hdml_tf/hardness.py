"""Hardness-aware synthesis: the pulling formula and the loss averages that schedule it.

A negative z- of anchor z with positive z+ is pulled along the segment towards the anchor:

    d+ = ||z - z+||,  d- = ||z - z-||,  lambda = exp(-alpha / J_avg)
    if d- > d+:  z^- = z + (d+ + (d- - d+) * lambda) / d- * (z- - z)
    else:        z^- = z-

so the pulled negative sits at distance d+ + (d- - d+) * lambda from the anchor. A large
J_avg (early training) gives lambda ~ 1 and leaves negatives alone; a small J_avg pulls them
in to the positive's distance.
"""

import keras
import tensorflow as tf

# J_avg and J_gen_avg start here, so the first block pulls nothing and weights J_m fully.
INITIAL_LOSS_AVERAGE = 1e6


def _norm(x):
    # The floor keeps the gradient finite where two embeddings coincide.
    return tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(x), axis=-1), 1e-12))


def hardness_lambda(j_avg, alpha):
    """Return lambda = exp(-alpha / J_avg) as a constant: no gradient flows through it."""
    return tf.stop_gradient(tf.exp(-alpha / tf.cast(j_avg, tf.float32)))


def pull_negatives(anchors, negatives, positive_distances, lam):
    """Apply the pulling formula elementwise over broadcastable leading dimensions.

    Args:
        anchors: [..., D] anchors z.
        negatives: [..., D] negatives z-.
        positive_distances: [...] distances d+ from each anchor to its positive.
        lam: scalar lambda in [0, 1].

    Returns:
        [..., D] pulled negatives z^-; negatives with d- <= d+ are returned unchanged.
    """
    offsets = negatives - anchors
    negative_distances = _norm(offsets)
    pull = negative_distances > positive_distances
    # Only rows with d- > d+ >= 0 use the ratio; the others get a safe denominator so
    # that no NaN reaches the gradient through the unused branch of tf.where.
    safe_distances = tf.where(pull, negative_distances, tf.ones_like(negative_distances))
    ratio = (positive_distances + (negative_distances - positive_distances) * lam) / safe_distances
    pulled = anchors + ratio[..., tf.newaxis] * offsets
    return tf.where(pull[..., tf.newaxis], pulled, negatives + tf.zeros_like(pulled))


def pull_triplet_negatives(anchors, positives, negatives, lam):
    """Pull each triplet's negative: all inputs [T, D], returns [T, D]."""
    return pull_negatives(anchors, negatives, _norm(anchors - positives), lam)


def pull_npair_negatives(anchors, positives, lam):
    """Build N-pair's N x N tile of pulled negatives.

    For anchor i and positive j, positive j is a candidate negative of anchor i, pulled with
    d+ = ||z_i - z+_i|| and d- = ||z_i - z+_j||. On the diagonal d- = d+, so tile[i, i] is
    the true positive z+_i, unchanged.

    Args:
        anchors: [N, D]; positives: [N, D], positive i of the class of anchor i.
        lam: scalar lambda.

    Returns:
        [N, N, D] tile, tile[i, j] = pulled z+_j for anchor i.
    """
    positive_distances = _norm(anchors - positives)[:, tf.newaxis]
    return pull_negatives(anchors[:, tf.newaxis, :], positives[tf.newaxis, :, :], positive_distances, lam)


class BlockAverage(keras.layers.Layer):
    """A loss average replaced at the end of every block of steps, kept in variables.

    The average starts at 1e6. Every step adds the loss to the block's sum unless it is NaN
    or infinite; after `block_size` steps the average becomes the block's mean (unchanged
    if every step of the block was skipped) and the block restarts. The layer and its four
    variables are named after `name`, and checkpoints of the owning model carry them.
    """

    def __init__(self, name, block_size=64, **kwargs):
        super().__init__(name=name, **kwargs)
        self.block_size = block_size

        def add(suffix, dtype, value):
            return self.add_weight(
                name=f"{name}{suffix}",
                shape=(),
                dtype=dtype,
                initializer=keras.initializers.Constant(value),
                trainable=False,
                aggregation="only_first_replica",
            )

        self.value = add("", "float32", INITIAL_LOSS_AVERAGE)
        self.block_sum = add("_block_sum", "float32", 0.0)
        self.block_count = add("_block_count", "float32", 0.0)
        self.block_steps = add("_block_steps", "int64", 0)
        self.built = True

    @property
    def variables(self):
        return [self.value, self.block_sum, self.block_count, self.block_steps]

    def update(self, loss):
        """Add one step's loss. Written without branches so it runs in any replica context."""
        loss = tf.cast(loss, tf.float32)
        finite = tf.math.is_finite(loss)
        block_sum = self.block_sum + tf.where(finite, loss, 0.0)
        block_count = self.block_count + tf.cast(finite, tf.float32)
        block_steps = self.block_steps + 1
        block_done = block_steps >= self.block_size
        block_mean = block_sum / tf.maximum(block_count, 1.0)
        self.value.assign(tf.where(block_done & (block_count > 0), block_mean, self.value))
        self.block_sum.assign(tf.where(block_done, 0.0, block_sum))
        self.block_count.assign(tf.where(block_done, 0.0, block_count))
        self.block_steps.assign(tf.where(block_done, tf.zeros_like(block_steps), block_steps))
