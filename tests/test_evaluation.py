"""Tests of hdml_tf.evaluation against slow, obviously correct references."""

import itertools
import logging
import math
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import normalized_mutual_info_score

from hdml_tf.evaluation import (
    RetrievalMetricAccumulator,
    cluster_embeddings,
    draw_retrieval_grid,
    embeddings_to_neighbours,
    evaluate_embeddings,
    format_metrics_table,
    l2_normalize,
    normalized_mutual_info,
    pair_f1_score,
)
from hdml_tf.evaluation import _backend
from hdml_tf.evaluation.exact_keys import ExactDistanceKeys
from hdml_tf.evaluation.retrieval_grid import CORRECT_COLOUR, WRONG_COLOUR

try:
    import faiss  # noqa: F401

    HAVE_FAISS = True
except ImportError:
    HAVE_FAISS = False

requires_faiss = pytest.mark.skipif(not HAVE_FAISS, reason="faiss-cpu is not installed")
BACKENDS = [pytest.param("faiss", marks=requires_faiss), "tensorflow"]


# ---------------------------------------------------------------------------
# Slow references
# ---------------------------------------------------------------------------


def brute_force_neighbours(embeddings: np.ndarray) -> np.ndarray:
    """Full neighbour lists [N, N-1]: float64 distances, stable sort, self removed.

    Distances are rounded to 1e-9 so that float64 rounding noise does not split exact
    ties, such as the distances of 1 from an all-zero row to every unit vector.
    """
    unit = l2_normalize(embeddings)
    num_samples = unit.shape[0]
    lists = []
    for query in range(num_samples):
        distances = np.round(np.sum((unit - unit[query]) ** 2, axis=1), 9)
        order = np.argsort(distances, kind="stable")
        lists.append(order[order != query])
    return np.stack(lists)


def brute_force_retrieval(embeddings, labels, recall_ks):
    """Recall@K, MAP@R, R-Precision with Python loops over the full neighbour lists."""
    neighbours = brute_force_neighbours(embeddings)
    num_samples = len(labels)
    recall_hits = {k: 0 for k in recall_ks}
    map_sum = r_precision_sum = 0.0
    counted = 0
    for query in range(num_samples):
        num_relevant = int(np.sum(labels == labels[query])) - 1
        if num_relevant == 0:
            continue
        counted += 1
        relevant = [labels[j] == labels[query] for j in neighbours[query]]
        for k in recall_ks:
            recall_hits[k] += any(relevant[: min(k, num_samples - 1)])
        hits = 0
        precision_sum = 0.0
        for rank in range(1, num_relevant + 1):
            if relevant[rank - 1]:
                hits += 1
                precision_sum += hits / rank
        map_sum += precision_sum / num_relevant
        r_precision_sum += hits / num_relevant
    metrics = {f"recall@{k}": recall_hits[k] / counted for k in recall_ks}
    metrics["map@r"] = map_sum / counted
    metrics["r_precision"] = r_precision_sum / counted
    return metrics


def pair_enumeration_f1(classes, clusters) -> float:
    """Pair-counting F1 by enumerating every unordered pair."""
    true_positives = same_cluster = same_class = 0
    for i, j in itertools.combinations(range(len(classes)), 2):
        in_class = classes[i] == classes[j]
        in_cluster = clusters[i] == clusters[j]
        true_positives += in_class and in_cluster
        same_cluster += in_cluster
        same_class += in_class
    if true_positives == 0:
        return 0.0
    precision = true_positives / same_cluster
    recall = true_positives / same_class
    return 2 * precision * recall / (precision + recall)


def clustered_data(seed, num_classes=12, per_class=6, dim=8, noise=0.8):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    centres = rng.standard_normal((num_classes, dim))
    embeddings = centres[labels] + noise * rng.standard_normal((labels.size, dim))
    return embeddings.astype(np.float32), labels


