"""k-means clustering of embeddings and the clustering scores NMI and pair-counting F1.

Both scores compare a cluster assignment with the class labels through the
contingency table n_ij = #{samples of class i in cluster j}, built sparsely (only
nonzero cells), so 11,316 classes x 11,316 clusters cost O(N) memory.
"""

import numpy as np
from absl import logging

from hdml_tf.evaluation import _backend

# Lloyd iterations of k-means; the same as pytorch-metric-learning's FaissKMeans
# default (niter=20 in version 2.9.0).
KMEANS_ITERATIONS = 20


def cluster_embeddings(
    embeddings: np.ndarray,
    n_clusters: int,
    *,
    seed: int = 0,
    backend: str = "auto",
    n_iter: int = KMEANS_ITERATIONS,
) -> np.ndarray:
    """Cluster the rows with k-means and return each row's cluster id.

    The rows are clustered as given; `evaluate_embeddings` passes L2-normalised rows.
    faiss: `faiss.Kmeans(D, n_clusters, niter=n_iter, seed=seed)` with random initial
    centroids. With more than 256 * n_clusters rows, faiss trains on a random subset of
    that size (its default max_points_per_centroid = 256 in faiss 1.15). tensorflow: scikit-learn `KMeans(n_init=1, max_iter=n_iter,
    random_state=seed)` (k-means++ initial centroids), used when faiss is missing.
    The two backends give different, equally valid, assignments.

    Args:
        embeddings: float array [N, D].
        n_clusters: number of clusters, 1 <= n_clusters <= N.
        seed: random seed of the initial centroids.
        backend: "faiss", "tensorflow" or "auto" (faiss when importable).
        n_iter: k-means iterations.

    Returns:
        int64 array [N] of cluster ids in [0, n_clusters).
    """
    rows = np.ascontiguousarray(embeddings, dtype=np.float32)
    if rows.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array [N, D], got shape {rows.shape}")
    num_samples, dim = rows.shape
    is_int = isinstance(n_clusters, (int, np.integer)) and not isinstance(n_clusters, bool)
    if not is_int or not 1 <= n_clusters <= num_samples:
        raise ValueError(
            f"n_clusters must be an int between 1 and N = {num_samples}, got {n_clusters!r}"
        )
    if n_clusters == 1:
        return np.zeros(num_samples, dtype=np.int64)

    resolved = _backend.resolve_backend(backend)
    logging.info(
        "k-means with %d clusters on %d x %d embeddings (%s, seed %d)",
        n_clusters,
        num_samples,
        dim,
        resolved,
        seed,
    )
    if resolved == "faiss":
        faiss = _backend.import_faiss()
        kmeans = faiss.Kmeans(dim, int(n_clusters), niter=n_iter, seed=seed, verbose=False)
        kmeans.train(rows)
        _, assignment = kmeans.index.search(rows, 1)
        return assignment[:, 0].astype(np.int64)

    from sklearn.cluster import KMeans

    kmeans = KMeans(
        n_clusters=int(n_clusters), n_init=1, max_iter=n_iter, random_state=seed
    )
    return kmeans.fit_predict(rows).astype(np.int64)


def _check_label_pair(class_labels, cluster_labels) -> tuple[np.ndarray, np.ndarray]:
    classes = np.asarray(class_labels)
    clusters = np.asarray(cluster_labels)
    if classes.ndim != 1 or clusters.ndim != 1 or classes.shape != clusters.shape:
        raise ValueError(
            "class_labels and cluster_labels must be 1-D arrays of equal length, got "
            f"shapes {classes.shape} and {clusters.shape}"
        )
    if classes.size == 0:
        raise ValueError("class_labels and cluster_labels must not be empty")
    return classes, clusters


