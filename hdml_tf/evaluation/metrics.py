"""Retrieval and clustering metrics of an embedding set: Recall@K, MAP@R, R-Precision, NMI, F1.

Protocol: rows are L2-normalised, distances are Euclidean, every sample queries all
other samples of the same set (the query is excluded by index), and ties go to the
smaller index (see `hdml_tf.evaluation.neighbours`).

Queries whose class has no other sample (R = 0) are excluded from every retrieval
metric (Recall@K, MAP@R, R-Precision), as pytorch-metric-learning 2.9.0's
`AccuracyCalculator` does with its `not_lone_query_mask`. They still take part in
k-means, NMI and F1, and they remain neighbours of other queries. The standard
test splits of CUB-200-2011, Cars196 and Stanford Online Products have at least two
images per class, so there the rule changes nothing.
"""

import math
from collections.abc import Iterable, Mapping

import numpy as np
from absl import logging

from hdml_tf.evaluation.clustering import (
    cluster_embeddings,
    normalized_mutual_info,
    pair_f1_score,
)
from hdml_tf.evaluation.neighbours import ExactNeighbourSearch, check_embeddings


def check_labels(labels, num_samples: int) -> np.ndarray:
    """Return `labels` as an int64 array [num_samples], or raise ValueError."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.shape[0] != num_samples:
        raise ValueError(
            f"labels must be a 1-D array with one label per embedding row "
            f"({num_samples}), got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got dtype {array.dtype}")
    return array.astype(np.int64)


def check_recall_ks(recall_ks) -> tuple[int, ...]:
    """Return the distinct K values in their given order, or raise ValueError."""
    if isinstance(recall_ks, (int, np.integer, str)):
        raise ValueError(
            f"recall_ks must be a sequence of ints such as (1, 2, 4, 8), got {recall_ks!r}"
        )
    values = list(recall_ks)
    if not values or any(
        isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in values
    ):
        raise ValueError(
            f"recall_ks must be a non-empty sequence of positive ints, got {recall_ks!r}"
        )
    return tuple(dict.fromkeys(int(k) for k in values))


class RetrievalMetricAccumulator:
    """Accumulate Recall@K, MAP@R and R-Precision over chunks of queries.

    For a query q with R = (number of samples of q's class) - 1 and the neighbour list
    n_1, n_2, ... (nearest first, q excluded), rel(i) = [label(n_i) == label(q)]:

    - Recall@K = 1 if rel(i) for some i <= min(K, N - 1), else 0. K is clipped to
      N - 1 because there are only N - 1 other samples, so Recall@K is 1 for every
      counted query once K >= N - 1.
    - R-Precision = (sum_{i <= R} rel(i)) / R.
    - MAP@R = (1/R) sum_{i <= R} P(i) rel(i), with P(i) = (sum_{j <= i} rel(j)) / i
      (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020).

    Each metric is the mean over queries with R >= 1; `result` returns NaN when there
    is no such query.

    Args:
        labels: int array [N], the labels of the whole set.
        recall_ks: the K values of Recall@K.
    """

    def __init__(self, labels: np.ndarray, recall_ks: Iterable[int]):
        self._labels = np.asarray(labels, dtype=np.int64)
        self.recall_ks = check_recall_ks(recall_ks)
        num_samples = self._labels.shape[0]

        _, class_ids, class_sizes = np.unique(
            self._labels, return_inverse=True, return_counts=True
        )
        # R per sample: the other samples of its class.
        self._num_relevant = class_sizes[class_ids] - 1
        self.max_relevant = int(self._num_relevant.max())
        self.num_classes = int(class_sizes.shape[0])
        self._clipped_ks = tuple(min(k, num_samples - 1) for k in self.recall_ks)
        clipped = [k for k in self.recall_ks if k > num_samples - 1]
        if clipped:
            logging.warning(
                "Recall@K for K=%s counts all %d other samples, so it is 1 for every query whose class has another "
                "sample: use K below %d",
                ",".join(map(str, clipped)), num_samples - 1, num_samples,
            )
        # Neighbours every query needs: enough for the largest K and the largest R.
        self.required_neighbours = max(max(self._clipped_ks), self.max_relevant)

        self._recall_hits = np.zeros(len(self.recall_ks), dtype=np.int64)
        self._map_at_r_sum = 0.0
        self._r_precision_sum = 0.0
        self._num_queries = 0

    @property
    def exact_cuts(self) -> tuple[int, ...]:
        """Neighbour counts whose neighbour set must be exact: the clipped K values."""
        return self._clipped_ks

    def add(self, query_ids: np.ndarray, neighbours: np.ndarray) -> None:
        """Add a chunk of queries.

        Args:
            query_ids: int array [c], indices of the queries into `labels`.
            neighbours: int array [c, k] with k >= `required_neighbours`, nearest first,
                the query itself excluded.
        """
        query_ids = np.asarray(query_ids, dtype=np.int64)
        neighbours = np.asarray(neighbours)
        if neighbours.ndim != 2 or neighbours.shape[0] != query_ids.shape[0]:
            raise ValueError(
                f"neighbours must have shape [len(query_ids), k] = [{query_ids.shape[0]}, k], "
                f"got {neighbours.shape}"
            )
        if neighbours.shape[1] < self.required_neighbours:
            raise ValueError(
                f"neighbours must have at least {self.required_neighbours} columns "
                f"(max of the clipped recall_ks and the largest R), got {neighbours.shape[1]}"
            )

        # [counted queries] R >= 1.
        num_relevant = self._num_relevant[query_ids]
        counted = num_relevant > 0
        query_ids = query_ids[counted]
        num_relevant = num_relevant[counted]
        relevant = (
            self._labels[neighbours[counted, : self.required_neighbours]]
            == self._labels[query_ids, None]
        )

        # [Recall@K] rank of the first relevant neighbour; no hit -> infinity.
        has_hit = relevant.any(axis=1)
        first_hit = np.where(has_hit, relevant.argmax(axis=1), np.iinfo(np.int64).max)
        for position, k in enumerate(self._clipped_ks):
            self._recall_hits[position] += int(np.count_nonzero(first_hit < k))

        # [MAP@R, R-Precision] over the first R neighbours of each query.
        if self.max_relevant > 0 and query_ids.size:
            ranks = np.arange(1, self.max_relevant + 1)
            within_r = ranks[None, :] <= num_relevant[:, None]
            hits = relevant[:, : self.max_relevant] & within_r
            hits_so_far = np.cumsum(hits, axis=1)
            precision_at_hits = np.where(hits, hits_so_far / ranks[None, :], 0.0)
            self._map_at_r_sum += float(np.sum(precision_at_hits.sum(axis=1) / num_relevant))
            hits_within_r = hits_so_far[np.arange(query_ids.size), num_relevant - 1]
            self._r_precision_sum += float(np.sum(hits_within_r / num_relevant))

        self._num_queries += int(query_ids.size)

    def result(self) -> dict[str, float]:
        """Return {"recall@K": ..., "map@r": ..., "r_precision": ...} as Python floats."""
        count = self._num_queries
        if count == 0:
            logging.warning(
                "No query has another sample of its class; retrieval metrics are NaN"
            )
        metrics = {}
        for k, hits in zip(self.recall_ks, self._recall_hits):
            metrics[f"recall@{k}"] = float(hits) / count if count else math.nan
        metrics["map@r"] = self._map_at_r_sum / count if count else math.nan
        metrics["r_precision"] = self._r_precision_sum / count if count else math.nan
        return metrics


def evaluate_embeddings(
    embeddings: np.ndarray,
    labels: np.ndarray,
    recall_ks: Iterable[int] = (1, 2, 4, 8),
    *,
    seed: int = 0,
    compute_clustering: bool = True,
    backend: str = "auto",
    query_chunk_size: int | None = None,
) -> dict[str, float]:
    """Compute the retrieval and clustering metrics of an embedding set.

    Retrieval: see `RetrievalMetricAccumulator` for Recall@K, MAP@R and R-Precision
    and the module docstring for the protocol. Neighbours are searched exactly, one
    chunk of queries at a time, never forming an N x N matrix.
    Clustering: k-means on the L2-normalised rows with K = number of distinct labels
    (`cluster_embeddings`), then NMI = 2 I / (H(clusters) + H(classes)) and the
    pair-counting F1 (`normalized_mutual_info`, `pair_f1_score`).

    Args:
        embeddings: float array [N, D], N >= 2, finite. All-zero rows are allowed.
        labels: int array [N].
        recall_ks: K values of Recall@K; K > N - 1 is clipped to N - 1.
        seed: k-means seed.
        compute_clustering: False skips k-means, NMI and F1.
        backend: "faiss", "tensorflow" or "auto" (faiss when importable). Neighbours,
            hence the retrieval metrics, are identical for both; k-means differs
            (faiss.Kmeans or scikit-learn KMeans).
        query_chunk_size: queries searched at once. None picks a 256 MiB float32
            distance block with TensorFlow, and 2**21 candidates (chunk * m) with faiss.

    Returns:
        Flat dict of Python floats in [0, 1]: "recall@K" for each K, "map@r",
        "r_precision", and "nmi", "f1" when compute_clustering is True. Retrieval
        metrics are NaN when no class has two samples.
    """
    array = check_embeddings(embeddings)
    labels = check_labels(labels, array.shape[0])
    accumulator = RetrievalMetricAccumulator(labels, recall_ks)
    logging.info(
        "Evaluating %d embeddings of dimension %d, %d classes, %d neighbours per query",
        array.shape[0],
        array.shape[1],
        accumulator.num_classes,
        accumulator.required_neighbours,
    )

    # [retrieval] exact order where the metrics look: the first R neighbours and the
    # neighbour sets at each K.
    search = ExactNeighbourSearch(array, backend=backend)
    for query_ids, neighbours in search.iter_chunks(
        accumulator.required_neighbours,
        query_chunk_size,
        exact_prefix=accumulator.max_relevant,
        exact_cuts=accumulator.exact_cuts,
    ):
        accumulator.add(query_ids, neighbours)
    metrics = accumulator.result()

    # [clustering]
    if compute_clustering:
        unit_embeddings = search.unit_embeddings
        del search  # frees the faiss index or TensorFlow copy before k-means
        clusters = cluster_embeddings(
            unit_embeddings, accumulator.num_classes, seed=seed, backend=backend
        )
        metrics["nmi"] = normalized_mutual_info(labels, clusters)
        metrics["f1"] = pair_f1_score(labels, clusters)

    logging.info("Evaluation results: %s", {k: round(v, 4) for k, v in metrics.items()})
    return metrics


def format_metrics_table(metrics: Mapping[str, float]) -> str:
    """Render metrics as a two-column plain-text table, values in percent.

    Example:
        metric       value (%)
        -----------  ---------
        recall@1         70.12
        nmi              89.30
    """
    name_header, value_header = "metric", "value (%)"
    rows = [(name, f"{100.0 * float(value):.2f}") for name, value in metrics.items()]
    name_width = max([len(name_header)] + [len(name) for name, _ in rows])
    value_width = max([len(value_header)] + [len(value) for _, value in rows])
    lines = [
        f"{name_header:<{name_width}}  {value_header:>{value_width}}",
        f"{'-' * name_width}  {'-' * value_width}",
    ]
    lines += [f"{name:<{name_width}}  {value:>{value_width}}" for name, value in rows]
    return "\n".join(lines)