def tied_data(seed):
    """Random rows plus exact duplicates (some with other labels), zero rows and one-hot rows."""
    embeddings, labels = clustered_data(seed, num_classes=10, per_class=8, dim=6)
    rng = np.random.default_rng(seed + 100)
    embeddings[10:25] = embeddings[3]  # 15 duplicates of row 3 across several classes
    embeddings[40:44] = 0.0
    embeddings[50:56] = 0.0
    embeddings[50:56, rng.integers(0, 6, size=6)] = 2.5  # some rows share a one-hot
    embeddings[60:63] *= np.array([[1.0], [5.0], [0.2]], dtype=np.float32)
    embeddings[63] = embeddings[60] * 3.0  # same direction as row 60, different norm
    return embeddings, labels


# ---------------------------------------------------------------------------
# Hand-worked example
# ---------------------------------------------------------------------------

# Points on the unit circle at these angles (degrees), rows scaled by arbitrary norms.
# Class 2 has one sample, so its query is excluded. Neighbour lists by angle gap:
#   a(0):   b10 c25 d42 f90 e180      rel first R=2: 1 0  -> AP 1/2,  RP 1/2
#   b(10):  a10 c15 d32 f100 e170     rel first R=2: 1 0  -> AP 1/2,  RP 1/2
#   c(25):  b15 d17 a25 f115 e155     rel first R=1: 0    -> AP 0,    RP 0
#   d(42):  c17 b32 a42 f132 e138     rel first R=2: 0 1  -> AP 1/4,  RP 1/2
#   e(180): f90 d138 c155 b170 a180   rel first R=1: 0    -> AP 0,    RP 0
# MAP@R = 1.25 / 5 = 0.25, R-Precision = 1.5 / 5 = 0.3.
# Recall@1: a b -> 2/5. Recall@2: a b d -> 3/5. Recall@4: a b d e -> 4/5.
# Recall@8 is clipped to N - 1 = 5 neighbours: every query hits -> 1.
HAND_ANGLES = np.deg2rad([0.0, 10.0, 25.0, 42.0, 180.0, 270.0])
HAND_NORMS = np.array([1.0, 3.0, 0.5, 2.0, 7.0, 1.0])
HAND_LABELS = np.array([0, 0, 1, 0, 1, 2])
HAND_EMBEDDINGS = np.stack([np.cos(HAND_ANGLES), np.sin(HAND_ANGLES)], axis=1) * HAND_NORMS[:, None]
HAND_EXPECTED = {
    "recall@1": 0.4,
    "recall@2": 0.6,
    "recall@4": 0.8,
    "recall@8": 1.0,
    "map@r": 0.25,
    "r_precision": 0.3,
}