def contingency_table(
    class_labels: np.ndarray, cluster_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Build the nonzero cells and the margins of the class x cluster contingency table.

    Args:
        class_labels: array [N] of class labels (any sortable values).
        cluster_labels: array [N] of cluster ids (any sortable values).

    Returns:
        (cell_classes, cell_clusters, cell_counts, class_sizes, cluster_sizes), int64.
        Cell c contains n_ij = cell_counts[c] for i = cell_classes[c], j = cell_clusters[c],
        with i and j numbering the sorted distinct labels; class_sizes a_i and
        cluster_sizes b_j are the margins. Only nonzero cells are listed.
    """
    classes, clusters = _check_label_pair(class_labels, cluster_labels)
    _, class_ids = np.unique(classes, return_inverse=True)
    cluster_values, cluster_ids = np.unique(clusters, return_inverse=True)
    num_clusters = len(cluster_values)

    codes = class_ids.astype(np.int64) * num_clusters + cluster_ids
    cell_codes, cell_counts = np.unique(codes, return_counts=True)
    return (
        cell_codes // num_clusters,
        cell_codes % num_clusters,
        cell_counts.astype(np.int64),
        np.bincount(class_ids).astype(np.int64),
        np.bincount(cluster_ids).astype(np.int64),
    )


def _entropy(sizes: np.ndarray, total: int) -> float:
    probabilities = sizes / total
    return float(-np.sum(probabilities * np.log(probabilities)))


def normalized_mutual_info(class_labels: np.ndarray, cluster_labels: np.ndarray) -> float:
    """Compute NMI = 2 I(classes; clusters) / (H(classes) + H(clusters)), natural log.

    I = sum_ij (n_ij / N) log(N n_ij / (a_i b_j)) over nonzero cells, H = -sum p log p.
    Equals scikit-learn `normalized_mutual_info_score` (arithmetic averaging),
    including its limits: 1.0 when both labelings have a single value, 0.0 when I is 0.

    Args:
        class_labels: array [N].
        cluster_labels: array [N].

    Returns:
        NMI in [0, 1].
    """
    cell_classes, cell_clusters, cell_counts, class_sizes, cluster_sizes = contingency_table(
        class_labels, cluster_labels
    )
    if class_sizes.size == 1 and cluster_sizes.size == 1:
        return 1.0
    if class_sizes.size == 1 or cluster_sizes.size == 1:
        return 0.0
    total = int(class_sizes.sum())

    margins = class_sizes[cell_classes].astype(np.float64) * cluster_sizes[cell_clusters]
    mutual_info = float(
        np.sum(
            cell_counts / total
            * (np.log(cell_counts) + np.log(total) - np.log(margins))
        )
    )
    if mutual_info <= 0.0:
        return 0.0

    entropy_sum = _entropy(class_sizes, total) + _entropy(cluster_sizes, total)
    return float(2.0 * mutual_info / entropy_sum)


def pair_f1_score(class_labels: np.ndarray, cluster_labels: np.ndarray) -> float:
    """Compute the pair-counting F1 of a clustering against the classes.

    Over all unordered sample pairs: TP = pairs in the same class and the same cluster
    = sum_ij C(n_ij, 2); same-cluster pairs = sum_j C(b_j, 2); same-class pairs =
    sum_i C(a_i, 2). precision = TP / same-cluster, recall = TP / same-class, and
    F1 = 2 P R / (P + R) = 2 TP / (same-cluster + same-class). Computed from the
    contingency table in O(N); pairs are never enumerated.

    Args:
        class_labels: array [N].
        cluster_labels: array [N].

    Returns:
        F1 in [0, 1]; 0.0 when TP = 0, which includes the case without any
        same-class or same-cluster pair.
    """
    _, _, cell_counts, class_sizes, cluster_sizes = contingency_table(
        class_labels, cluster_labels
    )

    def pairs(sizes: np.ndarray) -> int:
        return int(np.sum(sizes * (sizes - 1) // 2))

    true_positives = pairs(cell_counts)
    if true_positives == 0:
        return 0.0
    return 2.0 * true_positives / (pairs(cluster_sizes) + pairs(class_sizes))
