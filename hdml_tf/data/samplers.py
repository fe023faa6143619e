"""Batch samplers for the loss layouts, as pure functions of (seed, step).

A sampler returns the indices of one global batch. The global batch is the concatenation
of one slice per replica, because `tf.distribute` splits a batch into contiguous slices;
every slice holds whole groups in the loss's layout:

- N-pair and contrastive: [n anchors; n positives] of n distinct classes.
- Triplet: [t anchors; t positives; t negatives], the negative's class differing from the
  anchor's.
- P x K: p classes with k images each, class by class.

Batch indices depend only on the seed and the step, so training resumed at step s sees
exactly the batches an uninterrupted run would have seen.
"""

import numpy as np


class BatchLayoutError(ValueError):
    """Raised when a batch size does not fit the loss layout, the replicas or the data."""


def _rng(seed, step):
    return np.random.default_rng([seed, step])


class _ClassSampler:
    """Shared bookkeeping: the images of every class that has at least `min_images`."""

    def __init__(self, labels, min_images=2):
        labels = np.asarray(labels)
        order = np.argsort(labels, kind="stable")
        unique, starts = np.unique(labels[order], return_index=True)
        self.indices_by_class = {
            int(label): members for label, members in zip(unique, np.split(order, starts[1:]))
        }
        self.excluded_classes = [label for label, members in self.indices_by_class.items() if len(members) < min_images]
        self.classes = np.array(
            [label for label, members in self.indices_by_class.items() if len(members) >= min_images],
            dtype=np.int64,
        )

    def _pick(self, rng, label, count):
        return rng.choice(self.indices_by_class[int(label)], size=count, replace=False)


class PairSampler(_ClassSampler):
    """Sample N-pair batches: N distinct classes, two different images of each.

    Args:
        labels: [n] labels of the split.
        batch_size: global batch size in images, 2N.
        num_replicas: number of replicas; every replica gets N / num_replicas classes.
        seed: sampling seed.
    """

    group_size = 2

    def __init__(self, labels, batch_size, num_replicas=1, seed=0):
        super().__init__(labels, min_images=2)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.seed = seed
        if batch_size % (2 * num_replicas) != 0 or batch_size <= 0:
            raise BatchLayoutError(
                f"--batch_size={batch_size} does not fit the N-pair layout on {num_replicas} replica(s): "
                f"it must be a positive multiple of 2 x replicas = {2 * num_replicas}"
            )
        self.num_pairs = batch_size // 2
        if self.num_pairs > len(self.classes):
            raise BatchLayoutError(
                f"--batch_size={batch_size} needs {self.num_pairs} distinct classes per batch, but the training "
                f"split has only {len(self.classes)} classes with two or more images: use --batch_size of at most "
                f"{2 * (len(self.classes) // num_replicas) * num_replicas}"
            )

    def batch_indices(self, step):
        rng = _rng(self.seed, step)
        classes = rng.choice(self.classes, size=self.num_pairs, replace=False)
        pairs = np.stack([self._pick(rng, label, 2) for label in classes])
        slices = []
        for replica_pairs in np.split(pairs, self.num_replicas):
            slices.append(np.concatenate([replica_pairs[:, 0], replica_pairs[:, 1]]))
        return np.concatenate(slices).astype(np.int64)


class TripletSampler(_ClassSampler):
    """Sample triplet batches: B / 3 triplets (anchor, positive of its class, negative of another).

    Args:
        labels: [n] labels of the split.
        batch_size: global batch size in images, a multiple of 3 x replicas.
        num_replicas: number of replicas.
        seed: sampling seed.
    """

    group_size = 3

    def __init__(self, labels, batch_size, num_replicas=1, seed=0):
        super().__init__(labels, min_images=2)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.seed = seed
        if batch_size % (3 * num_replicas) != 0 or batch_size <= 0:
            raise BatchLayoutError(
                f"--batch_size={batch_size} does not fit the triplet layout on {num_replicas} replica(s): "
                f"it must be a positive multiple of 3 x replicas = {3 * num_replicas}"
            )
        if len(self.classes) < 2:
            raise BatchLayoutError(
                f"the triplet loss needs at least 2 classes with two or more images, found {len(self.classes)}"
            )
        self.num_triplets = batch_size // 3
        self.all_classes = np.array(sorted(self.indices_by_class), dtype=np.int64)

    def batch_indices(self, step):
        rng = _rng(self.seed, step)
        anchor_classes = rng.choice(self.classes, size=self.num_triplets, replace=True)
        triplets = []
        for label in anchor_classes:
            anchor, positive = self._pick(rng, label, 2)
            negative_class = rng.choice(self.all_classes[self.all_classes != label])
            negative = rng.choice(self.indices_by_class[int(negative_class)])
            triplets.append((anchor, positive, negative))
        triplets = np.array(triplets, dtype=np.int64)
        slices = [replica.T.reshape(-1) for replica in np.split(triplets, self.num_replicas)]
        return np.concatenate(slices)


SAMPLERS = {"npair": PairSampler, "contrastive": PairSampler, "triplet": TripletSampler}


def make_sampler(loss, labels, batch_size, num_replicas=1, seed=0):
    """Return the sampler for a loss's batch layout."""
    return SAMPLERS[loss](labels, batch_size, num_replicas=num_replicas, seed=seed)