def test_clipped_recall_k_warns(caplog):
    caplog.set_level(logging.WARNING)
    evaluate_embeddings(HAND_EMBEDDINGS, HAND_LABELS, (1, 5, 8), compute_clustering=False)
    warnings = [record.getMessage() for record in caplog.records if "Recall@K for K=" in record.getMessage()]
    assert warnings == ["Recall@K for K=8 counts all 5 other samples, so it is 1 for every query whose class has "
                        "another sample: use K below 6"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_example_metrics(backend):
    metrics = evaluate_embeddings(
        HAND_EMBEDDINGS, HAND_LABELS, (1, 2, 4, 8), compute_clustering=False, backend=backend
    )
    assert list(metrics) == list(HAND_EXPECTED)
    for name, expected in HAND_EXPECTED.items():
        assert metrics[name] == pytest.approx(expected, abs=1e-12), name


def test_accumulator_hand_lists():
    # Class 0 has R = 3, class 1 has R = 2. Neighbour lists are given directly.
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    neighbours = np.array([[1, 4, 2, 5, 3, 6],   # rel 1 0 1 -> AP (1 + 2/3)/3 = 5/9, RP 2/3
                           [4, 5, 6, 0, 2, 3],   # rel 0 0 0 -> AP 0, RP 0
                           [0, 1, 3, 4, 5, 6],   # rel 1 1 1 -> AP 1, RP 1
                           [4, 0, 5, 6, 1, 2],   # rel 0 1 0 -> AP (1/2)/3 = 1/6, RP 1/3
                           [0, 5, 6, 1, 2, 3],   # rel 0 1   -> AP (1/2)/2 = 1/4, RP 1/2
                           [4, 6, 0, 1, 2, 3],   # rel 1 1   -> AP 1, RP 1
                           [0, 1, 2, 3, 4, 5]])  # rel 0 0   -> AP 0, RP 0
    accumulator = RetrievalMetricAccumulator(labels, (1, 3))
    accumulator.add(np.arange(4), neighbours[:4])  # two chunks
    accumulator.add(np.arange(4, 7), neighbours[4:])
    metrics = accumulator.result()

    assert metrics["map@r"] == pytest.approx((5 / 9 + 0 + 1 + 1 / 6 + 1 / 4 + 1 + 0) / 7)
    assert metrics["r_precision"] == pytest.approx((2 / 3 + 0 + 1 + 1 / 3 + 1 / 2 + 1 + 0) / 7)
    assert metrics["recall@1"] == pytest.approx(3 / 7)  # queries 0, 2, 5
    assert metrics["recall@3"] == pytest.approx(5 / 7)  # all but queries 1 and 6


def test_accumulator_rejects_short_lists():
    accumulator = RetrievalMetricAccumulator(np.array([0, 0, 0, 1, 1]), (4,))
    with pytest.raises(ValueError, match="at least 4 columns"):
        accumulator.add(np.arange(5), np.zeros((5, 2), dtype=np.int64))


# ---------------------------------------------------------------------------
# Retrieval against brute force
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_matches_brute_force(seed):
    embeddings, labels = clustered_data(seed, num_classes=15, per_class=7, noise=1.2)
    labels[-1] = 99  # a class with one sample
    labels[:10] = np.arange(10) % 3  # uneven class sizes
    recall_ks = (1, 2, 4, 8, 16)

    expected = brute_force_retrieval(embeddings, labels, recall_ks)
    metrics = evaluate_embeddings(
        embeddings, labels, recall_ks, compute_clustering=False, query_chunk_size=13
    )
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-12), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_retrieval_ties_match_brute_force(backend):
    embeddings, labels = tied_data(seed=3)
    recall_ks = (1, 2, 4, 8, 32)
    expected = brute_force_retrieval(embeddings, labels, recall_ks)
    metrics = evaluate_embeddings(
        embeddings, labels, recall_ks, compute_clustering=False, backend=backend
    )
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-12), name


def test_singleton_class_excluded():
    # Query 2 is the only sample of class 7; counting it would lower every metric.
    embeddings = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0], [-1.0, 0.1]])
    labels = np.array([0, 0, 7, 1, 1])
    metrics = evaluate_embeddings(embeddings, labels, (1,), compute_clustering=False)
    assert metrics == {"recall@1": 1.0, "map@r": 1.0, "r_precision": 1.0}


def test_all_singletons_give_nan():
    embeddings = np.eye(4)
    metrics = evaluate_embeddings(embeddings, np.arange(4), (1,), compute_clustering=False)
    assert all(math.isnan(value) for value in metrics.values())


def test_recall_k_larger_than_set():
    metrics = evaluate_embeddings(
        HAND_EMBEDDINGS, HAND_LABELS, (1, 5, 1000), compute_clustering=False
    )
    assert metrics["recall@5"] == 1.0
    assert metrics["recall@1000"] == 1.0


def test_zero_vectors_no_nan():
    embeddings, labels = clustered_data(seed=4)
    embeddings[:5] = 0.0
    unit = l2_normalize(embeddings)
    assert np.all(np.isfinite(unit))
    assert np.all(unit[:5] == 0.0)
    np.testing.assert_allclose(np.linalg.norm(unit[5:], axis=1), 1.0, rtol=1e-12)
    metrics = evaluate_embeddings(embeddings, labels, (1, 2))
    assert all(np.isfinite(value) for value in metrics.values())


