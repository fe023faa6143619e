"""Evaluation of embeddings: exact neighbour search, retrieval and clustering metrics.

Main entry point: `evaluate_embeddings(embeddings, labels, recall_ks)` returns
Recall@K, MAP@R, R-Precision, NMI and F1 as a flat dict of floats. faiss-cpu is
used when importable; TensorFlow and scikit-learn replace it otherwise.

Modules:
    neighbours: exact k-nearest-neighbour search with a backend-independent order.
    clustering: k-means, NMI and pair-counting F1.
    metrics: Recall@K, MAP@R, R-Precision, `evaluate_embeddings`, text table.
    retrieval_grid: PNG grid of queries and their nearest neighbours.
"""

from hdml_tf.evaluation.clustering import (
    KMEANS_ITERATIONS,
    cluster_embeddings,
    contingency_table,
    normalized_mutual_info,
    pair_f1_score,
)
from hdml_tf.evaluation.metrics import (
    RetrievalMetricAccumulator,
    evaluate_embeddings,
    format_metrics_table,
)
from hdml_tf.evaluation.neighbours import (
    ExactNeighbourSearch,
    embeddings_to_neighbours,
    l2_normalize,
)
from hdml_tf.evaluation.retrieval_grid import draw_retrieval_grid

__all__ = [
    "KMEANS_ITERATIONS",
    "ExactNeighbourSearch",
    "RetrievalMetricAccumulator",
    "cluster_embeddings",
    "contingency_table",
    "draw_retrieval_grid",
    "embeddings_to_neighbours",
    "evaluate_embeddings",
    "format_metrics_table",
    "l2_normalize",
    "normalized_mutual_info",
    "pair_f1_score",
]