# ---------------------------------------------------------------------------
# Neighbour search: ties, backends, chunking
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicates_ordered_by_index(backend):
    rng = np.random.default_rng(5)
    embeddings = rng.standard_normal((60, 4))
    duplicates = rng.permutation(60)[:30]
    embeddings[duplicates] = embeddings[duplicates[0]]
    # With k = 3 the first candidate list has k + 17 = 20 entries, all inside the
    # 30-way tie, so the search has to widen the list.
    for k in (3, 11, 29):
        neighbours = embeddings_to_neighbours(embeddings, k, backend=backend)
        for query in duplicates:
            expected = np.sort(duplicates[duplicates != query])[:k]
            np.testing.assert_array_equal(neighbours[query], expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_hot_ties_ordered_by_index(backend):
    # Every pair of distinct one-hot rows is at the same distance: full ties.
    rng = np.random.default_rng(6)
    hot = rng.integers(0, 5, size=40)
    embeddings = np.eye(5)[hot] * rng.uniform(0.5, 2.0, size=(40, 1))
    neighbours = embeddings_to_neighbours(embeddings, 39, backend=backend, query_chunk_size=9)
    for query in range(40):
        others = np.delete(np.arange(40), query)
        same = others[hot[others] == hot[query]]
        different = others[hot[others] != hot[query]]
        np.testing.assert_array_equal(neighbours[query], np.concatenate([same, different]))


def test_neighbours_match_brute_force():
    embeddings, _ = tied_data(seed=7)
    expected = brute_force_neighbours(embeddings)[:, :25]
    neighbours = embeddings_to_neighbours(embeddings, 25)
    np.testing.assert_array_equal(neighbours, expected)


@requires_faiss
def test_backends_identical_neighbours():
    embeddings, _ = tied_data(seed=8)
    rng = np.random.default_rng(9)
    # Near-ties: copies moved by about one float32 ulp.
    embeddings[70:76] = embeddings[65] + rng.normal(scale=1e-7, size=(6, embeddings.shape[1]))
    k = embeddings.shape[0] - 1
    from_faiss = embeddings_to_neighbours(embeddings, k, backend="faiss", query_chunk_size=17)
    from_tensorflow = embeddings_to_neighbours(embeddings, k, backend="tensorflow")
    np.testing.assert_array_equal(from_faiss, from_tensorflow)


def test_near_ties_follow_float64_order():
    # 20 candidates at angles 0.5 + j * 1e-9 rad from the query: their distances differ
    # by about 1e-9, below float32 resolution but far above float64 rounding.
    rng = np.random.default_rng(15)
    angles = 0.5 + 1e-9 * rng.permutation(20)
    embeddings = np.zeros((60, 8))
    embeddings[0, 0] = 1.0
    embeddings[1:21, 0] = np.cos(angles)
    embeddings[1:21, 1] = np.sin(angles)
    embeddings[21:] = rng.standard_normal((39, 8)) + np.array([0, 0, 4.0, 0, 0, 0, 0, 0])
    expected = 1 + np.argsort(angles)
    for backend in ("faiss", "tensorflow") if HAVE_FAISS else ("tensorflow",):
        neighbours = embeddings_to_neighbours(embeddings, 20, backend=backend)
        np.testing.assert_array_equal(neighbours[0], expected, err_msg=backend)


def test_exact_keys_match_fractions():
    rng = np.random.default_rng(16)
    unit = l2_normalize(rng.standard_normal((40, 6)))
    unit[20:40] = l2_normalize(unit[:20] + 1e-10 * rng.standard_normal((20, 6)))
    unit[39] = unit[38]
    keys = ExactDistanceKeys(*unit.shape)
    keys.set_rows(0, unit[:25])  # two calls, as the search fills the rows in blocks
    keys.set_rows(25, unit[25:])
    queries = np.repeat(np.arange(40), 40)
    candidates = np.tile(np.arange(40), 40)
    major, minor = keys.keys(queries, candidates)

    def exact_distance(i, j):
        return sum((Fraction(a) - Fraction(b)) ** 2 for a, b in zip(unit[i], unit[j]))

    for query in range(0, 40, 3):
        row = slice(40 * query, 40 * query + 40)
        order = np.lexsort((minor[row], major[row]))
        distances = [exact_distance(query, j) for j in order]
        # Keys are accurate to about 3e-15 for D = 6, far below the 1e-10 gaps here.
        for nearer, farther in zip(distances, distances[1:]):
            assert farther - nearer > -1e-14, query
    assert major[40 * 5 + 38] == major[40 * 5 + 39]
    assert minor[40 * 5 + 38] == minor[40 * 5 + 39]


def test_chunk_size_does_not_change_result():
    embeddings, labels = tied_data(seed=10)
    whole = embeddings_to_neighbours(embeddings, 12)
    one_by_one = embeddings_to_neighbours(embeddings, 12, query_chunk_size=1)
    np.testing.assert_array_equal(whole, one_by_one)


def test_neighbours_reject_large_k():
    with pytest.raises(ValueError, match="k must be an int between 1 and N - 1 = 5"):
        embeddings_to_neighbours(HAND_EMBEDDINGS, 6)


@requires_faiss
def test_auto_backend_without_faiss(monkeypatch):
    def missing_faiss():
        raise ImportError("No module named 'faiss'")

    expected = evaluate_embeddings(HAND_EMBEDDINGS, HAND_LABELS, (1, 2), backend="faiss")
    monkeypatch.setattr(_backend, "import_faiss", missing_faiss)
    assert _backend.resolve_backend("auto") == "tensorflow"
    with pytest.raises(ImportError, match="backend='faiss'"):
        _backend.resolve_backend("faiss")

    metrics = evaluate_embeddings(HAND_EMBEDDINGS, HAND_LABELS, (1, 2), backend="auto")
    for name in ("recall@1", "recall@2", "map@r", "r_precision"):
        assert metrics[name] == expected[name], name
    assert 0.0 <= metrics["nmi"] <= 1.0
    assert 0.0 <= metrics["f1"] <= 1.0


# ---------------------------------------------------------------------------
# Clustering
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nmi_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 10, size=500)
    clusters = np.where(rng.random(500) < 0.6, classes, rng.integers(0, 12, size=500))
    expected = normalized_mutual_info_score(classes, clusters, average_method="arithmetic")
    assert normalized_mutual_info(classes, clusters) == pytest.approx(expected, abs=1e-12)


def test_nmi_limit_cases_match_sklearn():
    cases = [
        ([0, 0, 0, 0], [5, 5, 5, 5]),  # both single-valued
        ([0, 0, 1, 1], [3, 3, 3, 3]),  # one single-valued
        ([0, 0, 0, 0], [0, 1, 2, 3]),
        ([0, 0, 1, 1], [1, 1, 0, 0]),  # perfect, renamed
        ([0, 1, 0, 1], [0, 0, 1, 1]),  # independent
    ]
    for classes, clusters in cases:
        expected = normalized_mutual_info_score(classes, clusters)
        assert normalized_mutual_info(np.array(classes), np.array(clusters)) == pytest.approx(
            expected, abs=1e-12
        ), (classes, clusters)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_matches_pair_enumeration(seed):
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 8, size=150)
    clusters = np.where(rng.random(150) < 0.5, classes, rng.integers(0, 9, size=150))
    assert pair_f1_score(classes, clusters) == pytest.approx(
        pair_enumeration_f1(classes, clusters), abs=1e-12
    )


def test_f1_limit_cases():
    assert pair_f1_score(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])) == 1.0
    assert pair_f1_score(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 3])) == 0.0
    assert pair_f1_score(np.array([0, 0, 0, 0]), np.array([0, 1, 2, 3])) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_recovers_blobs(backend):
    embeddings, labels = clustered_data(seed=11, num_classes=6, per_class=20, dim=16, noise=0.05)
    clusters = cluster_embeddings(l2_normalize(embeddings), 6, seed=0, backend=backend)
    assert clusters.shape == labels.shape
    assert normalized_mutual_info(labels, clusters) == pytest.approx(1.0)
    assert pair_f1_score(labels, clusters) == pytest.approx(1.0)


@requires_faiss
def test_evaluate_uses_seeded_kmeans():
    embeddings, labels = clustered_data(seed=12, noise=1.0)
    metrics = evaluate_embeddings(embeddings, labels, (1,), seed=3)
    clusters = cluster_embeddings(
        l2_normalize(embeddings).astype(np.float32), 12, seed=3, backend="faiss"
    )
    assert metrics["nmi"] == normalized_mutual_info(labels, clusters)
    assert metrics["f1"] == pair_f1_score(labels, clusters)
    assert evaluate_embeddings(embeddings, labels, (1,), seed=3) == metrics


# ---------------------------------------------------------------------------
# Input checks and output formats
# ---------------------------------------------------------------------------


def test_evaluate_rejects_invalid_inputs():
    embeddings, labels = clustered_data(seed=13)
    with pytest.raises(ValueError, match="2-D"):
        evaluate_embeddings(embeddings[0], labels)
    with pytest.raises(ValueError, match="one label per embedding row"):
        evaluate_embeddings(embeddings, labels[:-1])
    with pytest.raises(ValueError, match="integer"):
        evaluate_embeddings(embeddings, labels.astype(np.float32))
    with pytest.raises(ValueError, match="recall_ks"):
        evaluate_embeddings(embeddings, labels, (1, 0))
    with pytest.raises(ValueError, match="backend must be one of"):
        evaluate_embeddings(embeddings, labels, backend="gpu")
    broken = embeddings.copy()
    broken[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values in 1 rows, first rows \[4\]"):
        evaluate_embeddings(broken, labels)


def test_metrics_table_lists_values():
    table = format_metrics_table({"recall@1": 0.7012, "map@r": 0.2, "nmi": 0.893})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "value", "(%)"]
    assert lines[2].split() == ["recall@1", "70.12"]
    assert lines[3].split() == ["map@r", "20.00"]
    assert lines[4].split() == ["nmi", "89.30"]


def _count_colour(pixels: np.ndarray, colour: str) -> int:
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int(np.sum(np.all(np.abs(pixels[..., :3].astype(int) - rgb) <= 8, axis=-1)))


def test_retrieval_grid_frames(tmp_path):
    rng = np.random.default_rng(14)
    images = rng.integers(0, 256, size=(12, 24, 20, 3)).astype(np.uint8)
    gray = images[..., :1].astype(np.float32)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    same_class = np.array([[1, 2, 3], [5, 6, 7]])  # queries 0 and 4
    other_class = np.array([[4, 8, 9], [0, 1, 10]])

    correct_path = tmp_path / "correct.png"
    wrong_path = tmp_path / "nested" / "wrong.png"
    draw_retrieval_grid(images[[0, 4]], labels[[0, 4]], images, labels, same_class, correct_path, k=3)
    draw_retrieval_grid(gray[[0, 4]], labels[[0, 4]], gray, labels, other_class, wrong_path, k=3)

    correct = np.asarray(Image.open(correct_path))
    wrong = np.asarray(Image.open(wrong_path))
    assert correct.shape[0] > 100
    assert correct.shape[1] > 100
    # Six result frames dominate the legend patches.
    assert _count_colour(correct, CORRECT_COLOUR) > 5 * _count_colour(wrong, CORRECT_COLOUR)
    assert _count_colour(wrong, WRONG_COLOUR) > 5 * _count_colour(correct, WRONG_COLOUR)


def test_retrieval_grid_rejects_bad_indices(tmp_path):
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(4)
    with pytest.raises(ValueError, match="must index gallery_images"):
        draw_retrieval_grid(images, labels, images, labels, np.full((4, 2), 4), tmp_path / "x.png", k=2)
    with pytest.raises(ValueError, match=r"\[4, >= k = 3\]"):
        draw_retrieval_grid(images, labels, images, labels, np.zeros((4, 2), int), tmp_path / "x.png", k=3)
    with pytest.raises(ValueError, match=r"\[n, H, W, 3\]"):
        draw_retrieval_grid(images[..., :2], labels, images, labels, np.zeros((4, 2), int), tmp_path / "x.png", k=2)
